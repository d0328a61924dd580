"""A user's mistakes give one line on stderr and an exit code, never a traceback.

Exit codes: 1 for errors while running, 2 for usage errors, 130 for Ctrl-C.
Builds are replaced by stand-ins (monkeypatched ``build_cube``) so these
tests run in well under a second each.
"""

from __future__ import annotations

import os

import pytest

from lk_scatterlight.builder import pipeline
from lk_scatterlight.cli import error_message, main
from lk_scatterlight.exceptions import ScatterLightError
from lk_scatterlight.registry import REGISTRY_ENV, cube_filename, fetch_cube

BUILD = ["build", "--sector", "1", "--camera", "2", "--ccd", "3", "--source", "simulate", "4"]


def one_line(capsys, prefix: str = "lk-scatterlight") -> str:
    """The only line written to stderr (nothing to stdout)."""
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(prefix), err
    assert "Traceback" not in err
    return err


def usage_error(capsys, argv: list[str]) -> str:
    """Run ``argv``, expecting argparse's usage error (exit 2) in one line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = one_line(capsys)
    assert err.rstrip().endswith("--help`)")  # says where to look
    return err


# ---------------------------------------------------------------------- sectors, bins
@pytest.mark.parametrize("sector", ["0", "-3", "999", "two"])
def test_fetch_bad_sector(capsys, sector):
    err = usage_error(capsys, ["fetch", "--", sector, "1", "1"])
    assert "sector must be a whole number 1..108" in err
    assert "tesswcs" in err  # where the limit comes from
    assert repr(sector) in err


@pytest.mark.parametrize("sector", ["0", "-1", "109"])
def test_build_bad_sector(tmp_path, capsys, sector):
    out = tmp_path / "out"
    err = usage_error(capsys, [*BUILD[:2], sector, *BUILD[3:], "--out", str(out)])
    assert "--sector" in err
    assert not out.exists()  # rejected before any folder is made


def test_build_many_bad_ranges(capsys):
    err = usage_error(capsys, ["build-many", "--sectors", "0-2"])
    assert "sectors must be within 1-108" in err
    assert "got 0" in err
    err = usage_error(capsys, ["build-many", "--sectors", "1", "--ccds", "1,5"])
    assert "ccds must be within 1-4, got 5" in err


def test_fetch_cube_rejects_future_sector():
    with pytest.raises(ValueError, match=r"sector must be 1\.\.108 \(the sectors whose pointing"):
        fetch_cube(999, 1, 1)


@pytest.mark.parametrize("value", ["0", "7", "x"])
def test_build_bad_pixel_bin(capsys, value):
    err = usage_error(capsys, [*BUILD, "--pixel-bin", value])
    assert "argument --pixel-bin: bin size must divide 2048" in err
    assert "1, 2, 4, 8, 16" in err


def test_build_options_that_do_not_fit(tmp_path, capsys):
    assert main([*BUILD, "--fine-bin", "3", "--out", str(tmp_path / "o")]) == 2
    err = one_line(capsys, "lk-scatterlight build: error: ")
    assert "--fine-bin must divide --pixel-bin=16" in err
    assert not (tmp_path / "o").exists()


def test_bad_camera(capsys):
    err = usage_error(capsys, ["fetch", "2", "0", "1"])
    assert "argument camera: invalid choice: 0" in err


# ---------------------------------------------------------------------- output folders
def test_build_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for option in ("--out", "--work-dir"):
        assert main([*BUILD, option, str(tmp_path / "file" / "sub")]) == 1
        err = one_line(capsys)
        assert f"{option} {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file," in err


def test_build_out_not_writable(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere
    assert main([*BUILD, "--out", str(tmp_path / "new")]) == 1
    assert "is not writable (permission denied)" in one_line(capsys)
    assert not (tmp_path / "new").exists()


def test_build_os_error_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/cubes/cube.fits")

    monkeypatch.setattr(pipeline, "build_cube", refuse)
    assert main([*BUILD, "--out", str(tmp_path / "a" / "b")]) == 1
    err = one_line(capsys)
    assert "Permission denied: /data/cubes/cube.fits (choose a file or folder" in err
    assert os.listdir(tmp_path) == []  # the folders the command made are gone


def test_failed_build_removes_only_empty_new_folders(tmp_path, capsys, monkeypatch):
    (tmp_path / "mine").mkdir()

    def fail(source, config, out, work_dir=None, **kwargs):
        (out / ".work" / "empty").mkdir(parents=True)  # as the pipeline's work folder
        raise ScatterLightError("no frames")

    monkeypatch.setattr(pipeline, "build_cube", fail)
    assert main([*BUILD, "--out", str(tmp_path / "new")]) == 1
    assert one_line(capsys) == "lk-scatterlight: error: no frames\n"
    assert os.listdir(tmp_path) == ["mine"]
    # Into an existing folder: only the new, empty work folder goes.
    assert main([*BUILD, "--out", str(tmp_path / "mine")]) == 1
    capsys.readouterr()
    assert os.listdir(tmp_path / "mine") == []
    assert (tmp_path / "mine").is_dir()


def test_existing_cube_names_the_option(tmp_path, capsys):
    out = tmp_path / "cubes"
    out.mkdir()
    (out / cube_filename(1, 2, 3, 16)).write_bytes(b"")
    assert main([*BUILD, "--out", str(out)]) == 1
    err = one_line(capsys)
    assert "exists; pass --overwrite to replace it" in err
    assert "overwrite=True" not in err


def test_library_advice_reworded():
    err = FileExistsError("c.fits exists; pass overwrite=True to replace it.")
    assert error_message(err) == "c.fits exists; pass --overwrite to replace it."
    err = FileExistsError("d.npz exists; pass overwrite=True (--overwrite) to replace it.")
    assert error_message(err) == "d.npz exists; pass --overwrite to replace it."
    err = NotADirectoryError(20, "Not a directory", "a/b")
    assert error_message(err) == "Not a directory: a/b (part of the path is a file, not a folder)"
    astropy = (
        "No SIMPLE card found, this file does not appear to be a valid FITS file. If this is "
        "really a FITS file, try with ignore_missing_simple=True"
    )
    err = ScatterLightError(f"x.txt cannot be read as a FITS file: {astropy}")
    assert error_message(err) == "x.txt is not a FITS file (it does not start with a FITS header)."


def test_simulate_frames_checked(capsys):
    for value in ("x", "0"):
        assert main([*BUILD[:-1], value]) == 2
        assert "--source simulate NFRAMES must be a whole number >= 1" in one_line(capsys)


def test_demo_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file" / "demo.png")]) == 1
    assert f"--out {tmp_path / 'file' / 'demo.png'}: {tmp_path / 'file'} is a file" in one_line(
        capsys
    )


def test_missing_optional_package(capsys, monkeypatch):
    from lk_scatterlight.cli import build

    def missing(*args):
        raise ModuleNotFoundError("No module named 'tesscube'", name="tesscube")

    monkeypatch.setattr(build, "make_source", missing)
    assert main(BUILD) == 1
    err = one_line(capsys)
    assert "needs the optional package tesscube" in err
    assert "pip install 'lk_scatterlight[builder]'" in err


# ---------------------------------------------------------------------- Ctrl-C
def test_interrupted_build(tmp_path, capsys, monkeypatch):
    def interrupt(source, config, out, work_dir=None, **kwargs):
        checkpoint = out / ".lk-scatterlight-work" / "state.json"
        checkpoint.parent.mkdir()
        checkpoint.write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build_cube", interrupt)
    assert main([*BUILD, "--out", str(tmp_path / "out")]) == 130
    err = one_line(capsys)
    assert err == (
        "lk-scatterlight: interrupted; run the same command again to resume the build from "
        "its last checkpoint.\n"
    )
    assert (tmp_path / "out" / ".lk-scatterlight-work" / "state.json").is_file()  # kept


def test_interrupted_with_debug_raises(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build_cube", interrupt)
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", *BUILD, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- fetch, info, dataset
def test_fetch_advice_is_for_the_command_line(tmp_path, capsys, monkeypatch):
    registry = tmp_path / "registry.txt"
    registry.write_text("# nothing published\n", encoding="utf-8")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert main(["fetch", "9", "1", "1"]) == 1
    err = one_line(capsys)
    assert "No scattered-light cube is published for sector 9 camera 1 CCD 1" in err
    assert err.rstrip().endswith(
        "build the cube locally with `lk-scatterlight build --sector 9 --camera 1 --ccd 1`."
    )
    assert "cube=" not in err


def test_info_not_fits(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("SIMPLE is not enough\n")
    assert main(["info", str(text)]) == 1
    err = one_line(capsys)
    assert f"{text} is not a FITS file" in err
    assert "ignore_missing_simple" not in err
    assert main(["info", str(tmp_path)]) == 1
    assert f"{tmp_path} is a folder" in one_line(capsys)


def test_dense_only_where_it_works(capsys):
    for command, listed in (("build", True), ("build-many", True), ("dataset", False)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert ("--dense" in capsys.readouterr().out) is listed
