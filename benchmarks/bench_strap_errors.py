"""Benchmark: what the quoted error holds at strap patches, term by term (issue 19).

Run: ``python benchmarks/bench_strap_errors.py [--field structured] [--frames N]
[--quick] [--cadence 200]`` (from the repository root). Prints numbers; asserts
nothing. One build of the chosen field as in ``bench_errors.py`` (dense, then
compressed), about 1.6 minutes of CPU with ``--quick`` (30 frames).

**Responses**: over the measured straps, the RMS of the builder's response
relative to the simulator's truth, the RMS quoted relative error, and the RMS of
their ratio (1 if ``RESPONSE_ERR`` is honest); also the correlation of those
ratios between straps that share their reference columns.

**Terms**, per cube (dense, compact), at the strap patches of
``bench_build.choose_patches`` split into their strap columns and the other
columns, and for the 3 x 3 sum at the patch centre: the actual error's RMS
[e-/s] with each pixel's time mean removed (the part that changes in time),
that mean itself (the part common to all frames, which ``bench_errors`` leaves
out), and the part of the time-varying error proportional to the light (its
least-squares projection, per pixel, on the truth less its mean: what a
response error would leave); then the quote's terms: the bins (noise and
truncation: the cube without fine-layer and strap errors), the fine layer,
the strap response, and the total, and actual over total.
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


def response_honesty(cube, sim) -> None:
    from lk_scatterlight.builder.strap_photometry import strap_columns, strap_geometry

    true = np.array([sim.strap_response[int(c)] for c in cube.strap_column])
    rel = cube.strap_response / true - 1
    quoted = cube.strap_response_err / cube.strap_response
    pulls = rel / np.where(quoted > 0, quoted, np.nan)
    print(
        f"  responses: {rel.size} straps, RMS off truth {np.sqrt(np.mean(rel**2)):.5f}, "
        f"RMS quoted {np.sqrt(np.mean(quoted**2)):.5f}, RMS actual/quoted "
        f"{np.sqrt(np.nanmean(pulls**2)):.2f}"
    )
    columns, refs = strap_geometry(strap_columns())
    index = {int(c): k for k, c in enumerate(cube.strap_column)}
    pairs = [
        (pulls[index[int(a)]], pulls[index[int(b)]])
        for i, a in enumerate(columns)
        for j, b in enumerate(columns[i + 1 :], i + 1)
        if np.array_equal(refs[i], refs[j]) and int(a) in index and int(b) in index
    ]
    if len(pairs) > 2:
        corr = np.corrcoef(np.array(pairs).T)[0, 1]
        print(f"  {len(pairs)} pairs of straps sharing references: correlation {corr:.2f}")


def _variants(cube):
    """The cube, without strap-response errors, and without those and the fine layer's."""
    from bench_errors import without_fine_errors

    nostrap = copy.copy(cube)
    nostrap.strap_response_err = np.zeros_like(cube.strap_response_err)
    return cube, nostrap, without_fine_errors(nostrap)


def _row(acc: np.ndarray, d, static, light, v_full, v_nostrap, v_bins) -> None:
    slope = np.sum(d * light, axis=0) / np.maximum(np.sum(light**2, axis=0), 1e-30)
    acc += [
        np.sum(d**2),
        np.sum(static**2) * d.shape[0],
        np.sum((slope * light) ** 2),
        np.sum(v_bins),
        np.sum(v_nostrap - v_bins),
        np.sum(v_full - v_nostrap),
        np.sum(v_full),
        d.size,
    ]


def terms(cube, patches, times, truth) -> dict:
    import bench_errors

    centre = bench_errors.centre_3x3()
    out: dict = {}
    for j, p in enumerate(patches):
        evals = [v.evaluate(times, p.rows, p.columns) for v in _variants(cube)]
        var = [e.flux_err.value.astype(float) ** 2 for e in evals]
        miss = evals[0].flux.value - truth[:, j]
        static = miss.mean(axis=0)
        light = truth[:, j] - truth[:, j].mean(axis=0)
        strap = np.isin(p.columns, cube.strap_column)
        for label, sel in (("strap cols", strap), ("other cols", ~strap)):
            acc = out.setdefault(label, np.zeros(8))
            parts = [(miss - static)[..., sel], static[..., sel], light[..., sel]]
            _row(acc, *parts, *(v[..., sel] for v in var))
        sums = [v.evaluate_sum(times, p.rows, p.columns, centre) for v in _variants(cube)]
        miss = sums[0].flux.value - truth[:, j][:, centre].sum(axis=1)
        light = truth[:, j][:, centre].sum(axis=1)
        acc = out.setdefault("3x3 sum", np.zeros(8))
        parts = [(miss - miss.mean())[:, None], np.atleast_1d(miss.mean())]
        parts.append((light - light.mean())[:, None])
        _row(acc, *parts, *(s.flux_err.value[:, None] ** 2 for s in sums))
    return out


def print_terms(name: str, out: dict) -> None:
    print(
        f"  {name}: actual [e-/s] time-varying | common | follows the light || quoted: bins | "
        "fine | strap response | total || actual/quoted"
    )
    for label, a in out.items():
        r = np.sqrt(np.maximum(a[:7], 0) / a[7])
        print(
            f"    {label:10s} {r[0]:.4f} | {r[1]:.3f} | {r[2]:.4f} || {r[3]:.4f} | {r[4]:.4f} | "
            f"{r[5]:.4f} | {r[6]:.4f} || {r[0] / r[6]:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--field", choices=("smooth", "structured"), default="structured")
    parser.add_argument("--frames", type=int, default=60, help="simulated frames")
    parser.add_argument("--quick", action="store_true", help="30 frames")
    parser.add_argument("--cadence", type=float, default=1800.0, help="FFI cadence [s]")
    args = parser.parse_args()
    import bench_build as bb

    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource
    from lk_scatterlight.simulate import FFISimulator, ScatteredLightField

    times = bb.select_times(30 if args.quick else args.frames, cadence=args.cadence)
    field = (
        ScatteredLightField(structured=True)
        if args.field == "structured"
        else ScatteredLightField(seed=bb.SMOOTH_SEED)
    )
    sim = FFISimulator(field, time=times, seed=bb.SIM_SEED)
    c0 = time.process_time()
    with tempfile.TemporaryDirectory(prefix="bench_strap_errors_") as tmp:
        dense = build_cube(
            SimulatedFFISource(sim),
            BuildConfig(pixel_bin=bb.BIN, compact=False),
            work_dir=Path(tmp),
            progress=False,
        )
    print(
        f"bench_strap_errors: {args.field} field, {dense.shape[0]} frames at {args.cadence:g} s, "
        f"build CPU {time.process_time() - c0:.1f} s"
    )
    response_honesty(dense, sim)
    frames = np.searchsorted(sim.time, dense.btjd).clip(0, sim.time.size - 1)
    patches = [
        p for p in bb.choose_patches(sim, bb.median_sweep(field, times)) if p.kind == "strap"
    ]
    truth = bb.truth_samples(sim, frames, patches)[0].astype(float)
    for name, cube in (("dense", dense), ("compact", dense.compress())):
        print_terms(name, terms(cube, patches, sim.time[frames], truth))


if __name__ == "__main__":
    main()
