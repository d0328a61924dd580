"""Cube builds on a real Dask cluster (2 worker processes) against the serial build."""

from __future__ import annotations

import dataclasses
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from astropy.table import Table  # noqa: E402
from cube_asserts import assert_same_fine, assert_stored_flux
from distributed import Client, LocalCluster  # noqa: E402

from lk_scatterlight import ScatterLightCube, simulate  # noqa: E402
from lk_scatterlight.builder.distributed import (  # noqa: E402
    build_cube_dask,
    build_many,
    worker_memory,
)
from lk_scatterlight.builder.pipeline import (  # noqa: E402
    BuildConfig,
    build_cube,
    candidate_frames,
)
from lk_scatterlight.builder.sources import (  # noqa: E402
    FFISource,
    LocalFFISource,
    SimulatedFFISource,
)
from lk_scatterlight.cli import main  # noqa: E402
from lk_scatterlight.exceptions import FFISourceError  # noqa: E402
from lk_scatterlight.registry import cube_filename  # noqa: E402

TIMES = simulate.sector_times(1)
GAP = int(np.argmax(np.diff(TIMES))) + 1
#: 5 frames before and 5 after the orbit gap; the simulator flags 3 of them.
FRAMES = np.r_[0:5, GAP : GAP + 5]
CONFIG = BuildConfig(pixel_bin=64, n_candidates=6, n_dark=3, prefetch=1, chunk=2, compact=False)


def make_simulator(ccd: int = 1) -> simulate.FFISimulator:
    field = simulate.ScatteredLightField(seed=5, structured=True)  # a fine layer too
    return simulate.FFISimulator(field, ccd=ccd, time=TIMES[FRAMES], seed=5, n_stars=300)


@pytest.fixture(scope="module")
def client():
    """A real local cluster: 2 worker processes with 1 thread each."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",  # pytest-remotedata allows only local sockets
            dashboard_address="127.0.0.1:0",
            memory_limit="3GiB",
        ) as cluster,
        Client(cluster) as dask_client,
    ):
        yield dask_client


@pytest.fixture(scope="module")
def simulator():
    return make_simulator()


@pytest.fixture(scope="module")
def serial(simulator, tmp_path_factory):
    work = tmp_path_factory.mktemp("serial")
    return build_cube(SimulatedFFISource(simulator), CONFIG, work_dir=work, progress=False)


def frame_outside_static_scene(simulator) -> int:
    """A good frame the static-scene stage does not read (so only a chunk task does)."""
    good = (simulator.quality & CONFIG.bitmask) == 0
    candidates = set(candidate_frames(good, CONFIG.n_candidates).tolist())
    return min(set(np.flatnonzero(good).tolist()) - candidates)


def assert_same_cube(
    cube: ScatterLightCube, reference: ScatterLightCube, stored: bool = False
) -> None:
    """Equal planes, times and strap responses (up to float32 rounding; ``stored``: ``cube``
    was read from a file, whose factors and fine layer are rounded, see `assert_stored_flux`
    and `assert_same_fine`)."""
    np.testing.assert_array_equal(cube.btjd, reference.btjd)
    np.testing.assert_array_equal(cube.nframes, reference.nframes)
    if stored and reference.is_compact:  # its factors are rounded too
        assert_stored_flux(cube, reference)
    else:
        np.testing.assert_allclose(cube.flux.value, reference.flux.value, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(cube.flux_err.value, reference.flux_err.value, rtol=1e-6)
    np.testing.assert_allclose(cube.strap_response, reference.strap_response, rtol=1e-6)
    np.testing.assert_array_equal(cube.strap_column, reference.strap_column)
    assert cube.meta["dark_frames"] == reference.meta["dark_frames"]
    assert cube.meta["frames_used"] == reference.meta["frames_used"]
    assert_same_fine(cube, reference, stored=stored)


class KillOnceSource(SimulatedFFISource):
    """Kills the worker process that first reads ``kill_index`` (never the test process)."""

    def __init__(self, simulator, kill_index: int, marker: Path):
        super().__init__(simulator)
        self.kill_index = kill_index
        self.marker = marker
        self.client_pid = os.getpid()

    def read(self, index):
        if index == self.kill_index and os.getpid() != self.client_pid:
            try:
                self.marker.open("x").close()  # the first attempt only
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return super().read(index)


class BrokenSource(SimulatedFFISource):
    """Every read of ``bad_index`` fails; reads in this process are counted."""

    def __init__(self, simulator, bad_index: int | None = None):
        super().__init__(simulator)
        self.bad_index = bad_index
        self.reads: list[int] = []

    def read(self, index):
        if index == self.bad_index:
            raise OSError(f"frame {index} is unreadable")
        self.reads.append(index)
        return super().read(index)


@pytest.mark.slow
def test_sources_pickle_for_workers(simulator, tmp_path):
    source = SimulatedFFISource(simulator)
    source.read(0)  # renders and caches the scene, which is not sent
    data = pickle.dumps(source)
    assert len(data) < 1_000_000
    copy = pickle.loads(data)
    assert copy.simulator._static is None
    np.testing.assert_array_equal(copy.read(1)[0], source.read(1)[0])

    paths = simulator.write_ffis(tmp_path, indices=[0, 1])  # its scene is rendered already
    local = LocalFFISource(paths)
    copy = pickle.loads(pickle.dumps(local))
    assert copy.paths == local.paths
    np.testing.assert_array_equal(copy.read(1)[1], local.read(1)[1])


def test_tesscube_source_pickles_without_its_cube(monkeypatch):
    from lk_scatterlight.builder import tesscube_source
    from lk_scatterlight.builder.tesscube_source import TessCubeSource

    source = TessCubeSource.__new__(TessCubeSource)
    frames = SimulatedFFISource(make_simulator()).frames
    FFISource.__init__(source, 1, 1, 1, frames, "tesscube s0001 1-1")
    source.prefetch = 2
    source.object_key = "tess/public/mast/tess-s0001-1-1-cube.fits"
    source._cube = threading.Lock()  # stands for the opened, unpicklable cube
    source._async_get_ffi = print
    copy = pickle.loads(pickle.dumps(source))
    assert copy._cube is None
    assert copy.frames == source.frames
    assert copy.object_key == source.object_key

    class Query:
        @staticmethod
        def async_get_ffi(name):
            return f"coroutine for {name}"

    monkeypatch.setattr(tesscube_source, "_import_tesscube", lambda: (None, Query))
    assert copy._async_get_ffi("a.fits") == "coroutine for a.fits"  # imported on first use


@pytest.mark.slow
def test_distributed_equals_serial(client, simulator, serial, tmp_path):
    assert serial.fine is not None  # so the fine layer's chunk path is compared too
    cube = build_cube(
        SimulatedFFISource(simulator), CONFIG, out=tmp_path, progress=False, client=client
    )
    assert [p.name for p in tmp_path.iterdir()] == [cube_filename(1, 1, 1, 64)]
    assert_same_cube(cube, serial)
    assert_same_cube(
        ScatterLightCube.read(tmp_path / cube_filename(1, 1, 1, 64)), serial, stored=True
    )


@pytest.mark.slow
def test_time_binning_stage_equals_serial(client, simulator, serial, tmp_path):
    config = BuildConfig(**{**CONFIG.__dict__, "time_bin": 2 / 24})
    cube = build_cube_dask(SimulatedFFISource(simulator), config, client=client, work_dir=tmp_path)
    assert cube.nframes.sum() == serial.shape[0]
    assert np.any(cube.nframes > 1)
    # The serial build's planes, averaged in the same groups (pipeline.bin_planes).
    edges = np.cumsum(cube.nframes)[:-1]
    flux = np.split(serial.flux.value, edges)
    err = np.split(serial.flux_err.value, edges)
    np.testing.assert_allclose(
        cube.flux.value, [f.mean(axis=0) for f in flux], rtol=1e-6, atol=1e-6
    )
    expected_err = [np.sqrt((e**2).sum(axis=0)) / len(e) for e in err]
    np.testing.assert_allclose(cube.flux_err.value, expected_err, rtol=1e-6)
    np.testing.assert_allclose(cube.strap_response, serial.strap_response, rtol=1e-6)


@pytest.mark.slow
def test_killed_worker_does_not_corrupt_the_build(client, simulator, serial, tmp_path):
    marker = tmp_path / "killed"
    kill = frame_outside_static_scene(simulator)  # the worker dies in a chunk task
    source = KillOnceSource(simulator, kill_index=kill, marker=marker)
    cube = build_cube_dask(
        source, CONFIG, client=client, out=tmp_path / "cube.fits", progress=False
    )
    assert marker.exists()  # a worker process died mid-build
    assert_same_cube(cube, serial)
    assert_same_cube(ScatterLightCube.read(tmp_path / "cube.fits"), serial, stored=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.fits", "killed"]
    client.wait_for_workers(2, timeout=30)  # the nanny restarted it


@pytest.mark.slow
def test_interrupted_build_resumes_from_finished_chunks(client, simulator, serial, tmp_path):
    work, out = tmp_path / "work", tmp_path / "cube.fits"
    good = np.flatnonzero((simulator.quality & CONFIG.bitmask) == 0)
    broken = BrokenSource(simulator, bad_index=frame_outside_static_scene(simulator))
    with pytest.raises(OSError, match="unreadable"):
        build_cube_dask(
            broken, CONFIG, client=client, out=out, work_dir=work, progress=False, retries=0
        )
    assert not out.exists()  # never a half-written cube
    done = np.load(work / "done.npy")
    assert 0 < done.sum() < good.size  # the finished chunks are checkpointed
    # Resume serially: only the frames not yet done are read again.
    resumed = BrokenSource(simulator)
    cube = build_cube(resumed, CONFIG, out=out, work_dir=work, progress=False)
    assert sorted(resumed.reads) == sorted(set(good) - set(np.flatnonzero(done)))
    assert not work.exists()
    assert_same_cube(cube, serial)


@pytest.mark.slow
def test_build_many_skips_built_and_reports_failures(client, serial, tmp_path):
    out = tmp_path / "cubes"
    out.mkdir()
    serial.write(out / cube_filename(1, 1, 1, 64))  # already built

    def factory(sector, camera, ccd):
        if ccd == 3:
            raise FFISourceError(f"no FFIs for sector {sector} camera {camera} CCD {ccd}")
        if ccd == 4:
            return BrokenSource(make_simulator(ccd), bad_index=0)  # fails on the workers
        return SimulatedFFISource(make_simulator(ccd))

    targets = [(1, 1, ccd) for ccd in (1, 2, 3, 4)]
    table = build_many(targets, factory, client, out, CONFIG, progress=False, retries=0)
    assert list(table["status"]) == ["skipped", "built", "failed", "failed"]
    assert "FFISourceError: no FFIs for sector 1 camera 1 CCD 3" in table["error"][2]
    assert "OSError: frame 0 is unreadable" in table["error"][3]
    assert table["frames"][1] == serial.meta["frames_used"]
    summary = Table.read(out / "build-many-summary.ecsv")
    assert list(summary["status"]) == list(table["status"])
    assert ScatterLightCube.read(out / cube_filename(1, 1, 2, 64)).shape[1:] == (32, 32)

    again = build_many(targets[:2], factory, client, out, CONFIG, progress=False)
    assert list(again["status"]) == ["skipped", "skipped"]


@pytest.mark.slow
def test_cli_build_and_build_many_on_a_scheduler(client, tmp_path, capsys):
    address = client.scheduler_info()["address"]
    ffis = tmp_path / "ffis"
    sim = simulate.FFISimulator(time=TIMES[:5], n_stars=300, defects={})
    sim.write_ffis(ffis / "ccd1")
    common = ["--pixel-bin", "128", "--no-progress", "--scheduler", address]
    out = tmp_path / "one"
    argv = ["build", "--sector", "1", "--camera", "1", "--ccd", "1", "--out", str(out)]
    assert main([*argv, "--source", "local", str(ffis / "ccd{ccd}"), *common]) == 0
    captured = capsys.readouterr()
    assert ScatterLightCube.read(captured.out.strip()).shape == (5, 16, 16)
    assert "Dask dashboard: http" in captured.err

    many = tmp_path / "many"
    argv = ["build-many", "--sectors", "1", "--cameras", "1", "--out", str(many)]
    argv += ["--source", "local", str(ffis / "ccd{ccd}"), *common]
    assert main([*argv, "--ccds", "1-2"]) == 1  # CCD 2 has no files
    captured = capsys.readouterr()
    assert "1 of 2 builds failed" in captured.err
    summary = Table.read(many / "build-many-summary.ecsv")
    assert list(summary["status"]) == ["built", "failed"]
    assert "ccd2 is neither a directory" in summary["error"][1]
    assert main([*argv, "--ccds", "1"]) == 0  # CCD 1 only: skipped now
    assert "skipped" in capsys.readouterr().out


def test_worker_memory_is_stated():
    # prefetch 1: two frames in flight per thread, plus working arrays and the context.
    coarse = dataclasses.replace(CONFIG, fine_bin=4)
    assert 0.18e9 < worker_memory(coarse) < 0.3e9
    assert worker_memory(coarse, threads=2) > 1.8 * worker_memory(coarse)
    # 2-px fine bins (the default) need ~0.13 GB more working arrays per task (tracemalloc).
    assert CONFIG.fine_bin == 2
    assert worker_memory(CONFIG) - worker_memory(coarse) > 0.12e9
    assert worker_memory(dataclasses.replace(CONFIG, fine_bin=0)) == worker_memory(coarse)
