"""The learned model on simulated held-out sectors and cameras, beside a cube and a local median.

Run: ``python benchmarks/bench_model_sim.py [--quick]`` (from the repository root;
needs scikit-learn, tesswcs and the JPL Horizons table of ``../shared/data``).
Prints numbers; asserts nothing. Runs with one BLAS thread (``--blas-threads N``
to change; the script restarts itself with the thread variables set, as
``bench_regional.py`` does). About 50 minutes on a very busy 2-core machine
(load average 5-13; the default model's three networks on 720,000 samples take
815 s of CPU), 6-8 minutes with the trees alone; ``--quick`` is about a third of that.

The truth is `lk_scatterlight.geofield.GeometryField`: each pixel's scattered
light is a fixed law of its real Earth and Moon geometry (tesswcs' WCS of the
sector, the Horizons ephemeris of sectors 1-5), times a brightness factor per
orbit drawn from 1 +- 0.2 with a seed of its own for every CCD (the Earth's
changing albedo, which no geometry predicts), plus the field's glint ridge
(``structured=True``: 12 px wide at a fixed Earth angle of 62 deg, sweeping
over the CCD as the Earth moves).

1. **Training.** For every CCD of sectors 1, 2, 3 and 5 on cameras 1, 2 and 4
   (48 CCDs; ``--quick``: CCDs 1 and 3 only), the field sampled on 128-px bins
   every hour (`simulate.make_cube`) is written as a cube training set
   (`builder.dataset.make_dataset`, the files ``lk-scatterlight dataset``
   writes) and the model is trained on them with
   `builder.training.train_model` (``lk-scatterlight train``: seed 0, default
   hyper-parameters, 15,000 samples per file, one thread). Printed: samples,
   CPU time, model file size.
2. **Held-out CCDs**, never trained on: sector 4 camera 1 CCD 2 (a held-out
   sector), sector 2 camera 3 CCD 3 (a held-out camera) and sector 4 camera 3
   CCD 1 (both); ``--quick``: the first only. For each, `FFISimulator` makes 30-min
   FFIs (stars, saturated stars with bleed trails, strap columns that see 3-5 %
   more diffuse light, noise; no defect frames) at the first 12 frames after each perigee, then
   every 22nd frame (11 h: the orbits stay one stretch for the per-orbit
   calibration, which splits at gaps over 0.5 d), and a whole-CCD cube is
   built from them (``build_cube(..., BuildConfig())``, pixels held in memory, as
   ``bench_fusion.py``). 15 x 15 TESSCut-like TPFs cut from the same frames
   (`simulate.tpf_from_arrays`), chosen by ``bench_regional.choose_tpfs``:
   ``sky`` (centred in a 64-px cell and on a cell boundary), ``edge`` (rows 1
   and columns 2092 and the row 2048 / column 45 corner), ``bright star``
   (beside a saturated star, past its bleed trail) and ``strap`` (a strap group
   centred in the TPF); ``--quick`` has one edge and one strap TPF. Estimates
   of the scattered light at every pixel and frame:

   * ``model``: ``model.predict`` at the TPF's pixels and times, as trained;
   * ``calibrated``: the model calibrated on the TPF's background pixels
     (`model.ModelBackground`, what ``to_corrector("scatterlight", model=...)``
     subtracts: a scale and an offset per orbit, fitted to the median of the
     dimmest third of the pixels over all the TPF's frames);
   * ``best scale`` (diagnostic): the model with the scale and offset per orbit
     fitted to the truth itself, averaged over the same pixels (no clipping):
     what a perfect calibration would give, so the model's own shape error;
   * ``cube``: ``cube.evaluate`` of the held-out CCD's own cube;
   * ``local median``: per frame the median of the TPF's faintest half of pixels
     (``bench_regional.local_models``), the same for every pixel.

   Score: RMS over the TPF's pixels and frames of estimate - truth
   (``FFISimulator.truth``: the field times the strap response) after removing
   each pixel's time mean, in % of the truth's p1..p99 range over that CCD
   (every 4th pixel) and those frames. Tables: every TPF, then per kind (RMS
   pooled over the kind's TPFs) and pooled over all TPFs, for each held-out CCD
   and over all of them; a note says when the glint ridge crosses the TPF
   (its Earth angle within 2 sigma of the ridge's in some frames).
   ``orbit scale`` is the held-out field's brightness of each orbit over the
   mean of the training fields' (what only a calibration can learn);
   ``fitted`` the calibration's scale per orbit (median over the TPFs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
HORIZONS = ROOT.parent / "shared" / "data" / "horizons_tess_ssb_2018-06-01_to_2018-12-31.csv"
TRAIN_SECTORS, TRAIN_CAMERAS = (1, 2, 3, 5), (1, 2, 4)
HELD_OUT = (
    (4, 1, 2, "held-out sector"),
    (2, 3, 3, "held-out camera"),
    (4, 3, 1, "held-out sector and camera"),
)
#: bench_regional's TPF kinds, as named here ("shadow edge" is the analytic field's only).
KINDS = {
    "sky": "sky",
    "edge": "edge",
    "corner": "edge",
    "sat. star": "bright star",
    "bleed": "bright star",
    "strap": "strap",
}
METHODS = ("model", "calibrated", "best scale", "cube", "local median")
SAMPLES_PER_FILE = 15_000
#: Held-out frames (30-min FFIs): the first FIRST after each perigee, then every STEP-th.
FIRST, STEP = 12, 22
#: The glint ridge's Earth angle and width [deg] (`lk_scatterlight.geofield`).
RIDGE_ANGLE, RIDGE_SIGMA = 62.0, 0.03


def geometry_field(sector: int, camera: int, ccd: int, ephemeris):
    """The simulated truth of one CCD; its orbit brightness has a seed of its own."""
    from lk_scatterlight.geofield import GeometryField

    seed = 100 * sector + 10 * camera + ccd
    return GeometryField(sector, camera, ccd, ephemeris, structured=True, seed=seed)


# ============================================================================ part 1
def train(ephemeris, quick: bool, work: Path):
    """Cube training sets of the training CCDs, and the model trained on them."""
    from lk_scatterlight.builder.dataset import make_dataset, write_dataset
    from lk_scatterlight.builder.training import train_model
    from lk_scatterlight.simulate import make_cube, sector_times

    ccds = (1, 3) if quick else (1, 2, 3, 4)
    paths, scales = [], []
    c0 = time.process_time()
    for sector in TRAIN_SECTORS:
        hourly = sector_times(sector)[::2]
        for camera in TRAIN_CAMERAS:
            for ccd in ccds:
                field = geometry_field(sector, camera, ccd, ephemeris)
                scales.append(field.orbit_scale)
                cube = make_cube(field, sector, camera, ccd, pixel_bin=128, time=hourly)
                data = make_dataset(cube, ephemeris)
                paths.append(write_dataset(data, work / f"s{sector}-{camera}-{ccd}.npz"))
    c_data = time.process_time() - c0
    c0 = time.process_time()
    model = train_model(
        paths, ephemeris, seed=0, max_dataset_samples=SAMPLES_PER_FILE, progress=False
    )
    c_train = time.process_time() - c0
    path = model.save(work / "model.npz")
    info = {
        "files": len(paths),
        "samples": model.meta["n_samples"],
        "c_data": c_data,
        "c_train": c_train,
        "size": path.stat().st_size,
        "trees": model.trees.n_trees,
        "mean_scale": float(np.mean(scales)),
    }
    return model, info


# ============================================================================ part 2
def frames_of(sector: int) -> np.ndarray:
    """Frame indices: the first `FIRST` after each perigee, then one every `STEP` to the orbit end.

    Frames less than 0.5 d apart, so that each orbit stays one segment for the
    calibration (`lk_scatterlight.model.ORBIT_GAP`).
    """
    from lk_scatterlight.simulate import sector_times

    t = sector_times(sector)
    gap = int(np.argmax(np.diff(t))) + 1
    out = []
    for start, stop in ((0, gap), (gap, t.size)):
        out += list(range(start, start + FIRST)) + list(range(start + FIRST, stop, STEP))
    return np.asarray(out)


def run_ccd(model, ephemeris, sector, camera, ccd, quick: bool, work: Path) -> dict:
    import bench_fusion as bf
    import bench_regional as br

    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource
    from lk_scatterlight.model import ModelBackground, fit_calibration
    from lk_scatterlight.simulate import FFISimulator, sector_times

    field = geometry_field(sector, camera, ccd, ephemeris)
    t0 = time.perf_counter()
    # No defect frames (momentum dumps, coarse pointing, a glint that is not in the truth):
    # a TESSCut TPF would flag them, and the model's calibration does not read QUALITY.
    times = sector_times(sector)[frames_of(sector)]
    sim = FFISimulator(field, sector, camera, ccd, time=times, seed=0, defects={})
    tpfs = [t for t in br.choose_tpfs(sim, quick) if t.kind in KINDS]
    n = len(sim)
    full, _, _ = br.frame_pass(sim, tpfs, [])  # every frame's science pixels, made once
    cut = [tuple(a[(slice(None), *t.science())].copy() for a in full) for t in tpfs]
    t_frames = time.perf_counter() - t0
    reference = SimulatedFFISource(sim)
    meta = (sector, camera, ccd)
    source = br.memory_source(reference.frames, reference.region, *full, meta)
    t0 = time.perf_counter()
    cube = build_cube(
        source, BuildConfig(), work_dir=work / f"s{sector}-{camera}-{ccd}", progress=False
    )
    t_build = time.perf_counter() - t0
    del source, full
    used = np.searchsorted(sim.time, cube.btjd).clip(0, n - 1)
    if not np.allclose(sim.time[used], cube.btjd, rtol=0, atol=1e-6):
        msg = "cube planes do not match frame times"
        raise RuntimeError(msg)
    times = sim.time[used]
    every4 = np.arange(br.ROW_RANGE[0], br.ROW_RANGE[1] + 1, 4)
    p1, p99 = np.percentile(br.truth_at(sim, used, every4, every4 + 44), [1, 99])
    scale = float(p99 - p1)
    rows, fitted, problems = [], [], []
    for j, t in enumerate(tpfs):
        truth = br.truth_at(sim, used, t.rows, t.columns).astype(float)
        # The TPF has every frame (any the cube drops too, so that no orbit is cut into
        # pieces for the calibration); the scores are at the cube's frames.
        tpf = bf.tesscut_tpf(*cut[j], sim.time, t.row, t.column, meta)
        flux = cut[j][0][used].astype(float)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            alone = model.predict(sector, camera, ccd, t.rows[:, None], t.columns, times)
            background = ModelBackground(model, tpf)
            calibrated = background.evaluate(times, t.rows, t.columns).flux.value
        problems += [str(w.message) for w in caught]
        fitted.append(background.calibration.scale)
        # The calibration's ceiling: scale and offset per orbit fitted to the truth itself.
        mask = background.background_mask
        best = fit_calibration(alone[:, mask].mean(axis=1), truth[:, mask].mean(axis=1), times)
        estimates = {
            "model": alone,
            "calibrated": calibrated,
            "best scale": best.apply(alone, times).scattered,
            "cube": cube.evaluate(times, t.rows, t.columns).flux.value,
            "local median": br.local_models(flux)[0],
        }
        residual = {}
        for key, estimate in estimates.items():
            res = np.asarray(estimate, dtype=float) - truth
            residual[key] = 100 * (res - res.mean(axis=0)) / scale  # % of the range
        earth = field.angles(times, t.rows, t.columns)["earth_angle"]
        ridge = np.mean(np.any(np.abs(earth - RIDGE_ANGLE) < 2 * RIDGE_SIGMA, axis=(1, 2)))
        note = f"ridge in {ridge:.0%} of frames" if ridge else ""
        rows.append({"tpf": t, "kind": KINDS[t.kind], "residual": residual, "note": note})
    return {
        "name": f"sector {sector} camera {camera} CCD {ccd}",
        "rows": rows,
        "scale": scale,
        "frames": used.size,
        "orbit_scale": field.orbit_scale,
        "fitted": np.median(fitted, axis=0),
        "t_frames": t_frames,
        "t_build": t_build,
        "warnings": problems,
    }


def pooled_rms(rows, method: str) -> float:
    return float(
        np.sqrt(np.mean(np.concatenate([r["residual"][method].ravel() for r in rows]) ** 2))
    )


def print_table(rows, title: str, each: bool) -> None:
    print(f"\n   {title}")
    print(f"     {'kind':12s} {'TPF':24s} " + " ".join(f"{m:>12s}" for m in METHODS))
    if each:
        for r in rows:
            t = r["tpf"]
            name = f"{t.name} ({t.row},{t.column})"
            values = " ".join(f"{pooled_rms([r], m):12.3f}" for m in METHODS)
            print(f"     {r['kind']:12s} {name[:24]:24s} {values}  {r['note']}".rstrip())
    for kind in dict.fromkeys(KINDS.values()):
        group = [r for r in rows if r["kind"] == kind]
        if group:
            values = " ".join(f"{pooled_rms(group, m):12.3f}" for m in METHODS)
            print(f"     {kind:12s} {f'pooled, {len(group)} TPFs':24s} {values}")
    values = " ".join(f"{pooled_rms(rows, m):12.3f}" for m in METHODS)
    print(f"     {'all':12s} {f'pooled, {len(rows)} TPFs':24s} {values}")


# ============================================================================ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer CCDs and TPFs")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS/OpenMP threads")
    args = parser.parse_args()
    import bench_regional as br

    br.restart_with_blas_threads(args.blas_threads, __file__)

    import lk_scatterlight
    from lk_scatterlight.geometry import HorizonsEphemeris

    if not HORIZONS.is_file():
        sys.exit(f"bench_model_sim needs {HORIZONS} (the shared reference data).")
    start = time.perf_counter()
    print(
        f"bench_model_sim: lk_scatterlight {lk_scatterlight.__version__}, numpy "
        f"{np.__version__}, {os.cpu_count()} CPUs, {args.blas_threads} BLAS thread(s), load "
        "average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    ephemeris = HorizonsEphemeris.read(HORIZONS)
    with tempfile.TemporaryDirectory(prefix="bench_model_sim_") as tmp:
        work = Path(tmp)
        model, info = train(ephemeris, args.quick, work)
        print(
            f"\n1. Training: {info['files']} simulated cube training sets (sectors "
            f"{', '.join(map(str, TRAIN_SECTORS))}; cameras {', '.join(map(str, TRAIN_CAMERAS))}"
            f"), {info['samples']:,} samples, {info['trees']} trees; CPU {info['c_data']:.0f} s "
            f"simulating and writing the sets, {info['c_train']:.0f} s training; model file "
            f"{info['size'] / 1e3:.0f} kB"
        )
        print(
            "\n2. Held-out CCDs: RMS of (estimate - truth), each pixel's time mean removed, in % "
            "of the truth's p1..p99 range over the CCD"
        )
        results = []
        for sector, camera, ccd, label in HELD_OUT[: 1 if args.quick else 3]:
            r = run_ccd(model, ephemeris, sector, camera, ccd, args.quick, work)
            results.append(r)
            relative = r["orbit_scale"] / info["mean_scale"]
            print(
                f"\n   {r['name']} ({label}): {r['frames']} frames, range {r['scale']:.1f} e-/s; "
                f"orbit scale {relative[0]:.2f}, {relative[1]:.2f} (fitted "
                + ", ".join(f"{s:.2f}" for s in r["fitted"])
                + f"); frames {r['t_frames']:.0f} s, cube build {r['t_build']:.0f} s"
            )
            if r["warnings"]:
                print(f"   {len(r['warnings'])} warnings, the first: {r['warnings'][0]}")
            print_table(r["rows"], "every TPF, then per kind", each=True)
        rows = [row for r in results for row in r["rows"]]
        print_table(rows, f"all {len(results)} held-out CCDs, per kind", each=False)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
