"""Accuracy, cost and speed of the learned scattered-light model (`lk_scatterlight.model`).

Usage (from the repository root; needs scikit-learn, tesswcs and ../shared/data)::

    python benchmarks/bench_model.py [--quick] [--figure docs/_static/model_cutouts.png]

1. **Leave-one-sector-out accuracy on real data.** The 23 SPOC light curves of
   ``../shared/data/spoc_backgrounds`` (sectors 1-16, 24, 25, 41) are read as
   in ``lk-scatterlight train`` (SAP_BKG per aperture pixel, 30-min medians).
   For each sector a model is trained on every *other* sector and scored on
   that sector's light curves: RMS of SPOC's background minus the model
   calibrated with a scale and an offset per orbit, in % of the light curve's
   background range (99th - 1st percentile). Beside it, a per-orbit quadratic
   and a per-orbit constant in time, and the observed background's own RMS
   about its one-day running mean (``1-day %``: the Earth's daily brightening
   and dimming as it turns, and noise; what a smooth calibrated shape cannot
   follow). Prints every light curve, the median and the worst cases with the
   Moon's and the Earth's closest approach to the aperture's line of sight in
   that sector.
2. **Training cost** of the full model (reading + fitting the trees and the
   network, one thread) and the size of the model file.
3. **Prediction speed**: ``model.predict`` on a 25 x 25-pixel TPF x 12,000
   cadences (embedded TESS position table, tesswcs pointing cached after a
   first call), and with the grid interpolation switched off.
4. ``--figure``: the three real TESSCut cutouts of ``../shared/data``, median
   of the background pixels before and after ``tpf.to_corrector("scatterlight",
   model="default")``.

Beside the validation, the in-sample score (the model trained on every sector,
scored on its own training light curves) shows how much of the error is
generalisation to an unseen sector rather than what the features can express.

``--quick`` scores only five sectors.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CUTOUTS = [
    "tess-s0001-4-3_107.27_-70.0_5x5_astrocut.fits",
    "tess-s0019-1-3_65.489205_28.443210_10x10_astrocut.fits",
    "tess-s0001-4-2_84.291190_-80.469170_6x6_astrocut.fits",
]


def daily_percent(time, observed) -> float:
    """RMS of the observed background about its 1-day running mean, % of its p1..p99 range."""
    from scipy.ndimage import uniform_filter1d

    from lk_scatterlight.model import segment_ids

    seg = segment_ids(time)
    smooth = np.empty_like(observed)
    for s in np.unique(seg):
        m = seg == s
        width = max(1, int(round(1.0 / np.median(np.diff(time[m])))))  # bins in one day
        smooth[m] = uniform_filter1d(observed[m], width, mode="nearest")
    span = np.percentile(observed, 99) - np.percentile(observed, 1)
    return float(100 * np.sqrt(np.mean((observed - smooth) ** 2)) / span)


def accuracy(samples, quick: bool) -> list[dict]:
    from lk_scatterlight.builder.training import validate
    from lk_scatterlight.model import FEATURES

    start = time.process_time()
    results = validate(samples, sectors=[1, 5, 9, 14, 41] if quick else None)
    elapsed = time.process_time() - start
    moon, earth = FEATURES.index("moon_angle"), FEATURES.index("earth_angle")
    perigee = FEATURES.index("earth_distance")
    for r in results:
        k = next(i for i, s in enumerate(samples.sources) if s["name"] == r["name"])
        m = samples.group == k
        r["moon_min"] = float(samples.X[m, moon].min())
        r["earth_min"] = float(samples.X[m, earth].min())
        r["perigee"] = float(samples.X[m, perigee].min())
        raw = np.asarray(samples.sources[k]["raw"], dtype=float)
        r["daily"] = daily_percent(samples.time[m], raw)
    print(f"\nleave-one-sector-out validation: {elapsed:.0f} s CPU")
    header = (
        f"{'light curve':44s} {'cam-ccd':>7s} {'model %':>8s} {'quad %':>7s} {'const %':>8s}"
        f" {'1-day %':>8s} {'min Moon':>9s} {'min Earth':>10s} {'perigee':>8s}"
    )
    print(header)
    for r in results:
        print(
            f"{r['name']:44s} {r['camera']}-{r['ccd']:<5d} {r['model_percent']:8.2f} "
            f"{r['quadratic_percent']:7.2f} {r['constant_percent']:8.2f} {r['daily']:8.2f} "
            f"{r['moon_min']:8.1f}d {r['earth_min']:9.1f}d {r['perigee']:6.1f}Re"
        )
    model = np.array([r["model_percent"] for r in results])
    quad = np.array([r["quadratic_percent"] for r in results])
    const = np.array([r["constant_percent"] for r in results])
    daily = np.array([r["daily"] for r in results])
    print(
        f"median: model {np.median(model):.2f} %, per-orbit quadratic {np.median(quad):.2f} %, "
        f"per-orbit constant {np.median(const):.2f} % (mean model {model.mean():.2f} %); "
        f"model better than the quadratic on {int((model < quad).sum())} of {model.size}; "
        f"the backgrounds' own RMS about a 1-day running mean: median {np.median(daily):.2f} %"
    )
    print("worst cases:")
    for r in sorted(results, key=lambda r: -r["model_percent"])[:4]:
        print(
            f"  {r['name']}: {r['model_percent']:.1f} % (quadratic {r['quadratic_percent']:.1f} "
            f"%), Moon within {r['moon_min']:.1f} deg, Earth within {r['earth_min']:.1f} deg, "
            f"perigee {r['perigee']:.1f} Earth radii"
        )
    return results


def in_sample(samples, trees, network) -> None:
    """The same score for the model trained on every sector: a floor for the validation."""
    from lk_scatterlight.builder.training import calibrated_rms
    from lk_scatterlight.model import blend

    scores = []
    for k, source in enumerate(samples.sources):
        m = samples.group == k
        raw = np.asarray(source["raw"], dtype=float)
        predicted = blend(trees, network, samples.X[m])
        scores.append(calibrated_rms(samples.time[m], raw, predicted)[0])
    print(
        f"in-sample (trained on every sector, scored on its own training data): median "
        f"{np.median(scores):.2f} %, worst {max(scores):.2f} %"
    )


def speed(model) -> None:
    rows = 1000 + np.arange(25)[:, None]
    cols = 1000 + np.arange(25)[None, :]
    t = np.linspace(1325.5, 1352.5, 12_000)
    model.predict(1, 4, 3, rows, cols, t[:10])  # pointing from tesswcs, cached
    for label, kwargs in (("grid (default)", {}), ("every pixel", {"grid_step": None})):
        start = time.process_time()
        flux = model.predict(1, 4, 3, rows, cols, t, **kwargs)
        elapsed = time.process_time() - start
        print(f"predict 25 x 25 px x 12,000 cadences, {label}: {elapsed:.2f} s CPU -> {flux.shape}")


def figure(path: Path) -> None:
    import lightkurve as lk
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lk_scatterlight.exceptions import ScatterLightWarning

    fig, axes = plt.subplots(len(CUTOUTS), 1, figsize=(8, 8), constrained_layout=True)
    for ax, name in zip(axes, CUTOUTS, strict=True):
        tpf = lk.read(DATA / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScatterLightWarning)
            corrector = tpf.to_corrector("scatterlight", model="default")
        background = corrector.cube
        ev = background.evaluate(tpf.time, corrector.rows, corrector.columns)
        mask = background.background_mask
        flux = tpf.flux.value
        raw = np.nanmedian(flux[:, mask], axis=1)
        corrected = np.nanmedian((flux - ev.flux.value)[:, mask], axis=1)
        t = tpf.time.value
        ax.plot(t, raw, ".", ms=2, label="raw background pixels (median)")
        ax.plot(t, corrected, ".", ms=2, label="after the calibrated model")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("e-/s per pixel")
        tpf.hdu.close()
    axes[0].legend(fontsize=8, markerscale=4)
    axes[-1].set_xlabel("time [BTJD]")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="score five sectors only")
    parser.add_argument("--figure", type=Path, help="write the real-cutout figure here")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the validation")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lk_scatterlight.builder.training import (
        fit_model,
        fit_network,
        load_samples,
        read_ephemerides,
    )
    from lk_scatterlight.model import ScatterLightModel, default_model_path

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    ephemeris = read_ephemerides([DATA / "ephemeris"])
    start = time.process_time()
    samples = load_samples([DATA / "spoc_backgrounds"], ephemeris, progress=False)
    read = time.process_time() - start
    start = time.process_time()
    trees = fit_model(samples, progress=False)
    fit = time.process_time() - start
    start = time.process_time()
    network = fit_network(samples)
    fit_net = time.process_time() - start
    print(
        f"training on {len(samples.sources)} light curves ({len(samples)} samples): reading + "
        f"geometry {read:.1f} s, trees {fit:.1f} s, network {fit_net:.1f} s CPU (one thread); "
        f"{trees.n_trees} trees of depth <= {trees.depth()}, network {network.sizes.tolist()}"
    )
    in_sample(samples, trees, network)
    default = ScatterLightModel.load("default")
    with tempfile.TemporaryDirectory() as tmp:
        bare = ScatterLightModel(trees, {}, None, network).save(Path(tmp) / "m.npz").stat().st_size
    print(
        f"default model file: {default_model_path().stat().st_size / 1e3:.0f} kB "
        f"(trees and network {bare / 1e3:.0f} kB, the rest the TESS position table)"
    )
    speed(default)
    if not args.no_accuracy:
        accuracy(samples, args.quick)
    if args.figure:
        figure(args.figure)


if __name__ == "__main__":
    main()
