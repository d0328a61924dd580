"""TessCubeSource against a local S3 server (moto) holding a MAST-format FFI cube.

The real ``tesscube`` reads the cube with anonymous byte-range requests; botocore
sends them to ``AWS_ENDPOINT_URL``, here a ``moto`` server on 127.0.0.1. The FFI
files and the cube are written by ``tests/mast_cube.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import logging
import socket
import sys
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mast_cube import (
    FFI_SHAPE,
    cube_object_key,
    ffi_bytes,
    ffi_object_key,
    make_ffi,
    public_bucket,
    write_mast_cube,
)

if importlib.util.find_spec("tesscube") is None or importlib.util.find_spec("lkspacecraft") is None:
    pytest.skip(
        "tesscube/lkspacecraft not installed (pip install 'lk_scatterlight[builder]')",
        allow_module_level=True,
    )
if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
    pytest.skip(
        "moto[server] not installed (pip install 'moto[server]>=5')", allow_module_level=True
    )

import lkspacecraft  # noqa: E402
from cube_asserts import assert_same_fine

from lk_scatterlight.exceptions import FFISourceError, ScatterLightError  # noqa: E402
from lk_scatterlight.simulate import FFISimulator, sector_times  # noqa: E402

BUCKET = "stpubdata"
SECTOR, CAMERA, CCD = 1, 1, 1
FFIINDEX = 7000
SCIENCE = (slice(0, 2048), slice(44, 2092))


@dataclass
class Uploaded:
    """What the bucket holds for sector 1, camera 1, CCD 1."""

    flux: list[np.ndarray]
    flux_err: list[np.ndarray]
    tstart: np.ndarray
    tstop: np.ndarray
    quality: np.ndarray
    names: list[str]
    endpoint: str
    local_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tesscube_module() -> Iterator[object]:
    """tesscube, imported with lkspacecraft's bundled test kernels (no downloads)."""
    was_test_mode = lkspacecraft.is_test_mode()
    lkspacecraft.enable_test_mode()
    try:
        import tesscube
        import tesscube.query

        yield tesscube
    finally:
        if not was_test_mode:
            lkspacecraft.disable_test_mode()
    # tesscube caches cube headers per S3 key for the whole process.
    tesscube.query.get_primary_hdu.cache_clear()
    tesscube.query.get_last_hdu.cache_clear()


@pytest.fixture(scope="module")
def s3_env() -> Iterator[pytest.MonkeyPatch]:
    """Isolate botocore from the user's AWS configuration."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_MAX_ATTEMPTS", "2")  # fail fast when the server is down
        yield mp


@pytest.fixture(scope="module")
def mast_bucket(
    s3_env: pytest.MonkeyPatch, tesscube_module: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Uploaded]:
    """A moto S3 server on 127.0.0.1 with a public ``stpubdata`` bucket.

    It holds a 3-frame cube of sector 1 (camera 1, CCD 1) with its FFIs, made from
    `FFISimulator` frames, and a 1-frame cube of sector 3 whose FFI is missing.
    """
    with public_bucket(BUCKET) as (endpoint, client):
        offsets = [0, 1, 3]  # one missing cadence
        simulator = FFISimulator(
            sector=SECTOR, camera=CAMERA, ccd=CCD, time=sector_times(SECTOR)[offsets], n_stars=2000
        )
        tstart, tstop, quality = simulator.tstart, simulator.tstop, simulator.quality
        ffis, fluxes, errors = [], [], []
        for i in range(len(offsets)):
            flux, error = simulator.frame(i)
            flux[10 + i, 100] = np.nan
            ffis.append(
                make_ffi(
                    flux,
                    error,
                    sector=SECTOR,
                    camera=CAMERA,
                    ccd=CCD,
                    tstart=float(tstart[i]),
                    tstop=float(tstop[i]),
                    quality=int(quality[i]),
                    ffiindex=FFIINDEX + int(simulator.cadenceno[i]),
                    barycorr=0.001,
                )
            )
            fluxes.append(flux)
            errors.append(error)
        local_dir = tmp_path_factory.mktemp("ffis")  # the same FFIs as local files
        for name, hdulist in ffis:
            client.put_object(Bucket=BUCKET, Key=ffi_object_key(name), Body=ffi_bytes(hdulist))
            hdulist.writeto(local_dir / name)
        buffer = io.BytesIO()
        write_mast_cube(ffis[::-1], buffer, sector=SECTOR)  # the writer sorts by TSTART
        key = cube_object_key(SECTOR, CAMERA, CCD)
        client.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
        # A one-frame cube (sector 3) whose FFI was never uploaded.
        lost = make_ffi(
            fluxes[0], errors[0], sector=3, camera=CAMERA, ccd=CCD, tstart=1385.9, tstop=1385.92
        )
        buffer = io.BytesIO()
        write_mast_cube([lost], buffer, sector=3)
        client.put_object(
            Bucket=BUCKET, Key=cube_object_key(3, CAMERA, CCD), Body=buffer.getvalue()
        )
        names = [name for name, _ in ffis]
        del buffer, ffis, lost

        s3_env.setenv("AWS_ENDPOINT_URL", endpoint)
        try:
            yield Uploaded(fluxes, errors, tstart, tstop, quality, names, endpoint, local_dir)
        finally:
            tesscube_module.query.get_primary_hdu.cache_clear()
            tesscube_module.query.get_last_hdu.cache_clear()


@pytest.fixture(scope="module")
def source(mast_bucket: Uploaded):
    from lk_scatterlight.builder.tesscube_source import TessCubeSource

    return TessCubeSource(SECTOR, CAMERA, CCD, prefetch=2)


def test_cube_layout_read_by_tesscube(mast_bucket: Uploaded, tesscube_module) -> None:
    """The writer's cube is what tesscube expects: pixel time series by byte range."""
    cube = tesscube_module.TESSCube(sector=SECTOR, camera=CAMERA, ccd=CCD)
    assert cube.shape == (3, *FFI_SHAPE)
    np.testing.assert_array_equal(cube.tstart, mast_bucket.tstart)
    np.testing.assert_array_equal(cube.quality, mast_bucket.quality)
    assert cube.ffi_names == mast_bucket.names
    pixels = [(1, 1), (12, 101), (1500, 2000), (2078, 2136)]  # 1-based (row, column)
    flux, flux_err = cube.get_pixel_timeseries(pixels, return_errors=True)
    for k, (row, column) in enumerate(sorted(pixels)):
        expected = [f[row - 1, column - 1] for f in mast_bucket.flux]
        np.testing.assert_array_equal(flux[:, k], expected)
        expected = [e[row - 1, column - 1] for e in mast_bucket.flux_err]
        np.testing.assert_array_equal(flux_err[:, k], expected)


def test_frames(source, mast_bucket: Uploaded) -> None:
    assert (source.sector, source.camera, source.ccd) == (SECTOR, CAMERA, CCD)
    assert source.description == (
        "tesscube s0001 1-1 (s3://stpubdata/tess/public/mast/tess-s0001-1-1-cube.fits)"
    )
    assert [f.index for f in source.frames] == [0, 1, 2]
    np.testing.assert_array_equal([f.tstart for f in source.frames], mast_bucket.tstart)
    np.testing.assert_array_equal([f.tstop for f in source.frames], mast_bucket.tstop)
    np.testing.assert_allclose(
        [f.time for f in source.frames], (mast_bucket.tstart + mast_bucket.tstop) / 2, rtol=0
    )
    assert [f.quality for f in source.frames] == mast_bucket.quality.tolist()
    assert len(set(mast_bucket.quality.tolist())) == 3  # the simulator flags each differently
    assert [f.cadenceno for f in source.frames] == [FFIINDEX, FFIINDEX + 1, FFIINDEX + 3]
    assert [f.name for f in source.frames] == mast_bucket.names


@pytest.mark.parametrize("index", [0, 2])
def test_read_returns_science_region(source, mast_bucket: Uploaded, index: int) -> None:
    flux, flux_err = source.read(index)
    assert flux.shape == flux_err.shape == (2048, 2048)
    assert flux.dtype == flux_err.dtype == np.float32
    assert flux.dtype.isnative
    np.testing.assert_array_equal(flux, mast_bucket.flux[index][SCIENCE])
    np.testing.assert_array_equal(flux_err, mast_bucket.flux_err[index][SCIENCE])


@pytest.mark.slow
def test_iter_read(source, mast_bucket: Uploaded) -> None:
    seen = []
    for info, flux, flux_err in source.iter_read([2, 0, 1], prefetch=2):
        seen.append(info.index)
        np.testing.assert_array_equal(flux, mast_bucket.flux[info.index][SCIENCE])
        np.testing.assert_array_equal(flux_err, mast_bucket.flux_err[info.index][SCIENCE])
    assert seen == [2, 0, 1]
    assert [info.index for info, _, _ in source.iter_read()] == [0, 1, 2]  # prefetch=2 default


def test_read_index_out_of_range(source) -> None:
    with pytest.raises(FFISourceError, match="outside 0..2"):
        source.read(3)


def test_read_inside_running_event_loop(source, mast_bucket: Uploaded) -> None:
    """As in Jupyter: read() is called while an event loop runs in the thread."""

    async def main() -> tuple[np.ndarray, np.ndarray]:
        return source.read(1)

    flux, _ = asyncio.run(main())
    np.testing.assert_array_equal(flux, mast_bucket.flux[1][SCIENCE])


def test_missing_cube(mast_bucket: Uploaded) -> None:
    from lk_scatterlight.builder.tesscube_source import TessCubeSource

    with pytest.raises(FFISourceError, match=r"does not exist: s3://stpubdata/.*tess-s0001-4-2"):
        TessCubeSource(SECTOR, 4, 2)


def test_missing_ffi(mast_bucket: Uploaded) -> None:
    from lk_scatterlight.builder.tesscube_source import TessCubeSource

    source = TessCubeSource(3, CAMERA, CCD)
    assert len(source.frames) == 1
    with pytest.raises(FFISourceError, match=r"FFI of frame 0 does not exist: s3://stpubdata/"):
        source.read(0)


def test_server_down(s3_env: pytest.MonkeyPatch, tesscube_module, mast_bucket: Uploaded) -> None:
    from lk_scatterlight.builder.tesscube_source import TessCubeSource

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
        with pytest.raises(ScatterLightError, match="cannot reach MAST's S3 bucket s3://stpubdata"):
            TessCubeSource(2, CAMERA, CCD)  # a key tesscube has not cached


@pytest.fixture
def fresh_tesscube_import(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the next ``import tesscube`` run again; restore the modules afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == "tesscube" or k.startswith("tesscube.")}
    handlers = list(logging.getLogger("tesscube").handlers)
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [k for k in sys.modules if k == "tesscube" or k.startswith("tesscube.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        logging.getLogger("tesscube").handlers[:] = handlers


def test_spice_download_failure(
    fresh_tesscube_import: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without network or lkspacecraft's test mode, importing tesscube fails clearly."""
    import lkspacecraft.spacecraft

    from lk_scatterlight.builder.tesscube_source import TessCubeSource

    def offline() -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(lkspacecraft, "TEST_MODE", False)
    monkeypatch.setattr(lkspacecraft, "OFFLINE_MODE", False)
    monkeypatch.setattr(lkspacecraft.spacecraft, "create_meta_kernel", offline)
    with pytest.raises(FFISourceError, match="SPICE kernels") as err:
        TessCubeSource(SECTOR, CAMERA, CCD)
    assert "lkspacecraft.enable_test_mode()" in str(err.value)
    assert "network access" in str(err.value)


def test_tesscube_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from lk_scatterlight.builder.tesscube_source import TessCubeSource

    monkeypatch.setitem(sys.modules, "tesscube", None)
    with pytest.raises(FFISourceError, match=r"pip install 'lk_scatterlight\[builder\]'"):
        TessCubeSource(SECTOR, CAMERA, CCD)


@pytest.mark.slow
def test_build_from_s3_equals_build_from_local_files(source, mast_bucket: Uploaded, tmp_path):
    """The same frames through tesscube/S3 and as local SPOC files give the same cube."""
    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import LocalFFISource

    # The simulator puts a defect on each of these 3 frames: keep them all here.
    config = BuildConfig(n_dark=2, n_candidates=3, prefetch=2, bitmask=0)
    from_s3 = build_cube(source, config, work_dir=tmp_path / "s3", progress=False)
    local = LocalFFISource(mast_bucket.local_dir)
    from_files = build_cube(local, config, work_dir=tmp_path / "local", progress=False)
    assert from_s3.shape == from_files.shape == (3, 128, 128)
    np.testing.assert_array_equal(from_s3.btjd, from_files.btjd)
    np.testing.assert_array_equal(from_s3.flux, from_files.flux)
    np.testing.assert_array_equal(from_s3.flux_err, from_files.flux_err)
    np.testing.assert_array_equal(from_s3.strap_response, from_files.strap_response)
    assert_same_fine(from_s3, from_files, atol=0)
