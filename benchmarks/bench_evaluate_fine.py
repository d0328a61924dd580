"""Benchmark evaluation of a cube with a full 2-px fine layer on a TPF-sized grid.

The cube of ``bench_evaluate.py`` (128 x 128 bins of 16 px, 330 planes of 2 h),
with a fine layer of 2-px bins that has a block in every 32-px tile of every
plane (64 x 64 tiles x 330 planes = 1,351,680 blocks; each tile's blocks share
one basis image, as a factored tile) and a noise share of 0.25 everywhere, so
`ScatterLightCube.evaluate` and `evaluate_sum` take the covered bins' structure
and noise out (`lk_scatterlight.binsplit`). Evaluates a 25 x 25-pixel TPF
(rows and columns 1000..1024) at 1,200 cadences and prints the median CPU
time (``time.process_time``) of each call.

Run: ``python benchmarks/bench_evaluate_fine.py [--quick]`` (``--quick``: 5
repeats instead of 15). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from bench_evaluate import TPF_COLUMNS, TPF_ROWS, build_cube, cadences

from lk_scatterlight import ScatterLightCube
from lk_scatterlight.finelayer import FineLayer

FINE_BIN, FINE_TILE = 2, 16  # 32-px tiles
NTILE = 2048 // (FINE_BIN * FINE_TILE)


def full_fine_layer(nplanes: int, seed: int = 0) -> FineLayer:
    """A block in every tile and plane; each tile's blocks share one basis image."""
    rng = np.random.default_rng(seed)
    tiles = NTILE * NTILE
    tile_row, tile_col = np.divmod(np.arange(tiles), NTILE)
    return FineLayer(
        pixel_bin=FINE_BIN,
        tile=FINE_TILE,
        tile_row=np.tile(tile_row, nplanes),
        tile_col=np.tile(tile_col, nplanes),
        plane=np.repeat(np.arange(nplanes), tiles),
        error=np.full(tiles * nplanes, 0.05, np.float32),
        basis=rng.normal(0, 1, (tiles, FINE_TILE, FINE_TILE)).astype(np.float32),
        basis_start=np.tile(np.arange(tiles), nplanes),
        rank=np.ones(tiles * nplanes, int),
        coef=rng.normal(0, 0.1, tiles * nplanes).astype(np.float32),
        coef_start=np.arange(tiles * nplanes),
    )


def cpu_median(func, repeats: int) -> float:
    """Median CPU time [s] (user + system of this process) over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        func()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 15")
    repeats = 5 if parser.parse_args().quick else 15
    base = build_cube()
    nt, nr, nc = base.shape
    cube = ScatterLightCube.from_arrays(
        base.sector, base.camera, base.ccd, base.btjd, base.row, base.column,
        base.flux, base.flux_err, base.time_start, base.time_stop,
        fine=full_fine_layer(nt), noise_share=np.full((nr, nc), 0.25, np.float32),
    )  # fmt: skip
    t = cadences(cube, 1_200)
    print(f"cube {cube.shape}, fine layer of {len(cube.fine):,} blocks, {t.size} cadences")
    mask = np.zeros((TPF_ROWS.size, TPF_COLUMNS.size), bool)
    mask[10:15, 10:15] = True
    calls = {
        "evaluate (25 x 25 px)": lambda: cube.evaluate(t, TPF_ROWS, TPF_COLUMNS),
        "evaluate_sum (5 x 5 aperture)": lambda: cube.evaluate_sum(t, TPF_ROWS, TPF_COLUMNS, mask),
    }
    print(f"  {'call':32s} {'median CPU [ms]':>16s}  ({repeats} repeats)")
    for name, call in calls.items():
        call()  # warm up (and fill any cache)
        print(f"  {name:32s} {1e3 * cpu_median(call, repeats):16.1f}")


if __name__ == "__main__":
    main()
