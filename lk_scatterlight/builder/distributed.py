"""Cube builds on a Dask cluster: one build scaled out, or many builds on one cluster.

`build_cube_dask` (also `build_cube(..., client=client)`) runs the stages of
`lk_scatterlight.builder.pipeline` (the same functions as the serial build, so
the cube is the same) as Dask tasks:

1. **Static scene.** One task per candidate frame returns its brightness level
   (`~lk_scatterlight.builder.pipeline.frame_level`); one task reads the
   ``n_dark`` darkest and returns their median
   (`~lk_scatterlight.builder.pipeline.combine_dark`). The client keeps the
   static scene in the work area (resume) and makes the masks
   (`~lk_scatterlight.builder.pipeline.make_context`).
2. **Frames.** The source, the static scene and the context (masks, ~57 MB)
   are futures held on the workers, each computed once (from the previous one)
   and copied to every worker that needs it; if a worker dies Dask recomputes
   what it held. The good frames still to do are cut into chunks of at most
   ``config.chunk`` frames (fewer when there are few frames per worker
   thread: at least two chunks per thread), spread round-robin over the
   worker threads (a loose preference: idle or new workers may steal them).
   Each chunk is a task (`~lk_scatterlight.builder.pipeline.process_chunk`)
   that reads its frames on the worker and returns only their binned values,
   errors, pixel counts and strap sums (~0.16 MB per frame at 16-px bins).
   No process ever holds more than a few full-resolution frames.
3. **Checkpoints.** As chunks complete (``as_completed``) the client writes
   them into the build's memory-mapped work area and flushes it, so a killed
   worker costs only its running chunk (Dask re-runs it elsewhere) and an
   interrupted build resumes, serially or on a cluster, from the finished
   chunks.
4. **Planes.** With ``time_bin`` the averaging of frames into planes is a
   stage of its own: batches of planes are binned on the workers
   (`~lk_scatterlight.builder.pipeline.bin_planes`). The client assembles,
   compresses and writes the cube atomically.

**Worker memory.** A task holds at most ``prefetch + 1`` frames (being read or
processed, ~35 MB each with their errors) plus ~0.1 GB of per-frame working
arrays (~0.24 GB with the default 2-px fine bins), whatever the chunk length;
a worker adds the context (~57 MB) and the source (`worker_memory` adds it up:
~0.35 GB for a one-thread worker with ``prefetch = 1`` and 2-px fine bins,
~0.22 GB with 4-px ones). The dark-frame task holds
the ``n_dark`` dark frames (~0.17 GB for five). Limit concurrency with the workers' thread count
(``lk-scatterlight`` starts local workers with one thread each) or with Dask
``resources``. Workers should start without Dask's default
``MALLOC_TRIM_THRESHOLD_`` (`dask_client` does so for local clusters): with it
a frame takes about twice as long.

`build_many` schedules the builds of many sectors/cameras/CCDs on one cluster,
skips those whose cube already exists and reads, resumes interrupted ones and
writes a summary table; `dask_client` starts a local cluster or connects to a
scheduler.

Sources must pickle: `~lk_scatterlight.builder.sources.LocalFFISource` holds
paths (the workers must see the same files), `SimulatedFFISource` its
simulator (sent without its rendered scene, which each worker renders once),
`~lk_scatterlight.builder.tesscube_source.TessCubeSource` its frame list (the
worker imports tesscube on its first read, with the client's lkspacecraft
test/offline mode).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ccd import N_SCIENCE
from ..exceptions import ScatterLightError
from ..utils import atomic_write
from .assembly import bin_planes
from .config import BuildConfig
from .framepass import ChunkResult, FrameContext, make_context, process_chunk
from .plan import plan_build, source_region
from .runner import run_build
from .scene import candidate_frames, combine_dark, frame_level, select_dark

if TYPE_CHECKING:  # pragma: no cover
    from astropy.table import Table
    from distributed import Client

    from ..cube import ScatterLightCube
    from .sources import FFISource

__all__ = [
    "build_cube_dask",
    "build_many",
    "dask_client",
    "worker_memory",
    "write_summary",
    "DaskRunner",
    "FRAME_BYTES",
    "SUMMARY_COLUMNS",
]

log = logging.getLogger(__name__)

#: Bytes of one frame in flight: float32 flux and error of 2048 x 2048 pixels.
FRAME_BYTES = 2 * N_SCIENCE * N_SCIENCE * 4
#: Working arrays of `process_frame` on top of the frames (~100 MB measured with tracemalloc
#: before the fine layer; 45-61 MB with 4-px fine bins, 23 MB without).
_WORKING_BYTES = 110 * 2**20
#: What fine bins of at most 2 px add to them (`process_frame`'s tracemalloc peak on
#: simulated structured and smooth frames: 164-188 MB with 2-px bins, 45-61 MB with 4-px).
_FINE_2PX_BYTES = 130 * 2**20
#: Per-frame data sent with one time-binning task at most [bytes] (Dask warns above 10 MB).
_BIN_BATCH_BYTES = 4 * 2**20
#: Dask setting that makes worker processes start with ``MALLOC_TRIM_THRESHOLD_`` set.
_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
#: Columns of the `build_many` summary table.
SUMMARY_COLUMNS = ("sector", "camera", "ccd", "status", "path", "frames", "seconds", "error")


def worker_memory(config: BuildConfig, threads: int = 1) -> int:
    """Peak memory of a worker running frame tasks, estimated [bytes].

    ``threads x ((prefetch + 1) frames x 33.5 MB + working arrays) + context``;
    the source and Python itself come on top. The working arrays are ~0.11 GB,
    ~0.24 GB with fine bins of 2 px or less (the builder's default).

    Parameters
    ----------
    config : `~lk_scatterlight.builder.pipeline.BuildConfig`
    threads : int
        Threads (concurrent tasks) of the worker.

    Returns
    -------
    nbytes : int
    """
    working = _WORKING_BYTES + (_FINE_2PX_BYTES if 0 < config.fine_bin <= 2 else 0)
    per_task = (config.prefetch + 1) * FRAME_BYTES + working
    context = N_SCIENCE * N_SCIENCE * (4 + 4 + 1)
    return int(threads * per_task + context)


def _check_portable(source: FFISource) -> None:
    import cloudpickle

    try:
        cloudpickle.dumps(source)
    except Exception as exc:
        msg = (
            f"{source!r} cannot be sent to the Dask workers ({type(exc).__name__}: {exc}); "
            "a source must pickle (hold paths or ids, not open files or connections)."
        )
        raise ScatterLightError(msg) from exc


# ---------------------------------------------------------------------- tasks
def _source_task(source: FFISource) -> FFISource:
    """The source, held on a worker (recomputed if that worker dies)."""
    return source


def _level_task(source: FFISource, index: int) -> float:
    flux, _ = source.read(index)
    return frame_level(flux)


def _dark_task(source: FFISource, indices: list[int], prefetch: int) -> np.ndarray:
    fluxes = [flux for _, flux, _ in source.iter_read(indices, prefetch=prefetch)]
    return combine_dark(fluxes)


def _chunk_task(
    source: FFISource, indices: list[int], context: FrameContext, prefetch: int
) -> ChunkResult:
    return process_chunk(source, indices, context, prefetch=prefetch)


class DaskRunner:
    """The stages of one build as Dask tasks (used by `build_cube_dask`).

    The source, the static scene and the context are futures held on the
    workers, each computed once from the previous one and sent to every worker
    that needs it; nothing is scattered, so if a worker dies Dask recomputes
    what it held (the static scene from the dark frames) instead of losing it.

    Parameters
    ----------
    client : ``distributed.Client``
    source : `~lk_scatterlight.builder.sources.FFISource`
    retries : int
        Re-runs of a task that raised (a task whose worker died is re-run by
        Dask up to ``distributed.scheduler.allowed-failures`` times anyway).
    resources : dict, optional
        Dask resources each frame-reading task needs, e.g. ``{"frames": 1}``
        with workers started with ``--resources frames=2``.
    """

    def __init__(
        self,
        client: Client,
        source: FFISource,
        retries: int = 2,
        resources: dict[str, float] | None = None,
    ):
        self.client = client
        self.source = source
        self.retries = int(retries)
        self.resources = resources
        self.prefix = (
            f"lksl-s{source.sector:04d}-{source.camera}-{source.ccd}-{uuid.uuid4().hex[:8]}"
        )
        self._held: dict[str, Any] = {}

    # -- helpers
    def _submit(
        self, func: Callable, *args: Any, key: str, frames: bool = True, worker: str | None = None
    ) -> Any:
        return self.client.submit(
            func,
            *args,
            key=f"{self.prefix}-{key}",
            pure=False,
            retries=self.retries,
            resources=self.resources if frames else None,
            workers=None if worker is None else [worker],
            allow_other_workers=worker is not None,
        )

    def _spread(self, ntasks: int) -> list[str | None]:
        """A preferred worker for each of ``ntasks`` tasks, round-robin over worker threads.

        Dask would otherwise queue every task that needs the source and context on the
        worker that holds them; the preference is loose, so a task still runs
        elsewhere if that worker dies, and idle or new workers can steal it.
        """
        slots = [
            address
            for address, nthreads in sorted(self.client.nthreads().items())
            for _ in range(int(nthreads))
        ]
        if not slots:
            return [None] * ntasks
        return [slots[k % len(slots)] for k in range(ntasks)]

    def _hold(self, name: str, make: Callable[[], Any]) -> Any:
        """A future kept for the whole build (source, static scene, context)."""
        if name not in self._held:
            self._held[name] = make()
        return self._held[name]

    @property
    def source_future(self) -> Any:
        """The source, on the cluster."""

        def make() -> Any:
            _check_portable(self.source)
            return self._submit(_source_task, self.source, key="source", frames=False)

        return self._hold("source", make)

    def nthreads(self) -> int:
        """Worker threads of the cluster now (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    # -- stages
    def static_scene(
        self, source: FFISource, good: np.ndarray, config: BuildConfig, progress: bool
    ) -> tuple[np.ndarray, list[int]]:
        """Frame levels as one task per candidate, then the dark median as one task."""
        from distributed import as_completed
        from tqdm.auto import tqdm

        candidates = candidate_frames(good, config.n_candidates).tolist()
        futures = {
            self._submit(_level_task, self.source_future, i, key=f"level-{i}", worker=w): i
            for i, w in zip(candidates, self._spread(len(candidates)), strict=True)
        }
        levels: dict[int, float] = {}
        try:
            with tqdm(
                total=len(candidates), desc="Static scene", unit="frame", disable=not progress
            ) as bar:
                for future in as_completed(futures):
                    levels[futures[future]] = future.result()
                    bar.update()
        finally:
            self.client.cancel(list(futures))
        dark = select_dark(candidates, [levels[i] for i in candidates], config.n_dark)
        static_future = self._static_future(dark, config)
        self._context_future(dark, config)  # made on the cluster while the client makes its own
        return static_future.result(), dark

    def _static_future(self, dark: Sequence[int], config: BuildConfig) -> Any:
        return self._hold(
            "static",
            lambda: self._submit(
                _dark_task,
                self.source_future,
                [int(i) for i in dark],
                config.prefetch,
                key="static-scene",
            ),
        )

    def _context_future(self, dark: Sequence[int], config: BuildConfig) -> Any:
        static_future = self._static_future(dark, config)
        return self._hold(
            "context",
            lambda: self._submit(
                make_context,
                static_future,
                config,
                source_region(self.source, config),
                key="context",
                frames=False,
            ),
        )

    def chunk_size(self, ntodo: int, config: BuildConfig) -> int:
        """Frames per task: ``config.chunk`` at most, and at least two tasks per thread."""
        return max(1, min(config.chunk, math.ceil(ntodo / (2 * self.nthreads()))))

    def process(
        self,
        source: FFISource,
        todo: list[int],
        context: FrameContext,
        dark: Sequence[int],
        work: Any,
        config: BuildConfig,
        bar: Any,
    ) -> None:
        """Chunk tasks; each finished chunk is checkpointed into the work area.

        The workers' context is made on the cluster from the static-scene
        future (on a resumed build, the static scene is first recomputed
        from the recorded dark frames: the same frames give the same scene).
        """
        from distributed import as_completed

        if not todo:
            return
        size = self.chunk_size(len(todo), config)
        chunks = [todo[k : k + size] for k in range(0, len(todo), size)]
        log.info(
            "%s: %d frames in %d tasks of up to %d frames on %d worker threads; "
            "up to %d frames (%.0f MB) in flight per task, context %.0f MB per worker",
            source.description,
            len(todo),
            len(chunks),
            size,
            self.nthreads(),
            config.prefetch + 1,
            (config.prefetch + 1) * FRAME_BYTES / 1e6,
            context.nbytes / 1e6,
        )
        context_future = self._context_future(dark, config)
        futures = {
            self._submit(
                _chunk_task,
                self.source_future,
                chunk,
                context_future,
                config.prefetch,
                key=f"chunk-{chunk[0]}-{chunk[-1]}",
                worker=worker,
            ): chunk
            for chunk, worker in zip(chunks, self._spread(len(chunks)), strict=True)
        }
        errors: list[tuple[list[int], BaseException]] = []
        try:
            for future in as_completed(futures):
                chunk = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # keep the other chunks, then raise
                    log.error(
                        "%s: frames %d-%d failed: %s: %s",
                        source.description,
                        chunk[0],
                        chunk[-1],
                        type(exc).__name__,
                        exc,
                    )
                    errors.append((chunk, exc))
                    continue
                work.store_chunk(result)
                bar.update(len(result))
        finally:
            self.client.cancel(list(futures))
        if errors:
            chunk, exc = errors[0]
            nframes = sum(len(c) for c, _ in errors)
            log.error(
                "%s: %d of %d chunks (%d frames) failed; the others are checkpointed in %s "
                "and a new run resumes from them.",
                source.description,
                len(errors),
                len(chunks),
                nframes,
                work.folder,
            )
            raise exc

    def bin_planes(
        self, value: np.ndarray, error: np.ndarray, groups: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`~lk_scatterlight.builder.pipeline.bin_planes` over batches of planes, as tasks.

        Each task carries its frames' binned values (a few MB), so it can be
        re-run anywhere if its worker dies.
        """
        per_frame = max(1, value[:1].nbytes + error[:1].nbytes)
        batch_frames = max(1, _BIN_BATCH_BYTES // per_frame)
        batches: list[list[np.ndarray]] = [[]]
        count = 0
        for group in groups:
            if count + len(group) > batch_frames and batches[-1]:
                batches.append([])
                count = 0
            batches[-1].append(group)
            count += len(group)
        futures = []
        for k, batch in enumerate(batches):
            index = np.concatenate(batch)
            local, start = [], 0
            for group in batch:
                local.append(np.arange(start, start + len(group)))
                start += len(group)
            futures.append(
                self._submit(
                    bin_planes, value[index], error[index], local, key=f"planes-{k}", frames=False
                )
            )
        try:
            results = self.client.gather(futures)
        finally:
            self.client.cancel(futures)
        flux = np.concatenate([r[0] for r in results])
        flux_err = np.concatenate([r[1] for r in results])
        return flux, flux_err

    def close(self) -> None:
        """Release the source, static scene and context held on the cluster."""
        if self._held:
            with contextlib.suppress(Exception):
                self.client.cancel(list(self._held.values()))
        self._held.clear()


def build_cube_dask(
    source: FFISource,
    config: BuildConfig | None = None,
    *,
    client: Client,
    out: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    retries: int = 2,
    resources: dict[str, float] | None = None,
) -> ScatterLightCube:
    """Build one cube with its frame work spread over a Dask cluster.

    The same stages and per-frame code as
    `~lk_scatterlight.builder.pipeline.build_cube` (see this module's
    description), so the cube equals the serial build's; the work folder is
    the same too, so a build interrupted on a cluster resumes serially and the
    other way round.

    Parameters
    ----------
    source : `~lk_scatterlight.builder.sources.FFISource`
        Must pickle; the workers read the frames themselves.
    config : `~lk_scatterlight.builder.pipeline.BuildConfig`, optional
        ``prefetch`` is the read-ahead of each task (frames in flight per
        worker thread: ``prefetch + 1``); ``chunk`` the most frames per task
        (and per checkpoint).
    client : ``distributed.Client``
    out, work_dir, progress, overwrite
        As for `~lk_scatterlight.builder.pipeline.build_cube`.
    retries : int
        Re-runs of a task that raised.
    resources : dict, optional
        Dask resources each frame-reading task needs.

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`

    Raises
    ------
    ScatterLightError
        If no frame is usable or the source cannot be sent to the workers.
    Exception
        The first error of a chunk that failed after its retries (the other
        chunks are checkpointed first).
    """
    config = config or BuildConfig()
    plan = plan_build(source, config, out, work_dir, overwrite)
    log.info("%s: building on Dask, dashboard %s", source.description, client.dashboard_link)
    _check_worker_malloc(client)
    runner = DaskRunner(client, source, retries=retries, resources=resources)
    try:
        return run_build(source, config, plan, runner, progress)
    finally:
        runner.close()


def _malloc_trim_threshold() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def _check_worker_malloc(client: Client) -> None:
    """Log a hint if workers run with ``MALLOC_TRIM_THRESHOLD_`` set (slower frame work)."""
    try:
        values = client.run(_malloc_trim_threshold)
    except Exception:  # a hint only: never fail a build for it
        return
    trimmed = sorted(str(v) for v in values.values() if v is not None)
    if trimmed:
        log.info(
            "%d of %d Dask workers run with MALLOC_TRIM_THRESHOLD_=%s, which makes the frame "
            "work up to 2x slower; start workers with the Dask setting %s set to null "
            "(see docs/building.rst).",
            len(trimmed),
            len(values),
            trimmed[0],
            _TRIM_KEY,
        )


# ---------------------------------------------------------------------- clusters
@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | float | None = "auto",
    dashboard_address: str | None = ":8787",
) -> Iterator[Client]:
    """A Dask client: connected to ``scheduler``, or on a new local cluster of processes.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``) or a scheduler file.
    workers : int, optional
        Worker processes of the local cluster (default: one per core).
    threads_per_worker : int
        Threads (concurrent frame tasks) per local worker.
    memory_limit : str or float, optional
        Memory limit per local worker (Dask's ``"auto"``: the machine's memory
        shared evenly).
    dashboard_address : str, optional
        Where the local cluster serves its dashboard (``":0"``: any free port).

    Yields
    ------
    client : ``distributed.Client``
        Closed (with its local cluster) on exit.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler is not None:
        if Path(scheduler).is_file():
            client = Client(scheduler_file=scheduler)
        else:
            client = Client(scheduler)
    else:
        import dask

        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
        # adaptive mmap threshold: every 16 MB temporary of the frame work is then a fresh
        # mmap, and a frame takes ~2x longer (benchmarks/bench_scaling.py).
        with dask.config.set({_TRIM_KEY: None}):
            cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=threads_per_worker,
                processes=True,
                memory_limit=memory_limit,
                dashboard_address=dashboard_address,
            )
        client = Client(cluster)
    log.info(
        "Dask: %d workers, %d threads; dashboard %s",
        len(client.nthreads()),
        sum(client.nthreads().values()),
        client.dashboard_link,
    )
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------- many builds
def _readable(path: Path) -> bool:
    from ..cube import ScatterLightCube

    try:
        ScatterLightCube.read(path)
    except Exception as exc:
        log.warning("%s exists but does not read (%s); building it again.", path, exc)
        return False
    return True


def write_summary(rows: Sequence[dict], path: str | os.PathLike) -> Table:
    """Write the `build_many` summary atomically (ECSV, or CSV for a ``.csv`` name).

    Parameters
    ----------
    rows : sequence of dict
        One per build, with the keys of `SUMMARY_COLUMNS`.
    path : path-like

    Returns
    -------
    table : `~astropy.table.Table`
    """
    from astropy.table import Table

    path = Path(path)
    table = Table(
        rows=[[row[c] for c in SUMMARY_COLUMNS] for row in rows],
        names=SUMMARY_COLUMNS,
        dtype=(int, int, int, str, str, int, float, str),
    )
    table["seconds"].format = ".1f"
    fmt = "ascii.csv" if path.suffix.lower() == ".csv" else "ascii.ecsv"
    with atomic_write(path) as tmp:
        table.write(tmp, format=fmt, overwrite=True)
    return table


def build_many(
    targets: Iterable[tuple[int, int, int]],
    make_source: Callable[[int, int, int], FFISource],
    client: Client,
    out: str | os.PathLike,
    config: BuildConfig | None = None,
    summary: str | os.PathLike | None = None,
    concurrent: int = 2,
    progress: bool = True,
    retries: int = 2,
) -> Table:
    """Build the cubes of many sectors/cameras/CCDs on one Dask cluster.

    Each target's cube goes to ``out`` under its standard name
    (`~lk_scatterlight.registry.cube_filename`). A target whose cube exists and
    reads is skipped; an interrupted one resumes from its work folder (next to
    the cube). Up to ``concurrent`` builds share the cluster at once, so one
    build's client-side steps (masks, compression) overlap another's frame
    tasks. A failing build (its source cannot be made, or its frames fail) is
    recorded and the others go on.

    Parameters
    ----------
    targets : iterable of (int, int, int)
        (sector, camera, CCD) to build.
    make_source : callable
        ``make_source(sector, camera, ccd) -> FFISource``; called in the
        build's own thread, so a failure only fails that build.
    client : ``distributed.Client``
    out : path-like
        Output folder (created).
    config : `~lk_scatterlight.builder.pipeline.BuildConfig`, optional
    summary : path-like, optional
        Summary table (default ``out/build-many-summary.ecsv``; ``.csv`` for
        CSV), rewritten atomically after every finished target.
    concurrent : int
        Builds at once.
    progress : bool
        Show a progress bar over builds (and over frames with one build at once).
    retries : int
        Re-runs of a task that raised.

    Returns
    -------
    summary : `~astropy.table.Table`
        One row per target, in the order given: ``sector``, ``camera``, ``ccd``,
        ``status`` (``built``, ``skipped`` or ``failed``), ``path``, ``frames``
        (frames used, -1 if unknown), ``seconds`` and ``error`` (the failure's
        type and message, empty otherwise).
    """
    from tqdm.auto import tqdm

    from ..registry import cube_filename

    config = config or BuildConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = Path(summary) if summary is not None else out / "build-many-summary.ecsv"
    targets = [(int(s), int(c), int(d)) for s, c, d in targets]
    if len(set(targets)) != len(targets):
        msg = "build_many: the same sector/camera/CCD is listed twice."
        raise ValueError(msg)

    def one(target: tuple[int, int, int]) -> dict:
        sector, camera, ccd = target
        path = out / cube_filename(sector, camera, ccd, config.pixel_bin)
        row = {
            "sector": sector,
            "camera": camera,
            "ccd": ccd,
            "status": "skipped",
            "path": str(path),
            "frames": -1,
            "seconds": 0.0,
            "error": "",
        }
        start = time.perf_counter()
        if path.exists() and _readable(path):
            log.info("s%04d %d-%d: %s exists; skipped", sector, camera, ccd, path)
            return row
        try:
            source = make_source(sector, camera, ccd)
            cube = build_cube_dask(
                source,
                config,
                client=client,
                out=path,
                overwrite=path.exists(),
                progress=progress and concurrent == 1,
                retries=retries,
            )
            row["status"] = "built"
            row["frames"] = int(cube.meta.get("frames_used", -1))
        except Exception as exc:  # one failure never stops the other builds
            log.error("s%04d %d-%d failed: %s: %s", sector, camera, ccd, type(exc).__name__, exc)
            row["status"] = "failed"
            row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        row["seconds"] = time.perf_counter() - start
        return row

    rows: dict[tuple[int, int, int], dict] = {}
    pool = cf.ThreadPoolExecutor(max(1, concurrent), thread_name_prefix="lksl-build")
    finished = False
    try:
        with tqdm(total=len(targets), desc="Builds", unit="cube", disable=not progress) as bar:
            futures = {pool.submit(one, target): target for target in targets}
            for future in cf.as_completed(futures):
                rows[futures[future]] = future.result()
                write_summary([rows[t] for t in targets if t in rows], summary_path)
                bar.update()
        finished = True
    finally:
        # Interrupted (Ctrl-C): start no further builds; the running ones stop when the
        # client closes, and resume from their work folders next time.
        pool.shutdown(wait=finished, cancel_futures=True)
    table = write_summary([rows[t] for t in targets], summary_path)
    counts = {s: int(np.sum(table["status"] == s)) for s in ("built", "skipped", "failed")}
    log.info(
        "%d built, %d skipped, %d failed; summary in %s",
        counts["built"],
        counts["skipped"],
        counts["failed"],
        summary_path,
    )
    table.meta["summary_path"] = str(summary_path)
    return table
