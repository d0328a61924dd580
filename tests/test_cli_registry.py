"""Tests of the ``fetch``, ``list`` and ``info`` subcommands, called through ``main([...])``."""

from __future__ import annotations

import pooch
import pytest
from registry_helpers import CubeServer, make_cube, publish, write_registry

from lk_scatterlight import conf
from lk_scatterlight.cli import main
from lk_scatterlight.registry import CACHE_ENV, REGISTRY_ENV, TIMEOUT_ENV, URL_ENV

NAMES = [
    "lk-scatterlight_s0002_1-1_bin16_v1.fits",
    "lk-scatterlight_s0002_1-1_bin8_v1.fits",
    "lk-scatterlight_s0005_2-3_bin16_v1.fits",
]


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local server publishing NAMES, with the registry, URL and cache pointed at tmp."""
    for var in (CACHE_ENV, URL_ENV, REGISTRY_ENV, TIMEOUT_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pooch.core.time, "sleep", lambda seconds: None)
    srv = CubeServer(tmp_path / "remote")
    files = publish(srv.directory, NAMES)
    monkeypatch.setenv(REGISTRY_ENV, str(write_registry(tmp_path / "registry.txt", files)))
    monkeypatch.setenv(URL_ENV, srv.url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with conf.set_temp("cache_dir", ""), conf.set_temp("registry_url", ""):
        yield srv
    srv.stop()


def test_fetch_prints_path(server, tmp_path, capsys):
    assert main(["fetch", "2", "1", "1", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'cache' / NAMES[1]}\n"  # finest bin by default
    assert err == ""
    assert main(["fetch", "2", "1", "1", "--bin", "16", "--cache-dir", str(tmp_path / "d")]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'd' / NAMES[0]}\n"
    assert "100%" in err  # the progress bar goes to stderr


def test_list_prints_table(server, capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["sector", "camera", "ccd", "bin", "version", "filename", "url"]
    body = [line for line in lines if "lk-scatterlight_s" in line]
    assert len(body) == len(NAMES)
    assert body[0].split()[:5] == ["2", "1", "1", "8", "1"]
    assert f"{server.url}/{NAMES[2]}" in body[-1]


def test_list_empty_registry(tmp_path, monkeypatch, capsys):
    registry = tmp_path / "empty.txt"
    registry.write_text("# name sha256:HASH url\n", encoding="utf-8")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No scattered-light cubes are published yet")
    assert out.count("\n") == 1


def test_info(tmp_path, capsys):
    path = make_cube(3, 2, 4, gap=True).write(tmp_path / "cube.fits")
    assert main(["info", str(path)]) == 0
    info = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    info = {key: value.strip() for key, value in info.items()}
    assert (info["sector"], info["camera"], info["ccd"]) == ("3", "2", "4")
    assert info["shape"].startswith("5 planes x 4 rows x 4 columns")
    assert info["pixel bin"] == "16 px"
    assert info["time BTJD"].startswith("1399.75000..1405.75000")
    assert info["time UTC"].startswith("2018-10-08T")
    assert info["planes"] == "5"
    assert info["gaps"].startswith("1 ")
    assert info["flux"].endswith("e-/s per pixel")
    assert info["meta creator"] == "tests"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["fetch", "9", "1", "1"], "No scattered-light cube is published for sector 9"),
        (["fetch", "2", "1", "1", "--bin", "4"], "published bins: 8, 16"),
        (["info", "missing.fits"], "No scattered-light cube at missing.fits"),
    ],
)
def test_errors_give_one_line(server, tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("lk-scatterlight: error: ")
    assert match in err
    assert err.count("\n") == 1


def test_fetch_server_down(server, capsys):
    server.stop()
    assert main(["fetch", "5", "2", "3", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert f"from {server.url}/{NAMES[2]}" in err
    assert "lk-scatterlight build --sector 5 --camera 2 --ccd 3" in err


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fetch", "2", "5", "1"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
