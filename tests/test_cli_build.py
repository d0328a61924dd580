"""`lk-scatterlight build` through main()."""

import pytest

from lk_scatterlight import ScatterLightCube
from lk_scatterlight.ccd import Region
from lk_scatterlight.cli import main, parse_duration


@pytest.mark.slow
def test_build_simulated(tmp_path, capsys):
    out = tmp_path / "cubes"
    argv = ["build", "--sector", "1", "--camera", "2", "--ccd", "3", "--source", "simulate", "8"]
    code = main([*argv, "--pixel-bin", "128", "--out", str(out), "--no-progress"])
    assert code == 0
    path = capsys.readouterr().out.strip()
    cube = ScatterLightCube.read(path)
    assert (cube.sector, cube.camera, cube.ccd) == (1, 2, 3)
    assert cube.shape[1:] == (16, 16)
    assert [p.name for p in out.iterdir()] == [path.split("/")[-1]]
    # A second run refuses to overwrite, with one line on stderr and exit code 1.
    assert main([*argv, "--pixel-bin", "128", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lk-scatterlight: error:")
    assert "overwrite" in err


def test_build_local_wrong_ccd(tmp_path, capsys):
    from lk_scatterlight import simulate

    simulate.FFISimulator(time=simulate.sector_times(1)[:2], n_stars=100).write_ffis(tmp_path)
    argv = ["build", "--sector", "1", "--camera", "1", "--ccd", "2", "--source", "local"]
    assert main([*argv, str(tmp_path), "--no-progress"]) == 1
    assert "camera 1 CCD 1, not sector 1 camera 1 CCD 2" in capsys.readouterr().err


def test_build_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--sector", "1", "--camera", "5", "--ccd", "1"])
    assert exit_info.value.code == 2
    assert main(["build", "--sector", "1", "--camera", "1", "--ccd", "1", "--source", "ftp"]) == 1
    assert "Unknown --source 'ftp'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "days"), [("frame", None), ("2h", 2 / 24), ("30min", 30 / 1440), ("0.5d", 0.5)]
)
def test_parse_duration(text, days):
    assert parse_duration(text) == (None if days is None else pytest.approx(days))


@pytest.mark.parametrize("text", ["soon", "-2h", "2 kg"])
def test_parse_duration_rejects(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


@pytest.mark.slow
def test_build_region_simulated(tmp_path, capsys):
    """--region: the snapped square region, named in the file, evaluable at the pixels asked."""
    out = tmp_path / "cubes"
    argv = ["build", "--sector", "1", "--camera", "1", "--ccd", "1", "--source", "simulate", "8"]
    code = main([*argv, "--region", "700", "900", "15", "15", "--out", str(out), "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "rows 673..800, columns 845..972 (128 x 128 px)" in captured.err
    path = captured.out.strip()
    assert path.endswith("_r673c845n128.fits")
    cube = ScatterLightCube.read(path)
    assert cube.region.covers(Region(700, 900, 15, 15))
    assert cube.evaluate(cube.btjd, [700, 714], [900, 914]).flux.shape == (cube.shape[0], 2, 2)


@pytest.mark.slow
def test_build_for_tpf(tmp_path, capsys, shared_data):
    """--for-tpf: sector, camera, CCD and region from a real TESSCut cutout's header."""
    tpf = shared_data("tess-s0001-4-2_84.291190_-80.469170_6x6_astrocut.fits")
    argv = ["build", "--for-tpf", str(tpf), "--source", "simulate", "12", "--pixel-bin", "32"]
    assert main([*argv, "--fine-bin", "0", "--out", str(tmp_path), "--no-progress"]) == 0
    captured = capsys.readouterr()
    cube = ScatterLightCube.read(captured.out.strip())
    assert (cube.sector, cube.camera, cube.ccd) == (1, 4, 2)
    assert cube.region.covers(Region(257, 1628, 6, 6))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--region", "0", "900", "15", "15"], "leaves the science area"),
        (["--region", "700", "2090", "15", "15"], "leaves the science area"),
        (["--region", "1", "45", "4", "4", "--for-tpf", "x.fits"], "exclude each other"),
    ],
)
def test_build_region_errors(extra, message, capsys, tmp_path):
    argv = ["build", "--sector", "1", "--camera", "1", "--ccd", "1", "--source", "simulate", "2"]
    assert main([*argv, *extra, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_build_needs_a_ccd_or_a_tpf(capsys):
    assert main(["build", "--source", "simulate", "2"]) == 2
    assert "build needs --sector, --camera, --ccd (or --for-tpf FILE)" in capsys.readouterr().err
    assert main(["build", "--for-tpf", "/nonexistent.fits"]) == 1
    assert "no such file" in capsys.readouterr().err
