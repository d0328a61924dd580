"""Where the fine layer's error comes from, per patch class (issue 19, item 3).

Run: ``python benchmarks/bench_fine.py [--frames N] [--smooth] [--quiet | --noise X]
[--fine-bin B] [--fine-threshold T] [--tolerance X]`` (from the repository
root). Prints numbers; asserts nothing. One build of 27 frames takes ~30 s of
CPU with 4-px fine bins, ~60 s with 2-px ones (2-5 minutes of wall time on a
busy 2-core machine); the noise floor adds ~20 s.

Frames and patches as in ``bench_build.py`` (``select_times``,
``choose_patches``; 30 frames requested by default), on the structured field
(``--smooth``: the smooth one). One build with the builder's defaults
(``compact=False``), changed by the options. Per class, the RMS of model -
truth (each pixel's time mean removed) in % of the scattered-light range, for:

* ``coarse``: the cube without its fine layer (the 16-px bins alone);
* ``fine``: the cube as built (bins + fine layer);
* ``compact``: the same cube compressed as ``build_cube`` does by default
  (``cube.compress()``: the bins' low-rank truncation; the fine layer as built);
* ``grid``: the bins plus an *exact* fine layer on the fine grid: the truth
  minus the coarse model, both at the fine bin centres, interpolated with the
  same Keys kernel. It is the error of representing the field by point values
  on that grid: no fine layer stored that way can do better. (It ignores the
  strap response, so it is loose on strap columns.)

Then the same in e-/s and as a multiple of the **noise floor** of
``bench_errors.py`` (``floor_cube``: the compact cube's low-rank model fed by
the ideal bin means of the pixels the build used), computed with the
simulator's error image, which ``--noise`` does not change: so with
``--quiet`` the table is the modelling error of each stage against the floor
of the ordinary noisy field (but the static scene, hence the source masks,
changes with the noise: a noiseless static scene masks more, and the ridge
got worse, not better, with ``--quiet``).

Options that locate the rest of ``fine`` - ``grid``: ``--fine-threshold 0``
keeps every tile (is structure missed by the significance test?);
``--tolerance 1e-6`` stops the tiles' factoring from truncating (is it lost at
assembly?); ``--quiet`` scales the simulator's noise by 0.01 (``--noise X``: by ``X``;
is it the fine bins' noise? The quoted uncertainty image stays, so the
builder keeps the tiles it would keep on the noisy field);
``--fine-bin 2`` halves the fine bins (``fine_tile`` doubled: same tiles;
the kept tiles are then smoothed along their structure, and ``grid`` is the
2-px grid's).
Per patch of the ridge and shadow-edge classes it also prints in how many
planes its tile was kept.

What it showed (27 frames, structured field, compact cube, x floor): with 4-px
fine bins the ``grid`` alone is 11.5x on the ridge and 14.3x on the shadow
edge, against 19.8x and 15.8x for the cube: the 4-px Keys grid, not noise or
tile selection, is what limits them. With ``--fine-bin 2`` (grid 1.2-1.5x per
patch off the straps) and the smoothing along the structure: 4.8x and 7.9x
(dense 4.1x and 4.9x); the smooth field no worse anywhere.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def grid_model(coarse, sim, times, patches, fine_bin=4):
    """Bins plus the exact fine layer on the ``fine_bin`` grid, at every patch."""
    import bench_build as bb

    from lk_scatterlight import interpolate

    n = 2048 // fine_bin
    centres = fine_bin * np.arange(n) + (fine_bin - 1) / 2
    out = np.empty((times.size, len(patches), bb.PATCH, bb.PATCH), dtype=np.float32)
    for j, p in enumerate(patches):
        r0 = (p.row - 1) // fine_bin - 3
        c0 = (p.column - 45) // fine_bin - 3
        reach = bb.PATCH // fine_bin + 7
        rows = np.arange(max(r0, 0), min(r0 + reach, n))
        cols = np.arange(max(c0, 0), min(c0 + reach, n))
        row, col = 1 + centres[rows], 45 + centres[cols]
        with np.errstate(over="ignore"):
            residual = sim.field(times, row, col) - coarse.evaluate(times, row, col).flux.value
        wr = interpolate.spatial_weights(p.rows.astype(float), row)
        wc = interpolate.spatial_weights(p.columns.astype(float), col)
        at_patch = coarse.evaluate(times, p.rows, p.columns).flux.value
        out[:, j] = at_patch + np.einsum("rR,tRC,cC->trc", wr, residual, wc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="frames requested")
    parser.add_argument("--smooth", action="store_true", help="the smooth field")
    parser.add_argument("--quiet", action="store_true", help="noise x 0.01")
    parser.add_argument("--noise", type=float, default=1.0, help="noise x this")
    parser.add_argument("--fine-bin", type=int, default=4)
    parser.add_argument("--fine-threshold", type=float, default=None)
    parser.add_argument("--tolerance", type=float, default=None, help="factoring tolerance")
    args = parser.parse_args()
    import bench_build as bb

    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource
    from lk_scatterlight.simulate import FFISimulator, ScatteredLightField

    times = bb.select_times(args.frames)
    structured = ScatteredLightField(structured=True)
    field = ScatteredLightField(seed=bb.SMOOTH_SEED) if args.smooth else structured
    sim = FFISimulator(field, time=times, seed=bb.SIM_SEED)
    args.noise = 0.01 if args.quiet else args.noise
    if args.noise != 1:
        add_noise = sim._add_noise
        sim._add_noise = lambda scene, noise, cols: add_noise(scene, noise * args.noise, cols)
    patches = bb.choose_patches(sim, bb.median_sweep(structured, times))
    options = {"fine_bin": args.fine_bin, "fine_tile": 64 // args.fine_bin}
    if args.fine_threshold is not None:
        options["fine_threshold"] = args.fine_threshold
    if args.tolerance is not None:
        options["compact_tolerance"] = args.tolerance
    config = BuildConfig(pixel_bin=bb.BIN, compact=False, **options)
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="bench_fine_") as tmp:
        source = SimulatedFFISource(sim)
        cube = build_cube(source, config, work_dir=Path(tmp), progress=False)
        timing = (time.perf_counter() - t0, time.process_time() - c0)
        report(cube, sim, patches, options, args, timing)


def report(cube, sim, patches, options, args, timing) -> None:
    """Print the per-class tables and the ridge and shadow-edge patches."""
    import bench_build as bb
    from bench_errors import floor_cube

    frames = np.searchsorted(sim.time, cube.btjd).clip(0, sim.time.size - 1)
    ftimes = sim.time[frames]
    truth, p1, p99 = bb.truth_samples(sim, frames, patches)
    scale = p99 - p1
    coarse = copy.copy(cube)
    coarse.fine = None
    compact = cube.compress()
    models = {
        "coarse": bb.evaluate_cube(coarse, ftimes, patches),
        "fine": bb.evaluate_cube(cube, ftimes, patches),
        "compact": bb.evaluate_cube(compact, ftimes, patches),
        "grid": grid_model(coarse, sim, ftimes, patches, args.fine_bin),
    }
    stats = {key: bb.residual_stats(m, truth, scale) for key, m in models.items()}
    _, floor_err = bb.evaluate_cube(floor_cube(compact, sim, frames), ftimes, patches, True)
    floor2 = np.mean(np.square(floor_err, dtype=float), axis=(0, 2, 3))
    noise = f", noise x {args.noise:g}" if args.noise != 1 else ""
    stored = 0 if cube.fine is None else cube.fine.basis.size + cube.fine.coef.size
    print(
        f"bench_fine: {'smooth' if args.smooth else 'structured'} field, {frames.size} frames, "
        f"{options}{noise}; build {timing[0]:.0f} s (CPU {timing[1]:.1f} s); fine layer "
        f"{stored / 1e6:.2f} M values; "
        f"range {scale:.2f} e-/s; RMS [% of range], each pixel's time mean removed"
    )
    kinds = np.array([p.kind for p in patches])
    print(f"  {'class':12s} {'n':>2s} " + "".join(f"{key:>9s}" for key in models))
    for kind in dict.fromkeys(kinds):
        sel = kinds == kind
        cells = "".join(f"{100 * np.sqrt(stats[key][sel].mean()):9.4f}" for key in models)
        print(f"  {kind:12s} {sel.sum():2d} {cells}")
    print("  RMS [e-/s] / x noise floor [e-/s] (the floor of the simulator's quoted noise)")
    print(f"  {'class':12s} {'floor':>7s} " + "".join(f"{key:>15s}" for key in models))
    for kind in dict.fromkeys(kinds):
        sel = kinds == kind
        floor = np.sqrt(floor2[sel].mean())
        rms = [scale * np.sqrt(stats[key][sel].mean()) for key in models]
        cells = "".join(f"{x:8.4f} {x / floor:5.1f}x" for x in rms)
        print(f"  {kind:12s} {floor:7.4f} {cells}")
    fine = cube.fine
    tile_px = 64
    for j, p in enumerate(patches):
        if p.kind not in ("ridge", "shadow edge") or fine is None:
            continue
        tile_row, tile_col = (p.row - 1 + 7) // tile_px, (p.column - 45 + 7) // tile_px
        kept = np.count_nonzero((fine.tile_row == tile_row) & (fine.tile_col == tile_col))
        cells = "".join(f"{100 * np.sqrt(stats[key][j]):9.4f}" for key in models)
        print(f"  {p.kind:12s} {p.name:20s} tile kept in {kept:2d}/{frames.size} planes {cells}")
        print(
            f"  {'':12s} {'':20s} x floor {'':21s}"
            + "".join(f"{scale * np.sqrt(stats[key][j] / floor2[j]):8.1f}x" for key in models)
        )


if __name__ == "__main__":
    main()
