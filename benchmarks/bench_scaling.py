"""Benchmark Dask scale-out of the cube builder: frames per second on 1 and 2 workers.

Run: ``python benchmarks/bench_scaling.py [--frames N] [--repeats R] [--quick]``.
Prints numbers; asserts nothing. About 3 minutes on 2 cores by default (most of
it writing the FFI files), ~1 minute with ``--quick``.

1. ``FFISimulator`` (sector 1, default star field) writes ``N`` (default 40)
   SPOC-like ``*ffic.fits`` files (~36 MB each) to a temporary folder: the same
   frames for every run, read with `LocalFFISource` (from the page cache: the
   files were just written; a cold disk or S3 read adds its own time, see below).
2. The same build, ``BuildConfig(pixel_bin=16, prefetch=1)``, runs

   * serially in this process (``build_cube``; numpy may use both cores),
   * on a ``LocalCluster`` of 1 worker process with 1 thread,
   * on a ``LocalCluster`` of 2 worker processes with 1 thread each,
   * the same with Dask's default worker environment
     (``MALLOC_TRIM_THRESHOLD_=65536``, which `dask_client` leaves out)

   (Dask workers run with one BLAS thread each). Workers are started and
   warmed up (imports) before timing. Each stage is timed on its own: the
   static scene (candidate levels + dark median), the frame stage (chunk tasks
   streaming into the work area: what scales with the number of frames), and
   the total including masks, assembly and compression on the client.
   The three setups run in turn, ``R`` times (default 3); the best of each
   is kept.
3. Frames per second of the frame stage, the parallel efficiency
   ``fps(2 workers) / (2 x fps(1 worker))``, the workers' peak RSS (it counts
   the pages of the memory-mapped FITS files read, which the kernel can drop), and the
   cost of one sector (16 CCDs) on a cluster estimated from the measured
   per-frame core time and the FFI sizes (35 MB per FFI; 1,200 / 3,700 /
   11,000 FFIs per CCD for the 30-min / 10-min / 200-s eras).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

FFI_MB = 35
ERAS = (("30-min FFIs (sectors 1-26)", 1200), ("10-min (27-55)", 3700), ("200-s (56-)", 11000))


def write_frames(directory: Path, n: int) -> list[Path]:
    from lk_scatterlight import simulate

    times = simulate.sector_times(1)
    sim = simulate.FFISimulator(time=times[np.linspace(0, times.size - 1, n).astype(int)], seed=7)
    return sim.write_ffis(directory)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm() -> float:
    import lk_scatterlight.builder.distributed  # noqa: F401
    import lk_scatterlight.builder.pipeline  # noqa: F401

    return _peak_rss_mb()


def timed_build(files: list[Path], config, client=None) -> dict:
    """One build with per-stage wall times [s]."""
    from lk_scatterlight.builder import pipeline
    from lk_scatterlight.builder.distributed import DaskRunner
    from lk_scatterlight.builder.runner import SerialRunner, run_build
    from lk_scatterlight.builder.sources import LocalFFISource

    source = LocalFFISource(files)
    times: dict[str, float] = {}
    base = SerialRunner if client is None else DaskRunner

    class Timed(base):
        def static_scene(self, *args, **kwargs):
            start = time.perf_counter()
            result = super().static_scene(*args, **kwargs)
            times["static"] = time.perf_counter() - start
            return result

        def process(self, source, todo, *args, **kwargs):
            start = time.perf_counter()
            super().process(source, todo, *args, **kwargs)
            times["frames"] = time.perf_counter() - start
            times["n"] = len(todo)

    runner = Timed() if client is None else Timed(client, source, retries=0)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        plan = pipeline.plan_build(source, config, work_dir=Path(work) / "w")
        try:
            run_build(source, config, plan, runner, progress=False)
        finally:
            runner.close()
        times["total"] = time.perf_counter() - start
    return times


def run_setups(files, config, repeats: int) -> list[dict]:
    """Serial, 1 worker, 2 workers (and 2 with malloc trim), in turn ``repeats`` times.

    Interleaving spreads any background load over all the setups alike.
    """
    from distributed import Client, LocalCluster

    from lk_scatterlight.builder.distributed import dask_client

    names = (
        "serial (this process)",
        "Dask 1 worker x 1 thread",
        "Dask 2 workers x 1 thread",
        "same, Dask's malloc trim",
    )
    best: dict[str, dict] = {}
    with (
        dask_client(workers=1, threads_per_worker=1, dashboard_address=":0") as one,
        dask_client(workers=2, threads_per_worker=1, dashboard_address=":0") as two,
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as trimmed,
    ):
        clients = (None, one, two, trimmed)
        for client in clients[1:]:
            client.run(_warm)
            logging.getLogger(__name__).info("dashboard %s", client.dashboard_link)
        for _ in range(repeats):
            for name, client in zip(names, clients, strict=True):
                t = timed_build(files, config, client)
                if name not in best or t["frames"] < best[name]["frames"]:
                    best[name] = t
        for name, client in zip(names, clients, strict=True):
            # The serial process also wrote the files: its RSS is not comparable.
            best[name]["rss"] = [] if client is None else sorted(client.run(_peak_rss_mb).values())
    results = []
    for name in names:
        r = best[name]
        r["name"] = name
        r["fps"] = r["n"] / r["frames"]
        results.append(r)
    return results


def report(results: list[dict], config, price: float) -> None:
    from lk_scatterlight.builder.distributed import worker_memory

    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (2 cores; >2 means contention)")
    print(
        f"\n{'setup':<28}{'static [s]':>11}{'frames [s]':>11}{'frames/s':>10}"
        f"{'total [s]':>10}  peak RSS [MB]"
    )
    for r in results:
        rss = ", ".join(f"{x:.0f}" for x in r["rss"]) or "-"
        print(
            f"{r['name']:<28}{r['static']:>11.2f}{r['frames']:>11.2f}{r['fps']:>10.2f}"
            f"{r['total']:>10.2f}  {rss}"
        )
    one = next(r for r in results if r["name"].startswith("Dask 1"))
    two = next(r for r in results if r["name"].startswith("Dask 2"))
    efficiency = two["fps"] / (2 * one["fps"])
    print(
        f"\nscaling 1 -> 2 workers: x{two['fps'] / one['fps']:.2f} frames/s, "
        f"parallel efficiency {100 * efficiency:.0f} %"
    )
    print(
        f"worker memory estimate (worker_memory, prefetch={config.prefetch}, 1 thread): "
        f"{worker_memory(config) / 1e6:.0f} MB of frames and arrays; measured peak RSS above "
        "includes Python and its imports"
    )
    per_frame = 1 / one["fps"]  # core-seconds per frame (1 worker = 1 core)
    print(
        f"\nper-frame core time (1 worker): {per_frame:.3f} s; one sector = 16 CCDs; "
        f"cost at an assumed {price:.3f} USD per core-hour, compute only"
    )
    header = f"{'era':<28}{'FFIs/CCD':>9}{'data [TB]':>10}{'core-h':>8}{'USD':>8}"
    print(header + f"{'h on 64 cores':>15}")
    for era, n in ERAS:
        core_h = 16 * n * per_frame / 3600
        hours = core_h / 64 / max(efficiency, 1e-3)
        print(
            f"{era:<28}{n:>9}{16 * n * FFI_MB / 1e6:>10.2f}{core_h:>8.1f}{core_h * price:>8.2f}"
            f"{hours:>15.2f}"
        )
    print(
        "Reads here come from the page cache. From S3 each worker thread downloads "
        f"{FFI_MB} MB per frame: at ~100 MB/s per stream that is ~0.35 s, more than the "
        "compute; raise prefetch (or threads per worker) so downloads overlap."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="FFI files to build from")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setup (best kept)")
    parser.add_argument("--quick", action="store_true", help="16 frames, 1 repeat")
    parser.add_argument(
        "--price", type=float, default=0.05, help="USD per core-hour for the cost estimate"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n, repeats = (16, 1) if args.quick else (args.frames, args.repeats)

    from lk_scatterlight.builder.pipeline import BuildConfig

    config = BuildConfig(pixel_bin=16, n_candidates=10, n_dark=5, prefetch=1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        files = write_frames(Path(tmp), n)
        print(f"wrote {len(files)} FFI files in {time.perf_counter() - start:.0f} s")
        print(f"load average before the builds: {os.getloadavg()[0]:.2f}")
        results = run_setups(files, config, repeats)
    report(results, config, args.price)


if __name__ == "__main__":
    main()
