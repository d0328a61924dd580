"""Compare scattered-light corrections on simulated TPFs with a known truth.

Methods, all applied to the same TESSCut-like TPFs (background still in FLUX):

* ``lk_scatterlight``: a cube built by the package's builder (default fine
  layer) from simulated FFIs of the same field (`compare_times`: 95 frames of
  sector 1), subtracted with ``tpf.to_corrector("scatterlight")``.
* ``local median``: per cadence, the median of the TPF's faintest third of
  pixels, subtracted from every pixel (what a quick TESSCut analysis does).
* ``SPOC-like plane``: per cadence, a plane fitted by least squares to those
  background pixels (SPOC fits a low-order polynomial to background pixels).
* ``PCA regression``: lightkurve's ``RegressionCorrector`` with the first 3
  principal components of the background pixels' light curves plus a constant.

Metric: the aperture light curve of a constant star is compared with the
star's true flux. After removing the median offset (no method can know the
static sky level and the cube does not contain the darkest frames' light), the
RMS is quoted as a percentage of the injected scattered light's range in the
aperture (p1-p99). Three targets: an isolated star, a faint star in a crowded
patch, and a star next to a much brighter one.

Run: ``python benchmarks/bench_compare.py [--figure PATH]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np

import lk_scatterlight  # noqa: F401  (registers the corrector)
from lk_scatterlight import simulate
from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
from lk_scatterlight.builder.sources import SimulatedFFISource

SHAPE = (15, 15)


def compare_times() -> np.ndarray:
    """Sector-1 frame times at the 30-min cadence: 18 h after the first perigee,
    12 h in mid-orbit (where the darkest frames are) and 18 h before the last perigee."""
    times = simulate.sector_times(1)
    middle = times[0] + 6.5
    keep = (times < times[0] + 0.75) | (times > times[-1] - 0.75)
    return times[keep | (np.abs(times - middle) < 0.25)]


def pick_targets(sim):
    """Lower-left corners of three 15x15 TPFs: isolated, crowded, near a bright star."""
    stars = sim.stars
    static = sim.static_scene()
    inner = (np.abs(stars["row"] - 1024) < 850) & (np.abs(stars["column"] - 1068) < 850)
    half = SHAPE[0] // 2

    def corner(i):
        return int(round(stars["row"][i])) - half, int(round(stars["column"][i])) - half

    def crowding(i):
        r, c = corner(i)
        patch = static[r - 1 : r - 1 + SHAPE[0], c - 45 : c - 45 + SHAPE[1]]
        return np.median(patch)

    medium = np.flatnonzero(inner & (stars["tmag"] > 10) & (stars["tmag"] < 11.5))
    scores = np.array([crowding(i) for i in medium])
    isolated = medium[np.argmin(scores)]
    faint = np.flatnonzero(inner & (stars["tmag"] > 12.5) & (stars["tmag"] < 13.5))
    crowded = faint[np.argmax([crowding(i) for i in faint])]
    bright = np.flatnonzero(inner & (stars["tmag"] > 7) & (stars["tmag"] < 8.5))
    b = bright[0]
    beside = int(round(stars["row"][b])) - half, int(round(stars["column"][b])) + 8 - half
    return {
        "isolated star": corner(isolated),
        "crowded, faint": corner(crowded),
        "8 px from a Tmag 7-8.5 star": beside,
    }


def cut_tpf(sim, corner, seed):
    row, column = corner
    rows = slice(row - 1, row - 1 + SHAPE[0])
    columns = slice(column - 45, column - 45 + SHAPE[1])
    response = sim.column_response[columns]
    return simulate.make_tpf(
        lambda t, r, c: sim.field(t, r, c) * response,
        row=row,
        column=column,
        shape=SHAPE,
        time=sim.time,
        static=sim.static_scene()[rows, columns],
        quality=sim.quality,
        seed=seed,
    )


def background_pixels(tpf):
    median = np.nanmedian(tpf.flux.value, axis=0)
    return median <= np.percentile(median, 33)


def local_median(tpf, aperture):
    bkg = np.nanmedian(tpf.flux.value[:, background_pixels(tpf)], axis=1)
    return tpf.flux.value[:, aperture].sum(axis=1) - aperture.sum() * bkg


def spoc_like_plane(tpf, aperture):
    mask = background_pixels(tpf)
    rr, cc = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    design = np.column_stack([np.ones(mask.sum()), rr[mask], cc[mask]])
    coef, *_ = np.linalg.lstsq(design, tpf.flux.value[:, mask].T, rcond=None)
    full = np.column_stack([np.ones(aperture.sum()), rr[aperture], cc[aperture]])
    return tpf.flux.value[:, aperture].sum(axis=1) - (full @ coef).sum(axis=0)


def pca_regression(tpf, aperture):
    import lightkurve as lk

    lc = tpf.to_lightcurve(aperture_mask=aperture)
    regressors = tpf.flux.value[:, background_pixels(tpf) & ~aperture]
    dm = lk.DesignMatrix(regressors, name="background").pca(3).append_constant()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corrected = lk.RegressionCorrector(lc).correct(dm)
    return corrected.flux.value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", default=None, help="write a comparison figure here")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    t0, cpu0 = time.perf_counter(), time.process_time()
    sim = simulate.FFISimulator(
        simulate.ScatteredLightField(seed=args.seed), time=compare_times(), seed=args.seed
    )
    with tempfile.TemporaryDirectory(prefix="bench_compare_") as work:  # not in the checkout
        cube = build_cube(
            SimulatedFFISource(sim),
            BuildConfig(pixel_bin=16, n_candidates=16, n_dark=4),
            work_dir=work,
            progress=False,
        )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"cube built from {len(sim)} simulated FFIs in {wall:.0f} s ({cpu:.0f} s CPU): {cube!r}")
    fine = cube.fine
    if fine is None:
        print("fine layer: none")
    else:
        print(
            f"fine layer: {fine.pixel_bin}-px bins, {len(fine)} blocks in "
            f"{np.unique(fine.plane).size} of {cube.shape[0]} planes"
        )

    results = {}
    curves = {}
    for name, corner in pick_targets(sim).items():
        tpf = cut_tpf(sim, corner, args.seed)
        truth = tpf.hdu["SL_TRUTH"].data[tpf.quality_mask].astype(float)
        aperture = np.zeros(SHAPE, dtype=bool)
        aperture[6:9, 6:9] = True  # the central 3x3 pixels, for every method
        corrector = tpf.to_corrector("scatterlight", cube=cube, aperture_mask=aperture)
        injected = truth[:, aperture].sum(axis=1)
        star = corrector.original_lc.flux.value - injected
        span = np.ptp(np.percentile(injected, [1, 99]))
        methods = {
            "none": corrector.original_lc.flux.value,
            "lk_scatterlight": corrector.correct().flux.value,
            "local median": local_median(tpf, aperture),
            "SPOC-like plane": spoc_like_plane(tpf, aperture),
            "PCA regression": pca_regression(tpf, aperture),
        }
        row = {}
        for method, flux in methods.items():
            residual = flux - star
            residual -= np.nanmedian(residual)
            row[method] = 100 * np.sqrt(np.nanmean(residual**2)) / span
        results[(name, corner, int(aperture.sum()), span)] = row
        curves[name] = (tpf.time.value, star, methods)

    names = list(next(iter(results.values())))
    print("\nAperture light curve: RMS of (corrected - true star), % of injected range")
    header = f"{'target':24s} {'px':>3s} {'range':>8s} " + " ".join(f"{m:>16s}" for m in names)
    print(header)
    for (target, _corner, npix, span), row in results.items():
        cells = " ".join(f"{row[m]:16.3f}" for m in names)
        print(f"{target:24s} {npix:3d} {span:8.0f} {cells}")
    print("(range: injected scattered light in the aperture, e-/s, p1-p99)")

    if args.figure:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 3.6 * len(curves)), layout="constrained")
        axes = fig.subplots(len(curves), 1, squeeze=False)[:, 0]
        for ax, (name, (t, star, methods)) in zip(axes, curves.items(), strict=True):
            for method, flux in methods.items():
                if method == "none":
                    continue
                residual = flux - star
                ax.plot(t, residual - np.nanmedian(residual), ".", ms=3, label=method)
            ax.set(title=name, xlabel="Time [BTJD]", ylabel="corrected - true [e$^-$/s]")
            ax.legend(ncol=4)
        fig.savefig(args.figure, dpi=90)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
