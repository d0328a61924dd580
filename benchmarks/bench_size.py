"""Benchmark the compact (low-rank) cube encoding against the dense one.

For one simulated sector of each FFI cadence era -- sector 1 (1800 s), 30 (600 s)
and 60 (200 s), times from `lk_scatterlight.simulate.sector_times` -- this makes a
full-CCD cube with 16-pixel bins (128 x 128 bins, one plane per FFI) from the
default `~lk_scatterlight.simulate.ScatteredLightField` (seed 0) with Gaussian
noise of 0.05 e-/s per bin (stored as ``flux_err``; about the scatter of the mean
of a 16 x 16-pixel bin of a 200-s FFI at ~100 e-/s sky), and prints:

* the size of the dense float32 file and of the compact file (`ScatterLightCube.
  compress` with its defaults, then ``write``), and the rank chosen;
* the compression time;
* the RMS error the compression adds, against the dense cube and against the
  simulator's noiseless truth at the bin centres, in e-/s and as % of the
  scattered-light range (1st to 99th percentile of the truth); the dense cube's
  own error against the truth (its noise) for comparison;
* the time and traced peak memory of ``evaluate`` on a 25 x 25-pixel TPF grid
  (rows and columns 1000..1024) at 2-min cadence over the whole sector, from
  the compact file and from the dense file (read lazily), and for the 200-s
  sector also at 20-s cadence (~118,000 cadences: ~300 MB per output array);
* the time of ``evaluate_sum`` over the same grid (what the corrector calls).

Run: ``python benchmarks/bench_size.py [--sectors 1 30 60]``. Takes ~3 minutes
and up to ~6 GB of memory (the 200-s cube). Prints numbers; asserts nothing.
"""

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from lk_scatterlight import ScatterLightCube, simulate

NOISE = 0.05  # e-/s per bin
BIN = 16
TPF = 1000 + np.arange(25)  # rows and columns of the TPF grid


def timed(func, repeat=3):
    """Median wall time [s] of ``func()`` and its result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_memory(func) -> float:
    """tracemalloc peak [MB] of one call (numpy allocations are traced)."""
    tracemalloc.start()
    func()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def errors(field, compact, dense_flux, truth_stride=7):
    """RMS of compact - dense and compact - truth, dense - truth, and the truth range."""
    nt, nr, nc = compact.shape
    sums = np.zeros(3)
    sample = []
    for first in range(0, nt, 256):
        part = slice(first, first + 256)
        truth = field(compact.btjd[part], compact.row, compact.column).astype(np.float32)
        # At plane times and bin centres evaluation returns the stored values exactly.
        rec = compact.evaluate(compact.btjd[part], compact.row, compact.column).flux.value
        dense = dense_flux[part]
        for i, diff in enumerate((rec - dense, rec - truth, dense - truth)):
            sums[i] += np.einsum("ijk,ijk->", diff, diff, dtype=float)
        sample.append(truth[::truth_stride].ravel())
    p1, p99 = np.percentile(np.concatenate(sample), [1, 99])
    return np.sqrt(sums / (nt * nr * nc)), p99 - p1


def run(sector: int, folder: Path) -> None:
    cadence = simulate.ffi_cadence_seconds(sector)
    field = simulate.ScatteredLightField()
    start = time.perf_counter()
    cube = simulate.make_cube(field, sector=sector, pixel_bin=BIN, noise=NOISE)
    made = time.perf_counter() - start
    nt = cube.shape[0]
    print(
        f"\n== sector {sector}: {cadence:.0f}-s FFIs, {nt} planes x 128 x 128 bins "
        f"(simulated in {made:.0f} s)"
    )

    dense_path = cube.write(folder / f"dense_s{sector}.fits", compact=False)
    start = time.perf_counter()
    compact = cube.compress()
    seconds = time.perf_counter() - start
    compact_path = compact.write(folder / f"compact_s{sector}.fits")
    info = compact.compression
    print(f"dense file       {dense_path.stat().st_size / 1e6:8.1f} MB (float32 flux + flux_err)")
    print(
        f"compact file     {compact_path.stat().st_size / 1e6:8.2f} MB: rank {info.rank} "
        f"(tolerance {info.tolerance}, cap {info.max_rank}); compressed in {seconds:.1f} s"
    )

    (vs_dense, vs_truth, dense_truth), span = errors(field, compact, cube.flux.value)
    pct = 100 / span
    print(f"range p1..p99    {span:8.2f} e-/s")
    print(
        f"compact - dense  {vs_dense:8.4f} e-/s RMS = {vs_dense * pct:.4f} % of range "
        f"(max {info.residual_max:.3f}); noise RMS {info.noise_rms:.4f}"
    )
    print(
        f"compact - truth  {vs_truth:8.4f} e-/s RMS = {vs_truth * pct:.4f} % of range "
        f"(dense - truth: {dense_truth:.4f} e-/s = {dense_truth * pct:.4f} %)"
    )
    print(
        f"truncation RMS   {info.truncation_rms:8.4f} e-/s (added to flux_err); error model "
        f"within {100 * info.err_model_max:.2g} % of flux_err"
    )
    del cube

    from_compact = ScatterLightCube.read(compact_path)
    from_dense = ScatterLightCube.read(dense_path)  # lazy: only the bins the TPF needs
    assert type(from_dense._flux).__name__ == "_FitsImage"
    t0, t1 = from_dense.time_start.value[0], from_dense.time_stop.value[-1]
    steps = [120] + ([20] if cadence <= 200 else [])
    for step in steps:
        t = np.arange(t0, t1, step / 86400)
        print(f"evaluate 25x25 px x {t.size} cadences ({step} s):")
        results = {}
        for name, c in (("compact", from_compact), ("dense", from_dense)):
            repeat = 3 if t.size < 50_000 else 1
            wall, ev = timed(lambda c=c, t=t: c.evaluate(t, TPF, TPF, bounds="nan"), repeat)
            del ev
            peak = peak_memory(lambda c=c, t=t: c.evaluate(t, TPF, TPF, bounds="nan"))
            wall_sum, total = timed(lambda c=c, t=t: c.evaluate_sum(t, TPF, TPF, bounds="nan"))
            results[name] = total
            print(
                f"  from {name:8s} evaluate {wall:6.3f} s, peak {peak:6.0f} MB; "
                f"evaluate_sum {wall_sum:6.3f} s"
            )
        diff = results["compact"].flux - results["dense"].flux
        print(
            f"  aperture sum compact - dense: RMS {np.sqrt(np.nanmean(diff.value**2)):.4f} e-/s "
            f"(error of the sum: {np.nanmedian(results['dense'].flux_err.value):.4f} dense, "
            f"{np.nanmedian(results['compact'].flux_err.value):.4f} compact)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sectors", type=int, nargs="+", default=[1, 30, 60])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for sector in args.sectors:
            run(sector, Path(folder))


if __name__ == "__main__":
    main()
