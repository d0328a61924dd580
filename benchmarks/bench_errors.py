"""Benchmark the honesty of the cube's quoted errors against simulated truth (issue 19).

Run: ``python benchmarks/bench_errors.py [--frames N] [--quick] [--cadence 200]``
(from the repository root; ``--cadence 200``: 200-s FFIs, chosen the same way).
Prints numbers; asserts nothing. About 4 minutes on a busy 2-core machine with
the default 60 frames (``--quick``: 30 frames, ~2 minutes).

Simulated sector-1 FFIs (`FFISimulator`, 30-min cadence) of the smooth and the
structured field, frames chosen as in ``bench_build.py`` (``select_times``:
where the scattered light changes most, plus frames spread over each orbit);
patches of 15 x 15 pixels of every class (``bench_build.choose_patches``: sky,
bright star, strap, bleed, edge, corner, and for the structured field's
features, shadow edge and ridge). One build per field with the builder's
defaults (16-px bins, fine layer), kept dense (``compact=False``) and
compressed as ``build_cube`` does by default (``cube.compress()``), so the two
share everything but the encoding.

For each class, the **honesty ratio** is the RMS of the actual error over the
RMS of the quoted one (1 is honest; < 1 the errors are too large, > 1 too
small), pooled over the class's patches and the frames:

* ``pixel``: ``cube.evaluate`` at every pixel of the patches against
  ``sim.truth``, each pixel's time mean removed from the actual error (the cube
  models the light above the darkest frames: a constant offset is not part of
  it), against its ``flux_err``;
* ``3x3 sum``: ``cube.evaluate_sum`` over the central 3 x 3 pixels (an
  aperture) against the truth summed there, the same way.

Columns: ``dense`` (the per-frame cube before compression), ``compact`` (what
``lk-scatterlight build`` writes: ``FLUX_ERR`` with the noise the truncated SVD
keeps, ``ERR_TIME``/``ERR_SPACE``) and ``compact, old`` (the same factors with
the error model of files that lack those extensions: the dense noise plus the
truncation term). Also the actual RMS error itself [e-/s], so that an honest
ratio is not mistaken for a small error. Aim (issue 19): every ratio within
1/1.2 .. 1.2. Each field's header gives the build's wall time and its CPU time
(``time.process_time`` of this process: the builder's own cost, less sensitive
to the other jobs on a shared machine).

**Noise floor** (issue 19, item 1): the error an ideal estimator would reach
from the same pixels with the same low-rank model. Per frame and bin, the
mean of the bin's pixels that entered the build (``cube.npix`` of them, taken
as the bin's ``npix`` pixels of smallest uncertainty in the simulator's error
image: the build masks stars, bleeds and straps) has variance
``mean(err**2) / npix``; the compact
cube's components keep the part ``G[t] e[b]**2 + G'[t] H[b]`` of it
(`lk_scatterlight.lowrank_errors.noise_projection`, with the rank-1 model of these
ideal errors), evaluated at the patches like ``flux_err``. ``act/floor`` is the
compact cube's actual RMS error over that floor's RMS, per class (pixels);
aim <= 1.5 on the smooth field, <= 3 on the structured one. The floor holds no
truncation, fine-layer or strap-response term: it is what the pixels allow, not
what the model quotes. Next to bright stars and bleeds it is only approximate (the
quietest ``npix`` pixels stand in for the ones the build kept, and an
unweighted SVD passes a noisy bin's noise on), so ratios below 1 there say
the approximation is loose, not that the cube beats the floor.

**Corrector** (issue 19, item 2): what `ScatterLightCorrector` (default
settings: fusion on) adds to a corrected TPF and light curve. For every patch,
a TESSCut-like TPF of the simulator's pixels there (``sim.science``: stars,
sky, scattered light and noise, at the frames the cube used) is corrected with
the compact cube, the 3 x 3 centre as aperture. ``TPF pixel``: the model the
corrected TPF subtracted (FLUX before - after) against the truth, each
pixel's time mean removed, over the error it added (``sqrt(FLUX_ERR_after**2 -
FLUX_ERR_before**2)``); ``light curve``: ``model_lc`` against the truth summed
over the aperture, over ``model_lc.flux_err``.

**Bins' share** (issue 19): of the quoted variance of each class's 3 x 3 sums,
the part from the binned model (the same cube with its fine layer quoting no
error); the rest is the fine layer's. It says which of the two an over- or under-quoted
sum comes from.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

AIM = 1.2


def old_error_model(compact):
    """The same compact cube with the error model of files without the noise projection."""
    from lk_scatterlight.lowrank import LowRank

    lr = compact._lowrank
    old = copy.copy(compact)
    old._lowrank = LowRank(
        lr.mean, lr.components, lr.coefficients, lr.err_scale, lr.err_image, lr.info
    )
    return old


def floor_cube(compact, sim, frames):
    """The compact cube with the noise floor as its error model (see the module doc)."""
    from lk_scatterlight import lowrank, lowrank_errors

    nb = compact.shape[1]
    size = 2048 // nb
    npix = np.clip(np.asarray(compact.npix, dtype=int), 1, size * size)
    ideal = np.empty((frames.size, nb, nb), np.float32)
    for k, i in enumerate(frames):
        err = sim.frame(int(i))[1][:2048, 44:2092].astype(np.float32)
        # The pixels the build used are the quiet ones (stars, bleeds and straps masked):
        # per bin, the npix pixels of smallest uncertainty.
        blocks = err.reshape(nb, size, nb, size).transpose(0, 2, 1, 3).reshape(nb, nb, -1)
        blocks = np.sort(blocks**2, axis=-1)
        used = np.take_along_axis(np.cumsum(blocks, axis=-1), npix[..., None] - 1, -1)[..., 0]
        ideal[k] = np.sqrt(used) / npix  # sqrt(mean(err**2) / npix)
    scale, image, _, _ = lowrank_errors.rank1_error_model(lowrank.Planes(ideal))
    lr = compact._lowrank
    coef = lr.coefficients.astype(float)
    norms = np.linalg.norm(coef, axis=0)
    temporal = coef / np.where(norms > 0, norms, 1)
    spatial = lr.components.reshape(lr.rank, -1).astype(float)
    err_time, err_space = lowrank_errors.noise_projection(temporal, spatial, scale, image)
    info = lr.info._replace(truncation_rms=0.0)
    floor = copy.copy(compact)
    floor._lowrank = lowrank.LowRank(
        lr.mean,
        lr.components,
        lr.coefficients,
        scale,
        image.reshape(nb, nb),
        info,
        err_time,
        err_space.reshape(nb, nb),
    )
    floor.fine = None
    floor.strap_response_err = np.zeros_like(compact.strap_response_err)
    return floor


def without_fine_errors(cube):
    """The same cube with its fine layer quoting no error: the binned model's share alone
    (what the binned model quotes where the fine layer covers a bin included)."""
    import dataclasses

    fine = cube.fine
    bins = copy.copy(cube)
    if fine is not None:
        zero = {
            name: np.zeros_like(getattr(fine, name))
            for name in ("error", "fill_error", "misfit", "long_misfit")
            if getattr(fine, name) is not None
        }
        bins.fine = dataclasses.replace(fine, **zero)
    return bins


def centre_3x3() -> np.ndarray:
    """The 3x3 pixels at the centre of a patch (the sums' aperture)."""
    import bench_build as bb

    centre = np.zeros((bb.PATCH, bb.PATCH), dtype=bool)
    c = bb.PATCH // 2
    centre[c - 1 : c + 2, c - 1 : c + 2] = True
    return centre


def honesty(cube, patches, times, truth) -> dict:
    """Per class: (sum of actual**2, sum of quoted**2, count) for pixels and 3x3 sums."""
    centre = centre_3x3()
    out: dict = {}
    for j, p in enumerate(patches):
        ev = cube.evaluate(times, p.rows, p.columns)
        miss = ev.flux.value.astype(float) - truth[:, j]
        miss -= miss.mean(axis=0)
        total = cube.evaluate_sum(times, p.rows, p.columns, centre)
        miss_sum = total.flux.value - truth[:, j][:, centre].sum(axis=1)
        miss_sum -= miss_sum.mean()
        acc = out.setdefault(p.kind, np.zeros(6))
        acc += [
            np.sum(miss**2),
            np.sum(ev.flux_err.value.astype(float) ** 2),
            miss.size,
            np.sum(miss_sum**2),
            np.sum(total.flux_err.value**2),
            miss_sum.size,
        ]
    return out


def corrector_honesty(cube, sim, patches, frames, truth) -> dict:
    """Per class: (actual**2, quoted**2, count) sums for the corrected TPF's pixels and the
    light curve's aperture sum (see the module doc)."""
    import warnings

    import bench_build as bb

    from lk_scatterlight import ScatterLightCorrector
    from lk_scatterlight.ccd import Region
    from lk_scatterlight.simulate import tpf_from_arrays

    centre = centre_3x3()
    out: dict = {}
    for j, p in enumerate(patches):
        region = Region(p.row, p.column, bb.PATCH, bb.PATCH)
        pixels = [sim.science(int(i), region) for i in frames]
        flux = np.stack([f for f, _ in pixels])
        err = np.stack([e for _, e in pixels])
        tpf = tpf_from_arrays(sim.time[frames], flux, err, p.row, p.column)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            corrector = ScatterLightCorrector(
                tpf, cube=cube, aperture_mask=centre, background_in_flux=True, progress=False
            )
            corrector.correct()
            corrected = corrector.correct_tpf()
        model = tpf.flux.value - corrected.flux.value
        added = corrected.flux_err.value**2 - tpf.flux_err.value**2
        miss = model - truth[:, j]
        miss -= miss.mean(axis=0)
        lc = corrector.model_lc
        miss_lc = lc.flux.value - truth[:, j][:, centre].sum(axis=1)
        miss_lc -= miss_lc.mean()
        acc = out.setdefault(p.kind, np.zeros(6))
        acc += [
            np.sum(miss**2),
            np.sum(added),
            miss.size,
            np.sum(miss_lc**2),
            np.sum(lc.flux_err.value**2),
            miss_lc.size,
        ]
    return out


def run_field(name, field, times, work: Path, fine_bin: int | None = None) -> dict:
    import bench_build as bb

    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource
    from lk_scatterlight.simulate import FFISimulator

    sim = FFISimulator(field, time=times, seed=bb.SIM_SEED)
    patches = bb.choose_patches(sim, bb.median_sweep(field, times))
    t0, c0 = time.perf_counter(), time.process_time()
    dense = build_cube(
        SimulatedFFISource(sim),
        BuildConfig(pixel_bin=bb.BIN, compact=False, fine_bin=fine_bin),
        work_dir=work / name,
        progress=False,
    )
    compact = dense.compress()
    t_build = time.perf_counter() - t0
    cpu_build = time.process_time() - c0
    frames = np.searchsorted(sim.time, dense.btjd).clip(0, sim.time.size - 1)
    truth, _, _ = bb.truth_samples(sim, frames, patches)
    truth = truth.astype(float)
    cubes = {"dense": dense, "compact": compact, "compact, old": old_error_model(compact)}
    results = {key: honesty(cube, patches, sim.time[frames], truth) for key, cube in cubes.items()}
    floor = honesty(floor_cube(compact, sim, frames), patches, sim.time[frames], truth)
    bins = {
        key: honesty(without_fine_errors(cubes[key]), patches, sim.time[frames], truth)
        for key in ("dense", "compact")
    }
    return {
        "name": name,
        "results": results,
        "floor": floor,
        "bins": bins,
        "corrector": corrector_honesty(compact, sim, patches, frames, truth),
        "frames": frames.size,
        "rank": compact.rank,
        "t_build": t_build,
        "cpu_build": cpu_build,
    }


def print_field(info: dict) -> None:
    results = info["results"]
    keys = list(results)
    kinds = list(results[keys[0]])
    print(
        f"\n  {info['name']} field: {info['frames']} frames, rank {info['rank']}, build "
        f"{info['t_build']:.0f} s (CPU {info['cpu_build']:.1f} s)"
    )
    head = "".join(f"{key:>14s}" for key in keys)
    print(f"    {'':12s} actual/quoted, pixel{'':14s}| actual/quoted, 3x3 sum")
    print(
        f"    {'class':12s}{head} |{head} | act. RMS pixel, 3x3 (compact) [e-/s] | floor "
        "[e-/s], act/floor"
    )
    worst = {key: [] for key in keys}
    for kind in kinds:
        cells, cells_sum = [], []
        for key in keys:
            a2, q2, n, s2, qs2, m = results[key][kind]
            ratio, ratio_sum = np.sqrt(a2 / q2), np.sqrt(s2 / qs2)
            worst[key] += [ratio, ratio_sum]
            cells.append(f"{ratio:14.2f}")
            cells_sum.append(f"{ratio_sum:14.2f}")
        a2, _, n, s2, _, m = results["compact"][kind]
        floor = np.sqrt(info["floor"][kind][1] / info["floor"][kind][2])
        print(
            f"    {kind:12s}{''.join(cells)} |{''.join(cells_sum)} | "
            f"{np.sqrt(a2 / n):.3f}, {np.sqrt(s2 / m):.3f}{'':18s} | {floor:.4f}, "
            f"{np.sqrt(a2 / n) / floor:.2f}"
        )
    for key in keys:
        ratios = np.array(worst[key])
        inside = np.sum((ratios >= 1 / AIM) & (ratios <= AIM))
        print(
            f"    {key}: {inside} of {ratios.size} ratios within 1/{AIM}..{AIM} "
            f"(range {ratios.min():.2f}..{ratios.max():.2f})"
        )
    print(
        "    3x3 sum, the bins' share of the quoted variance (the rest: fine layer): dense, compact"
    )
    for kind in kinds:
        shares = [info["bins"][key][kind][4] / results[key][kind][4] for key in info["bins"]]
        print(f"    {kind:12s}" + "".join(f"{share:14.2f}" for share in shares))
    print("    corrector (compact cube, fusion on), actual/quoted: TPF pixel | light curve")
    ratios = []
    for kind, (a2, q2, _, s2, qs2, _) in info["corrector"].items():
        ratios += [np.sqrt(a2 / q2), np.sqrt(s2 / qs2)]
        print(f"    {kind:12s}{ratios[-2]:14.2f} |{ratios[-1]:14.2f}")
    ratios = np.array(ratios)
    inside = np.sum((ratios >= 1 / AIM) & (ratios <= AIM))
    print(
        f"    corrector: {inside} of {ratios.size} ratios within 1/{AIM}..{AIM} "
        f"(range {ratios.min():.2f}..{ratios.max():.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="simulated frames per field")
    parser.add_argument("--quick", action="store_true", help="30 frames")
    parser.add_argument(
        "--cadence", type=float, default=1800.0, help="FFI cadence [s]: 1800 (default) or 200"
    )
    parser.add_argument(
        "--fine-bin",
        type=int,
        default=None,
        help="the fine layer's bin size [px] (default: the builder's)",
    )
    args = parser.parse_args()
    import bench_build as bb

    import lk_scatterlight
    from lk_scatterlight.builder.pipeline import BuildConfig
    from lk_scatterlight.simulate import ScatteredLightField

    n = 30 if args.quick else args.frames
    times = bb.select_times(n, cadence=args.cadence)
    print(
        f"bench_errors: lk_scatterlight {lk_scatterlight.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print(
        f"Honesty of quoted errors: RMS actual / RMS quoted (aim 1/{AIM}..{AIM}), sector 1, "
        f"{times.size} frames at {args.cadence:g} s, {bb.PATCH}x{bb.PATCH} patches, default "
        f"build (16-px bins, fine layer of {BuildConfig(fine_bin=args.fine_bin).fine_bin}-px bins)"
    )
    start = time.perf_counter()
    fields = (
        ("smooth", ScatteredLightField(seed=bb.SMOOTH_SEED)),
        ("structured", ScatteredLightField(structured=True)),
    )
    with tempfile.TemporaryDirectory(prefix="bench_errors_") as tmp:
        for name, field in fields:
            print_field(run_field(name, field, times, Path(tmp), args.fine_bin))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
