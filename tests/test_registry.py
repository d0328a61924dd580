"""Tests of lk_scatterlight.registry against a real HTTP server on 127.0.0.1.

Every test gets its own cache, registry file and server through ``tmp_path``
and ``monkeypatch``; pooch's waits between retries are patched out.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import pooch
import pytest
import requests
from astropy.table import Table
from registry_helpers import make_cube, publish, write_registry

from lk_scatterlight import (
    CubeFormatError,
    CubeNotFoundError,
    DownloadError,
    ScatterLightCube,
    ScatterLightError,
    available_cubes,
    conf,
    fetch_cube,
    load_cube,
)
from lk_scatterlight.registry import (
    CACHE_ENV,
    REGISTRY_ENV,
    RETRIES,
    TIMEOUT_ENV,
    URL_ENV,
    CubeName,
    cube_filename,
    get_cache_dir,
    get_pooch,
    parse_cube_filename,
)

NAMES = [
    "lk-scatterlight_s0002_1-1_bin16_v1.fits",
    "lk-scatterlight_s0002_1-1_bin8_v1.fits",
    "lk-scatterlight_s0002_1-1_bin4_v3.fits",  # a format this package cannot read
    "lk-scatterlight_s0002_1-2_bin16_v1.fits",
    "lk-scatterlight_s0005_2-3_bin16_v1.fits",
    "lk-scatterlight_s0007_1-1_bin16_v3.fits",
]
DEAD_URL = "http://127.0.0.1:9/nowhere"  # the registry's own URLs: connection refused
COLUMNS = ["sector", "camera", "ccd", "bin", "version", "filename", "url"]


@pytest.fixture
def published(tmp_path, server, env, monkeypatch):
    """The cubes of NAMES on the server; registry URLs are dead, LK_SCATTERLIGHT_URL fixes them."""
    files = publish(server.directory, NAMES)
    registry = write_registry(tmp_path / "registry.txt", files, base_url=DEAD_URL)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    monkeypatch.setenv(URL_ENV, server.url)
    return files


def cached(cache: Path) -> list[str]:
    """Every file in the cache folder, temporary ones included."""
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ---------------------------------------------------------------------- file names
@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("lk-scatterlight_s0002_1-1_bin16_v1.fits", CubeName(2, 1, 1, 16, 1)),
        ("lk-scatterlight_s0071_4-3_bin8_v2.fits", CubeName(71, 4, 3, 8, 2)),
        ("lk-scatterlight_s0100_2-4_bin128_v1.fits", CubeName(100, 2, 4, 128, 1)),
        ("lk-scatterlight_s12345_1-1_bin1_v10.fits", CubeName(12345, 1, 1, 1, 10)),
    ],
)
def test_filename_round_trip(name, spec):
    assert parse_cube_filename(name) == spec
    assert parse_cube_filename(Path("/some/folder") / name) == spec
    assert cube_filename(*spec) == name


@pytest.mark.parametrize(
    "name",
    [
        "lk-scatterlight_s2_1-1_bin16_v1.fits",  # sector not zero-padded
        "lk-scatterlight_s0002_1-1_bin016_v1.fits",  # not canonical
        "lk-scatterlight_s0002_5-1_bin16_v1.fits",  # camera 5
        "lk-scatterlight_s0000_1-1_bin16_v1.fits",  # sector 0
        "lk-scatterlight_s0002_1-1_bin16_v1.fits.gz",
        "tess-backml_s0002_1-1_bin16_v1.fits",
    ],
)
def test_parse_rejects_other_names(name):
    with pytest.raises(CubeFormatError, match="not a published cube file name"):
        parse_cube_filename(name)


def test_cube_filename_checks_numbers():
    assert cube_filename(2, 1, 1, 16) == "lk-scatterlight_s0002_1-1_bin16_v2.fits"
    with pytest.raises(ValueError, match="ccd must be 1-4, found 0"):
        cube_filename(2, 1, 0, 16)
    with pytest.raises(TypeError, match="bin must be an integer"):
        cube_filename(2, 1, 1, 16.0)


# ---------------------------------------------------------------------- settings
def test_shipped_registry_parses(env):
    assert (resources.files("lk_scatterlight") / "data" / "registry.txt").is_file()
    table = available_cubes()
    assert isinstance(table, Table)
    assert table.colnames == COLUMNS
    assert table.meta["registry"].endswith("registry.txt")
    for row in table:
        assert parse_cube_filename(row["filename"]).sector == row["sector"]
        assert row["url"].startswith("https://")
    if len(table) == 0:  # nothing published yet: the error says how to build one
        with pytest.raises(CubeNotFoundError, match="no cubes are published yet") as info:
            fetch_cube(2, 1, 1)
        assert "lk-scatterlight build --sector 2 --camera 1 --ccd 1" in str(info.value)
        assert "cube=path" in str(info.value)
        assert cached(env) == []


def test_empty_registry(env, tmp_path, monkeypatch):
    registry = tmp_path / "empty.txt"
    registry.write_text("# nothing here yet\n\n", encoding="utf-8")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    table = available_cubes()
    assert len(table) == 0
    assert table.colnames == COLUMNS
    with pytest.raises(CubeNotFoundError, match=r"registry .*empty\.txt is empty"):
        load_cube(3, 2, 1)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    with conf.set_temp("cache_dir", ""):
        assert get_cache_dir() == Path(pooch.os_cache("lk_scatterlight"))
    with conf.set_temp("cache_dir", str(tmp_path / "conf")):
        assert get_cache_dir() == tmp_path / "conf"
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))  # env wins over conf
        assert get_cache_dir() == tmp_path / "env"
        assert get_cache_dir(tmp_path / "arg") == tmp_path / "arg"  # argument wins over all
        assert get_pooch().abspath == tmp_path / "env"
        assert get_pooch(tmp_path / "arg").abspath == tmp_path / "arg"
    assert not (tmp_path / "env").exists()  # nothing is created before a download


@pytest.mark.slow
def test_import_creates_no_cache_folder(tmp_path):
    """Importing and listing touch neither the cache folder nor the network."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LK_SCATTERLIGHT_")}
    environ.update(
        HOME=str(tmp_path / "home"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        MPLCONFIGDIR=str(tmp_path / "mpl"),
    )
    code = (
        "import lk_scatterlight as sl\n"
        "print(sl.registry.get_cache_dir())\n"
        "print(len(sl.available_cubes()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    default = tmp_path / "xdg-cache" / "lk_scatterlight"
    assert result.stdout.splitlines()[0] == str(default)
    assert not default.exists()


def test_settings_are_read_at_call_time(published, server, tmp_path, monkeypatch):
    table = available_cubes()
    assert list(table["filename"]) == sorted(NAMES, key=parse_cube_filename)
    assert list(table["url"]) == [f"{server.url}/{n}" for n in table["filename"]]
    monkeypatch.setenv(URL_ENV, "https://mirror.example.org/cubes/")
    assert available_cubes()["url"][0].startswith("https://mirror.example.org/cubes/lk-")
    monkeypatch.delenv(URL_ENV)
    with conf.set_temp("registry_url", "https://conf.example.org"):
        assert available_cubes()["url"][0].startswith("https://conf.example.org/lk-")
        monkeypatch.setenv(URL_ENV, server.url)  # env wins over conf
        assert available_cubes()["url"][0].startswith(server.url)
        monkeypatch.delenv(URL_ENV)
    assert available_cubes()["url"][0].startswith(DEAD_URL)  # the registry's own URLs
    other = write_registry(
        tmp_path / "other.txt", {NAMES[3]: published[NAMES[3]]}, base_url=server.url
    )
    monkeypatch.setenv(REGISTRY_ENV, str(other))
    assert list(available_cubes()["filename"]) == [NAMES[3]]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a b c d\n", "Cannot read the cube registry"),
        ("cube.fits sha256:00 http://x/cube.fits\n", "lists an invalid entry"),
        ("lk-scatterlight_s0002_1-1_bin16_v1.fits sha256:00\n", "gives no URL"),
    ],
)
def test_bad_registry(env, tmp_path, monkeypatch, content, match):
    registry = tmp_path / "bad.txt"
    registry.write_text(content, encoding="utf-8")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    with pytest.raises(ScatterLightError, match=match):
        available_cubes()


def test_registry_without_urls_needs_base_url(published, server, tmp_path, monkeypatch):
    registry = write_registry(tmp_path / "bare.txt", published)  # name and hash only
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert fetch_cube(2, 1, 1, 16, progressbar=False).is_file()


def test_missing_registry_override(env, tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "nope.txt"))
    with pytest.raises(ScatterLightError, match="nope.txt, which is not a file"):
        available_cubes()


# ---------------------------------------------------------------------- downloads
def test_download_then_cache_hit_offline(published, server, env):
    path = fetch_cube(2, 1, 1, 16, progressbar=False)
    assert path == env / NAMES[0]
    assert pooch.file_hash(str(path)) == pooch.file_hash(str(published[NAMES[0]]))
    assert server.requests == [f"/{NAMES[0]}"]
    assert cached(env) == [NAMES[0]]
    server.stop()  # offline from now on
    assert fetch_cube(2, 1, 1, 16, progressbar=False) == path
    cube = load_cube(2, 1, 1, 16, progressbar=False)
    assert isinstance(cube, ScatterLightCube)
    assert (cube.sector, cube.camera, cube.ccd, cube.pixel_bin) == (2, 1, 1, 16)
    assert server.requests == [f"/{NAMES[0]}"]


def test_cache_dir_argument(published, server, tmp_path):
    path = fetch_cube(2, 1, 2, cache_dir=tmp_path / "mine", progressbar=False)
    assert path == tmp_path / "mine" / NAMES[3]
    assert path.is_file()


def test_registry_urls_used_without_override(published, server, tmp_path, monkeypatch):
    registry = write_registry(tmp_path / "direct.txt", published, base_url=server.url)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    monkeypatch.delenv(URL_ENV)
    assert fetch_cube(5, 2, 3, progressbar=False).name == NAMES[4]


def test_progressbar_and_logging(published, server, capsys, caplog):
    caplog.set_level(logging.INFO, logger="lk_scatterlight.registry")
    fetch_cube(2, 1, 1, 16, progressbar=True)
    assert "100%" in capsys.readouterr().err  # tqdm's bar, on stderr
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("pooch: Downloading file") for m in messages)
    assert any(m.startswith(f"Downloaded {NAMES[0]}") for m in messages)
    assert pooch.get_logger().filters == []  # the forwarding is undone


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_cache_is_downloaded_again(published, server, env, damage):
    path = fetch_cube(2, 1, 1, 16, progressbar=False)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    assert fetch_cube(2, 1, 1, 16, progressbar=False) == path
    assert path.read_bytes() == good
    assert len(server.requests) == 2
    assert cached(env) == [NAMES[0]]
    assert ScatterLightCube.read(path).shape == (5, 4, 4)


def test_hash_mismatch_is_rejected(published, server, env):
    server.mode = "tamper"
    with pytest.raises(DownloadError, match="was rejected and not kept in the cache") as info:
        fetch_cube(2, 1, 1, 16, progressbar=False)
    message = str(info.value)
    assert "does not match the known hash" in message
    assert "lk-scatterlight build --sector 2 --camera 1 --ccd 1" in message
    assert isinstance(info.value.__cause__, ValueError)
    assert len(server.requests) == 1 + RETRIES
    assert cached(env) == []  # no file, no temporary left behind


@pytest.mark.parametrize("status", [404, 500])
def test_http_error(published, server, env, status):
    server.mode = status
    with pytest.raises(DownloadError, match=f"the server answered HTTP {status}") as info:
        fetch_cube(2, 1, 1, 16, progressbar=False)
    assert f"{server.url}/{NAMES[0]}" in str(info.value)
    assert isinstance(info.value.__cause__, requests.HTTPError)
    assert len(server.requests) == 1 + RETRIES
    assert cached(env) == []


def test_server_down(published, server, env):
    server.stop()
    with pytest.raises(DownloadError) as info:
        load_cube(2, 1, 1, 16, progressbar=False)
    message = str(info.value)
    assert "\n" not in message
    assert NAMES[0] in message  # which file
    assert f"{server.url}/{NAMES[0]}" in message  # from where
    assert "cannot be reached" in message
    assert "lk-scatterlight build --sector 2 --camera 1 --ccd 1" in message  # what to do
    assert "cube=path" in message
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert cached(env) == []


def test_bad_timeout_setting(published, monkeypatch):
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ScatterLightError, match="LK_SCATTERLIGHT_TIMEOUT='soon'"):
        fetch_cube(2, 1, 1, progressbar=False)


CHILD = """
import sys, time
from pathlib import Path
from lk_scatterlight import fetch_cube
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.01)
print(fetch_cube(2, 1, 1, 16, progressbar=False))
"""


@pytest.mark.slow
def test_concurrent_fetch_from_two_processes(published, server, env, tmp_path):
    # The server holds each request until both have arrived, so the two
    # processes really download the same file at the same time.
    server.barrier = threading.Barrier(2)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(r), str(go)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a child process died"
            threading.Event().wait(0.02)  # (time.sleep is patched out by the env fixture)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == str(env / NAMES[0])
    assert len(server.requests) == 2  # both downloaded...
    assert cached(env) == [NAMES[0]]  # ...yet one intact file and no temporaries
    path = env / NAMES[0]
    assert pooch.file_hash(str(path)) == pooch.file_hash(str(published[NAMES[0]]))
    assert ScatterLightCube.read(path).shape == (5, 4, 4)


# ---------------------------------------------------------------------- selection
def test_unpublished_ccd_lists_same_sector(published, server, env):
    with pytest.raises(CubeNotFoundError) as info:
        fetch_cube(2, 3, 4)
    message = str(info.value)
    assert "No scattered-light cube is published for sector 2 camera 3 CCD 4" in message
    assert "Published for sector 2: camera 1 CCD 1, camera 1 CCD 2." in message
    assert "lk-scatterlight build --sector 2 --camera 3 --ccd 4" in message
    assert isinstance(info.value, FileNotFoundError)
    assert server.requests == []
    assert cached(env) == []


def test_unpublished_sector_lists_nearest(published, server):
    with pytest.raises(CubeNotFoundError, match="sector 4 camera 1 CCD 1") as info:
        load_cube(4, 1, 1)
    assert (
        "Nearest published sectors: sector 2 (camera 1 CCD 1, camera 1 CCD 2); "
        "sector 5 (camera 2 CCD 3); sector 7 (camera 1 CCD 1)."
    ) in str(info.value)
    assert server.requests == []


def test_bin_and_version_selection(published, server):
    assert fetch_cube(2, 1, 1, progressbar=False).name == NAMES[1]  # finest readable bin: 8
    assert fetch_cube(2, 1, 1, bin=16, progressbar=False).name == NAMES[0]
    assert load_cube(2, 1, 1, progressbar=False).pixel_bin == 8
    with pytest.raises(CubeNotFoundError, match="published bins: 8, 16"):
        fetch_cube(2, 1, 1, bin=4)  # published only in format version 3
    with pytest.raises(CubeNotFoundError, match="only in cube format version 3"):
        fetch_cube(7, 1, 1)


def test_input_checks(published):
    with pytest.raises(ValueError, match="camera must be 1-4, found 5"):
        fetch_cube(2, 5, 1)
    with pytest.raises(ValueError, match="bin must be >= 1, found 0"):
        fetch_cube(2, 1, 1, bin=0)
    with pytest.raises(TypeError, match="sector must be an integer, not float"):
        fetch_cube(2.0, 1, 1)


def test_load_cube_checks_content(server, env, tmp_path, monkeypatch):
    name = NAMES[0]  # says sector 2, holds sector 3
    path = make_cube(3, 1, 1).write(server.directory / name)
    registry = write_registry(tmp_path / "registry.txt", {name: path}, base_url=server.url)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    with pytest.raises(CubeFormatError, match=r"holds sector/camera/CCD \(3, 1, 1\)"):
        load_cube(2, 1, 1, progressbar=False)
