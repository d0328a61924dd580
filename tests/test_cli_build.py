"""`lk-scatterlight build` through main()."""

import pytest

from lk_scatterlight import ScatterLightCube
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
