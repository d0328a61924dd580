"""Time the fine layer's two Keys products per frame, dense against banded.

Run: ``python benchmarks/bench_fine_products.py [--repeat N]`` (from the repository
root; set ``OPENBLAS_NUM_THREADS=1``). Prints CPU medians; asserts nothing. About
half a minute.

Every frame of a build with a fine layer evaluates the coarse plane twice with
the cube's Keys kernel: ``fine_residual`` takes its mean over each fine bin
(``to_fine @ coarse @ to_fine.T``, float32, 1024 x 1024 fine bins of 2 px from
128 x 128 bins of 16 px) and ``_tile_misfit`` calibrates the pixels' noise on
every 8th row (``misfit._calibration_plane``: 256 rows x 2048 columns,
float64). Each fine bin or pixel takes 4 coarse bins per axis, so the weight
matrices are banded. These ways are timed for each product, CPU time
(``time.process_time``) of one call, median of ``--repeat``:

``dense``
    as the builder does it (dense matrix products; the pixels' Keys weights
    cached, `misfit._calibration_weights`);
``dense, weights each call``
    (the calibration rows only) the same with the pixels' Keys weights made on
    every call, as the builder did before;
``sparse``
    the weight matrices as ``scipy.sparse`` CSR matrices (the pixels' weights
    made once);
``gather``
    separable: per axis, the sum over the 4 taps of each weight times the
    gathered coarse value (``np.take``), the weights made once.

Each line also prints the largest difference from ``dense`` [e-/s] on a plane
of ~100 e-/s, against the smallest noise of a fine bin (~0.5 e-/s): what the
order of the sums changes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import sparse

from lk_scatterlight import interpolate
from lk_scatterlight.builder.fine import make_fine_context
from lk_scatterlight.builder.fine.misfit import _MISFIT_ROWS, _calibration_plane

N, COARSE, FINE = 2048, 16, 2  # CCD side, coarse and fine bin [px]


def cpu_median(func, repeat: int) -> float:
    """Median CPU time [ms] of ``func()`` over ``repeat`` calls (after one warm-up)."""
    func()
    times = []
    for _ in range(repeat):
        start = time.process_time()
        func()
        times.append(time.process_time() - start)
    return 1e3 * float(np.median(times))


def taps(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first grid index and the 4 weights from it of each row of a Keys weight matrix."""
    first = np.clip(np.argmax(weights != 0, axis=1), 0, weights.shape[1] - 4)
    index = first[:, None] + np.arange(4)
    rows = np.arange(weights.shape[0])[:, None]
    assert np.allclose(weights[rows, index].sum(axis=1), weights.sum(axis=1))
    return first, np.ascontiguousarray(weights[rows, index])


def uncached_product(rows, cols, centres, grid):
    """``grid`` interpolated to the pixels ``rows x cols``, the Keys weights made here."""
    wr = interpolate.spatial_weights(rows, centres)
    wc = interpolate.spatial_weights(cols, centres)
    (r0, r1), (c0, c1) = interpolate.support(wr), interpolate.support(wc)
    return wr[:, r0:r1] @ grid[r0:r1, c0:c1] @ wc[:, c0:c1].T


def gather_product(row_taps, col_taps, grid: np.ndarray) -> np.ndarray:
    """``wr @ grid @ wc.T`` from the 4 taps of each row of ``wr`` and ``wc``."""
    (r0, wr), (c0, wc) = row_taps, col_taps
    half = sum(wr[:, k, None] * grid[r0 + k] for k in range(4))  # (nrows, ncoarse)
    return sum(np.take(half, c0 + k, axis=1) * wc[:, k] for k in range(4))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="calls timed per way")
    args = parser.parse_args()

    context = make_fine_context(
        np.ones((N, N), np.float32), coarse_bin=COARSE, pixel_bin=FINE, tile=32, threshold=2.0
    )
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[: N // COARSE, : N // COARSE]
    plane = 100 + 20 * np.sin(rows / 9.0) * np.cos(cols / 13.0) + rng.normal(0, 1, rows.shape)
    coarse = plane.astype(np.float32)
    centres = COARSE * np.arange(N // COARSE) + (COARSE - 1) / 2

    to_fine = context.to_fine
    to_fine_csr = sparse.csr_matrix(to_fine)
    fine_taps = taps(to_fine)
    ways = {
        "dense": lambda: to_fine @ coarse @ to_fine.T,
        "sparse": lambda: (to_fine_csr @ (to_fine_csr @ coarse).T).T,
        "gather": lambda: gather_product(fine_taps, fine_taps, coarse),
    }
    report("fine_residual's model (float32)", ways, args.repeat)

    pixel_rows = np.arange(_MISFIT_ROWS // 2, N, _MISFIT_ROWS)
    pixel_cols = np.arange(N)
    grid = coarse.astype(float)
    wr = interpolate.spatial_weights(pixel_rows, centres)
    wc = interpolate.spatial_weights(pixel_cols, centres)
    wr_csr, wc_csr = sparse.csr_matrix(wr), sparse.csr_matrix(wc)
    row_taps, col_taps = taps(wr), taps(wc)
    ways = {
        "dense": lambda: _calibration_plane(grid, COARSE),
        "dense, weights each call": lambda: uncached_product(pixel_rows, pixel_cols, centres, grid),
        "sparse": lambda: (wc_csr @ (wr_csr @ grid).T).T,
        "gather": lambda: gather_product(row_taps, col_taps, grid),
    }
    report("_tile_misfit's calibration rows (float64)", ways, args.repeat)
    return 0


def report(title: str, ways: dict, repeat: int) -> None:
    """Print each way's median CPU time and its largest difference from ``dense``."""
    reference = np.asarray(ways["dense"](), dtype=float)
    print(f"{title}: CPU per call [ms], median of {repeat}")
    dense_ms = None
    for name, func in ways.items():
        ms = cpu_median(func, repeat)
        dense_ms = ms if dense_ms is None else dense_ms
        diff = float(np.max(np.abs(np.asarray(func(), dtype=float) - reference)))
        print(f"  {name:25s} {ms:6.2f} ms  ({ms / dense_ms:4.2f}x dense)  max |diff| {diff:.1e}")


if __name__ == "__main__":
    raise SystemExit(main())
