"""Regional cubes on demand from MAST's FFI cube, served by a local S3 server (moto)."""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mast_cube import cube_object_key, make_ffi, public_bucket, write_mast_cube

if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
    pytest.skip(
        "moto[server] not installed (pip install 'moto[server]>=5')", allow_module_level=True
    )

from lk_scatterlight import ondemand  # noqa: E402
from lk_scatterlight.builder import ffi_cube  # noqa: E402
from lk_scatterlight.builder.pipeline import BuildConfig, build_cube  # noqa: E402
from lk_scatterlight.builder.sources import LocalFFISource  # noqa: E402
from lk_scatterlight.ccd import Region  # noqa: E402
from lk_scatterlight.exceptions import (  # noqa: E402
    CubeNotFoundError,
    DownloadError,
    FFISourceError,
    OutsideCubeError,
)
from lk_scatterlight.simulate import FFISimulator, ScatteredLightField, sector_times  # noqa: E402

pytestmark = pytest.mark.slow

BUCKET = "stpubdata"
SECTOR, CAMERA, CCD = 1, 1, 1
NFRAMES = 10
TPF = Region(700, 900, 15, 15)  # a 15 x 15 TPF's science pixels
CONFIG = BuildConfig(pixel_bin=16, n_candidates=NFRAMES, n_dark=3)


@dataclass
class Bucket:
    endpoint: str
    local_dir: Path
    simulator: FFISimulator


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    """A moto S3 server on 127.0.0.1 holding a 10-frame MAST FFI cube of sector 1, 1-1."""
    with public_bucket(BUCKET) as (endpoint, client):
        simulator = FFISimulator(
            ScatteredLightField(seed=5),
            sector=SECTOR,
            camera=CAMERA,
            ccd=CCD,
            time=sector_times(SECTOR)[:NFRAMES],
            n_stars=3000,
            seed=5,
        )
        local_dir = tmp_path_factory.mktemp("ffis")
        ffis = []
        for i in range(NFRAMES):
            flux, error = simulator.frame(i)
            name, hdulist = make_ffi(
                flux,
                error,
                sector=SECTOR,
                camera=CAMERA,
                ccd=CCD,
                tstart=float(simulator.tstart[i]),
                tstop=float(simulator.tstop[i]),
                quality=int(simulator.quality[i]),
            )
            hdulist.writeto(local_dir / name)
            ffis.append((name, hdulist))
        path = tmp_path_factory.mktemp("cube") / "cube.fits"
        write_mast_cube(ffis, path, sector=SECTOR)
        del ffis
        client.upload_file(str(path), BUCKET, cube_object_key(SECTOR, CAMERA, CCD))
        path.unlink()
        yield Bucket(endpoint, local_dir, simulator)


@pytest.fixture
def s3(bucket: Bucket, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Bucket:
    """Point botocore at the local server and the package cache at a fresh folder."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("LK_SCATTERLIGHT_CACHE", str(tmp_path / "cache"))
    return bucket


def location() -> ondemand.TPFLocation:
    return ondemand.TPFLocation(SECTOR, CAMERA, CCD, TPF, "test")


def test_frame_table_matches_the_uploaded_frames(s3: Bucket) -> None:
    cube = ffi_cube.FFICube(SECTOR, CAMERA, CCD)
    assert cube.nframes == NFRAMES
    np.testing.assert_allclose([f.tstart for f in cube.frames], s3.simulator.tstart)
    np.testing.assert_array_equal([f.quality for f in cube.frames], s3.simulator.quality)


def test_region_download_equals_the_ffis(s3: Bucket, tmp_path: Path) -> None:
    cube = ffi_cube.FFICube(SECTOR, CAMERA, CCD)
    region = Region(65, 109, 64, 64)
    ffi_cube.download_region(cube, region, tmp_path / "dl", row_step=3, progress=False)
    source = ffi_cube.TessCubeRegionSource(tmp_path / "dl", SECTOR, CAMERA, CCD)
    local = LocalFFISource(s3.local_dir).crop(region, row_step=3)
    for index in (0, 4, 9):
        for got, expected in zip(source.read(index), local.read(index), strict=True):
            np.testing.assert_array_equal(got, expected)
    streamed = list(source.iter_read([9, 2]))
    np.testing.assert_array_equal(streamed[0][1], source.read(9)[0])
    assert [f.index for f, _, _ in streamed] == [9, 2]


def test_regional_cube_from_s3_equals_local_build(s3: Bucket, tmp_path: Path) -> None:
    cube = ondemand.regional_cube(location(), CONFIG, progress=False)
    region = ondemand.tpf_build_region(TPF, CONFIG)
    local = build_cube(
        LocalFFISource(s3.local_dir).crop(region), CONFIG, out=tmp_path, progress=False
    )
    rows = np.arange(TPF.row, TPF.row_stop + 1)
    cols = np.arange(TPF.column, TPF.column_stop + 1)
    a = cube.evaluate(cube.btjd, rows, cols)
    b = local.evaluate(local.btjd, rows, cols)
    np.testing.assert_allclose(a.flux.value, b.flux.value, atol=1e-4)
    np.testing.assert_allclose(a.flux_err.value, b.flux_err.value, rtol=1e-4, atol=1e-6)
    assert cube.region.covers(TPF)
    assert not cube.region.covers(region)
    with pytest.raises(OutsideCubeError, match="outside this regional cube"):
        cube.evaluate(cube.btjd, [region.row], cols)
    # Against the injected truth, over the TPF.
    sim = s3.simulator
    used = np.flatnonzero(np.isin(sim.time, cube.btjd))
    truth = np.stack([sim.truth(i)[rows - 1][:, cols - 45] for i in used])
    residual = a.flux.value - truth
    residual -= residual.mean(axis=0)  # the cube models the light above the darkest frames
    assert np.sqrt(np.mean(residual**2)) < 0.01 * np.ptp(truth)
    # The download is gone, the cube is cached and found again without the network.
    cache = Path(ondemand._regional_dir())
    assert not any((cache / "downloads").glob("*/pixels.f4"))
    again = ondemand.cached_regional_cube(location(), CONFIG)
    assert again is not None
    assert again.region == cube.region


def test_sparse_rows_follow_the_budget(s3: Bucket) -> None:
    """Every 4th row read: 2-px fine bins would hold 2 pixels, so the cube is built
    (and records that it is) with 4-px bins, which hold a read row; the cache
    finds it under the settings asked for."""
    config = dataclasses.replace(CONFIG, fine_bin=2)
    region = ondemand.tpf_build_region(TPF, config)
    full = ffi_cube.region_bytes(NFRAMES, region)
    assert ondemand.choose_row_step(region, NFRAMES, full) == 1
    assert ondemand.choose_row_step(region, NFRAMES, full / 2) == 2
    cube = ondemand.regional_cube(location(), config, max_bytes=full / 3.5, progress=False)
    assert cube.meta["region"]["row_step"] == 4
    assert cube.meta["fine_layer"]["bin"] == 4
    assert cube.meta["fine_layer"]["tile"] * 4 == config.fine_tile * 2
    assert ondemand.cached_regional_cube(location(), config) is not None
    rows = np.arange(TPF.row, TPF.row_stop + 1)
    cols = np.arange(TPF.column, TPF.column_stop + 1)
    sim = s3.simulator
    used = np.flatnonzero(np.isin(sim.time, cube.btjd))
    truth = np.stack([sim.truth(i)[rows - 1][:, cols - 45] for i in used])
    residual = cube.evaluate(cube.btjd, rows, cols).flux.value - truth
    residual -= residual.mean(axis=0)
    assert np.sqrt(np.mean(residual**2)) < 0.02 * np.ptp(truth)


def test_interrupted_download_resumes(s3: Bucket, tmp_path: Path, monkeypatch) -> None:
    cube = ffi_cube.FFICube(SECTOR, CAMERA, CCD)
    region = Region(65, 109, 64, 64)
    real_get, calls = ffi_cube._get, []

    def dropping(client, key, start, stop=None):
        calls.append(start)
        if len(calls) > 20:
            raise ConnectionResetError("connection reset by peer")
        return real_get(client, key, start, stop)

    monkeypatch.setattr(ffi_cube, "_get", dropping)
    with pytest.raises(FFISourceError, match="to read row"):
        ffi_cube.download_region(
            cube, region, tmp_path / "dl", concurrency=1, attempts=2, progress=False
        )
    kept = int(np.load(tmp_path / "dl" / "rows_done.npy").sum())
    assert kept == 20
    with pytest.raises(FFISourceError, match="incomplete"):
        ffi_cube.TessCubeRegionSource(tmp_path / "dl", SECTOR, CAMERA, CCD)
    monkeypatch.setattr(ffi_cube, "_get", real_get)
    fetched = []
    monkeypatch.setattr(ffi_cube, "_get", lambda *a, **k: fetched.append(a[2]) or real_get(*a, **k))
    ffi_cube.download_region(cube, region, tmp_path / "dl", progress=False)
    assert len(fetched) == 64 - 20  # only the missing rows
    source = ffi_cube.TessCubeRegionSource(tmp_path / "dl", SECTOR, CAMERA, CCD)
    expected = LocalFFISource(s3.local_dir).crop(region).read(5)[0]
    np.testing.assert_array_equal(source.read(5)[0], expected)


def test_concurrent_corrections_download_once(s3: Bucket, monkeypatch) -> None:
    real_get, fetched = ffi_cube._get, []
    lock = threading.Lock()

    def counting(client, key, start, stop=None):
        if stop is not None and start >= ffi_cube.DATA_OFFSET:
            with lock:
                fetched.append(start)
        return real_get(client, key, start, stop)

    monkeypatch.setattr(ffi_cube, "_get", counting)
    results, errors = [], []

    def correct() -> None:
        try:
            results.append(ondemand.regional_cube(location(), CONFIG, progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=correct) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    region = ondemand.tpf_build_region(TPF, CONFIG)
    assert len(fetched) == region.nrows  # one GET per row, not two
    assert results[0].region == results[1].region


def test_corrupted_cache_entry_is_rebuilt(s3: Bucket) -> None:
    cube = ondemand.regional_cube(location(), CONFIG, progress=False)
    folder = Path(ondemand._regional_dir())
    (path,) = folder.glob("lk-scatterlight_*.fits")
    path.write_bytes(path.read_bytes()[:5000])
    assert ondemand.cached_regional_cube(location(), CONFIG) is None
    assert not path.exists()
    rebuilt = ondemand.regional_cube(location(), CONFIG, progress=False)
    np.testing.assert_allclose(np.asarray(rebuilt.flux), np.asarray(cube.flux), atol=1e-5)


def test_missing_cube_and_server_down(s3: Bucket, monkeypatch) -> None:
    missing = ondemand.TPFLocation(5, CAMERA, CCD, TPF, "test")
    with pytest.raises(CubeNotFoundError, match="No FFI cube on MAST for sector 5"):
        ondemand.regional_cube(missing, CONFIG, progress=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(DownloadError, match=r"needs ~\d+ MB .* could not be reached"):
        ondemand.regional_cube(location(), CONFIG, progress=False)


def test_to_corrector_builds_a_regional_cube_by_default(s3: Bucket) -> None:
    """The one-liner on a TESSCut-like cutout: no cube given, nothing published."""
    import warnings

    from lk_scatterlight import simulate
    from lk_scatterlight.corrector import QUALITY_STRONG_SL
    from lk_scatterlight.exceptions import ScatterLightWarning

    sim = s3.simulator
    field = ScatteredLightField(seed=5)
    tpf = simulate.make_tpf(
        field, TPF.row, TPF.column, shape=(15, 15), time=sim.time, kind="tesscut", seed=3
    )
    corrector = tpf.to_corrector("scatterlight")  # the published cube, else a regional one
    assert corrector.cube.region.covers(TPF)
    corrected = tpf.scatterlight.correct()  # the accessor reuses the cached cube
    rows = np.arange(TPF.row, TPF.row_stop + 1)
    cols = np.arange(TPF.column, TPF.column_stop + 1)
    removed = tpf.flux.value - corrected.flux.value
    injected = field(tpf.time.value, rows, cols)
    residual = removed - injected
    residual -= np.nanmean(residual, axis=0)  # the light of the darkest frames stays
    assert np.sqrt(np.nanmean(residual**2)) < 0.01 * np.ptp(injected)
    lc = corrector.correct()
    strong = (np.asarray(lc["quality"]) & QUALITY_STRONG_SL) != 0
    level = np.median(corrector.model.flux.value[:, corrector.aperture_mask], axis=1)
    np.testing.assert_array_equal(strong[level > 100], True)
    # A SPOC TPF of the same pixels: compared, never subtracted twice.
    spoc = simulate.make_tpf(
        field, TPF.row, TPF.column, shape=(15, 15), time=sim.time, kind="spoc", seed=3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScatterLightWarning)
        lc_spoc = spoc.to_corrector("scatterlight").correct()
    np.testing.assert_allclose(lc_spoc.flux.value, spoc.to_lightcurve().flux.value)


def test_cli_build_region_from_s3(s3: Bucket, tmp_path: Path, capsys) -> None:
    """`lk-scatterlight build --region` reads the region from MAST's FFI cube."""
    from lk_scatterlight import ScatterLightCube
    from lk_scatterlight.cli import main

    argv = ["build", "--sector", "1", "--camera", "1", "--ccd", "1", "--region", "700", "900"]
    code = main([*argv, "15", "15", "--out", str(tmp_path), "--no-progress", "--max-mb", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "every 2 rows" in captured.err
    cube = ScatterLightCube.read(captured.out.strip())
    assert cube.region.covers(TPF)
    assert cube.meta["region"]["row_step"] == 2
    assert not list(tmp_path.glob(".lk-scatterlight-download_*"))  # removed after the build
