"""Benchmark `ScatterLightCube.evaluate` on a TPF-sized grid.

Builds a full-CCD cube of 128 x 128 bins of 16 px and 330 planes of 2 h (two
orbits of 165 planes separated by a 1-day gap, ~28 days in all), writes it to a
temporary file and reads it back lazily, then evaluates a 25 x 25-pixel TPF grid
(rows and columns 1000..1024) at 1,200 and 12,000 cadences. Prints the median
wall time and the tracemalloc peak of:

1. ``cube.evaluate`` on the cube read from the file (lazy: only the bins the
   TPF needs are read),
2. ``cube.evaluate`` on the same cube in memory,
3. a naive reference: a `scipy.interpolate.RectBivariateSpline` (kx=ky=3) per
   plane over the whole CCD, evaluated on the TPF grid, then one
   `scipy.interpolate.interp1d` per pixel in time (flux only, no errors, no gap
   handling: it does less work than ``evaluate``),
4. a naive per-cadence reference: for every TPF cadence, the two cube planes
   around it are blended linearly and a `RectBivariateSpline` of the blended
   plane is evaluated on the TPF grid (one spline per cadence, as a loop over
   the TPF's frames would do),
5. allocating and filling the two float64 (ntime, 25, 25) outputs, the floor
   for any method that returns flux and error per pixel and cadence.

Run: ``python benchmarks/bench_evaluate.py``. Prints numbers; asserts nothing.
"""

import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy.interpolate import RectBivariateSpline, interp1d

from lk_scatterlight import ScatterLightCube

NBIN, BIN = 128, 16
ROW_CENTRES = 8.5 + BIN * np.arange(NBIN)
COLUMN_CENTRES = 52.5 + BIN * np.arange(NBIN)
PLANE = 2 / 24  # d
NPLANE_ORBIT = 165
ORBIT_STARTS = (1354.0, 1354.0 + NPLANE_ORBIT * PLANE + 1.0)  # a 1-day gap between orbits
TPF_ROWS = 1000 + np.arange(25)
TPF_COLUMNS = 1000 + np.arange(25)


def build_cube() -> ScatterLightCube:
    """A smooth, realistic-looking field: Earth glow rising at each orbit start and end,
    a glow spot moving across the CCD, a gradient and a constant floor [e-/s per pixel]."""
    t = np.concatenate([t0 + PLANE * (np.arange(NPLANE_ORBIT) + 0.5) for t0 in ORBIT_STARTS])
    since = np.concatenate([PLANE * (np.arange(NPLANE_ORBIT) + 0.5)] * 2)  # into the orbit
    until = NPLANE_ORBIT * PLANE - since
    earth = 300 * np.exp(-since / 1.2) + 150 * np.exp(-until / 0.8)
    r = (ROW_CENTRES[None, :, None] - 1024.5) / 1024
    c = (COLUMN_CENTRES[None, None, :] - 1068.5) / 1024
    spot_r = (np.cos(2 * np.pi * since / 13.7) * 0.8)[:, None, None]
    spot_c = (np.sin(2 * np.pi * since / 13.7) * 0.8)[:, None, None]
    spot = np.exp(-((r - spot_r) ** 2 + (c - spot_c) ** 2) / 0.5)
    flux = earth[:, None, None] * (0.6 * spot + 0.4) * (1 + 0.2 * r - 0.1 * c) + 20
    flux_err = 0.01 * flux + 0.3
    return ScatterLightCube.from_arrays(
        2,
        1,
        1,
        t,
        ROW_CENTRES,
        COLUMN_CENTRES,
        flux.astype(np.float32),
        flux_err.astype(np.float32),
        meta={"creator": "bench_evaluate", "note": "synthetic"},
    )


def cadences(cube: ScatterLightCube, n: int) -> np.ndarray:
    """n cadences, half per orbit, between the orbit's first and last plane centre."""
    t = cube.btjd
    first = t[:NPLANE_ORBIT], t[NPLANE_ORBIT:]
    return np.concatenate([np.linspace(o[0], o[-1], n // 2) for o in first])


def naive(flux: np.ndarray, centres_t: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Frame-by-frame bicubic spline, then per-pixel linear interpolation in time."""
    frames = np.empty((flux.shape[0], TPF_ROWS.size, TPF_COLUMNS.size))
    for i, plane in enumerate(flux):
        spline = RectBivariateSpline(ROW_CENTRES, COLUMN_CENTRES, plane, kx=3, ky=3)
        frames[i] = spline(TPF_ROWS, TPF_COLUMNS)
    out = np.empty((t.size, TPF_ROWS.size, TPF_COLUMNS.size))
    for j in range(TPF_ROWS.size):
        for k in range(TPF_COLUMNS.size):
            out[:, j, k] = interp1d(centres_t, frames[:, j, k])(t)
    return out


def naive_per_cadence(flux: np.ndarray, centres_t: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each cadence: blend the two planes around it, then a bicubic spline of the result."""
    right = np.clip(np.searchsorted(centres_t, t), 1, centres_t.size - 1)
    left = right - 1
    w = np.clip((t - centres_t[left]) / (centres_t[right] - centres_t[left]), 0, 1)
    out = np.empty((t.size, TPF_ROWS.size, TPF_COLUMNS.size))
    for i in range(t.size):
        plane = (1 - w[i]) * flux[left[i]] + w[i] * flux[right[i]]
        spline = RectBivariateSpline(ROW_CENTRES, COLUMN_CENTRES, plane, kx=3, ky=3)
        out[i] = spline(TPF_ROWS, TPF_COLUMNS)
    return out


def fill(nt: int):
    """The floor: allocate and fill float64 flux and error outputs."""
    flux = np.empty((nt, TPF_ROWS.size, TPF_COLUMNS.size))
    flux.fill(1.0)
    err = np.empty_like(flux)
    err.fill(0.1)
    return flux, err


def measure(func, repeats: int) -> tuple[float, float]:
    """Median wall time [s] over ``repeats`` runs, and tracemalloc peak [MB] of one more."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    func()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20


def main() -> None:
    t0 = time.perf_counter()
    cube = build_cube()
    with tempfile.TemporaryDirectory() as tmp:
        path = cube.write(Path(tmp) / "bench_cube.fits")
        on_disk = ScatterLightCube.read(path)
        size = path.stat().st_size / 2**20
        print(
            f"cube {cube.shape} (time, row, column), file {size:.1f} MB, built in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        print(f"read lazily: {type(on_disk._flux).__name__ == '_FitsImage'}")
        flux = np.asarray(cube.flux.value, dtype=float)
        for nt, repeats, naive_repeats in ((1_200, 15, 3), (12_000, 7, 1)):
            t = cadences(cube, nt)
            # the two cubes agree, and the naive reference is close (different spatial kernels)
            ours = on_disk.evaluate(t, TPF_ROWS, TPF_COLUMNS)
            assert np.array_equal(ours.flux, cube.evaluate(t, TPF_ROWS, TPF_COLUMNS).flux)
            reference = naive(flux, cube.btjd, t)
            rel = np.max(np.abs(ours.flux.value / reference - 1))
            results = {
                "evaluate (file, lazy)": measure(
                    lambda t=t: on_disk.evaluate(t, TPF_ROWS, TPF_COLUMNS), repeats
                ),
                "evaluate (in memory)": measure(
                    lambda t=t: cube.evaluate(t, TPF_ROWS, TPF_COLUMNS), repeats
                ),
                "naive spline + interp1d": measure(
                    lambda t=t: naive(flux, cube.btjd, t), naive_repeats
                ),
                "naive per cadence": measure(lambda t=t: naive_per_cadence(flux, cube.btjd, t), 1),
                "fill outputs only": measure(lambda nt=nt: fill(nt), repeats),
            }
            print(f"\n{nt} cadences x 25 x 25 pixels (naive differs by <= {rel:.1e} relative)")
            print(f"  {'method':26s} {'median [ms]':>12s} {'peak [MB]':>10s}")
            for name, (seconds, peak) in results.items():
                print(f"  {name:26s} {1e3 * seconds:12.2f} {peak:10.1f}")
            naive_s = results["naive spline + interp1d"][0]
            per_cadence_s = results["naive per cadence"][0]
            fill_s = results["fill outputs only"][0]
            for name in ("evaluate (file, lazy)", "evaluate (in memory)"):
                ours_s = results[name][0]
                print(
                    f"  {name}: naive/ours = {naive_s / ours_s:6.1f}x, "
                    f"per-cadence naive/ours = {per_cadence_s / ours_s:7.1f}x, "
                    f"ours/fill = {ours_s / fill_s:5.1f}x"
                )
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
