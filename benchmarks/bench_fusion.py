"""Benchmark fusing the scattered-light model with a TPF's own faint pixels (issue 21).

Run: ``python benchmarks/bench_fusion.py [--quick]`` (from the repository root).
Prints numbers; asserts nothing. Runs with one BLAS thread (``--blas-threads N``
to change, 0 for the libraries' default as users run it; the script restarts
itself with ``OPENBLAS_NUM_THREADS`` etc. set, as ``bench_regional.py`` does).
About 1.5-3 minutes on a busy 2-core machine by default (most of it generating
the 2 x 24 simulated FFIs and building the two whole-CCD cubes), about 1 with
``--quick`` (fewer frames and TPFs, 4,000 cadences and 3 timing runs in part 3).
``--parts 3`` runs part 3 only (any of 1234).

``ScatterLightCorrector(fuse=True)`` (`lk_scatterlight.fusion.fuse`) adds to the
cube's model a per-cadence level estimated from the TPF's faint pixels away
from the aperture, weighted by the model's and the local estimate's variances.

1. **Accuracy.** Simulated sector-1 FFIs (`FFISimulator`, 30-min cadence) of a
   smooth field and of the structured field (glint ridge + baffle shadow edge),
   frames 0..15 and the first 8 after the orbit gap (``--quick``: 10 + 4), as
   ``bench_regional.py``; one whole-CCD cube per field
   (``build_cube(..., BuildConfig())`` on the frames' pixels, held in memory).
   TPFs: ``bench_regional.choose_tpfs`` (open sky centred in a 64-px cell and
   on a grid line, CCD edges and corner, beside a saturated star, past its
   bleed trail, on strap columns, on the shadow edge; on the structured field
   also two open-sky TPFs on the glint ridge's median path, `ridge_tpfs`). Each is a 15 x 15
   TESSCut-like TPF cut from the same frames: FLUX = the frame's science
   pixels (background included), FLUX_ERR = the error image, FLUX_BKG = 0,
   QUALITY = 0, the cube's frames only (quality-flagged frames dropped).
   Aperture: the brightest 3 x 3 block (median image) whose centre is within
   2 px of the TPF's centre. Background estimates per pixel and cadence:

   * (a) ``model``: ``tpf - correct_tpf()`` with ``fuse=False``;
   * (b) ``local median``: per cadence the median of the faint half (median
     image) of the non-aperture pixels, the same for every pixel;
   * (c) ``fused``: ``tpf - correct_tpf()`` with ``fuse=True``.

   Score: RMS over the TPF's pixels and cadences of estimate - truth
   (``sim.truth`` at the TPF's pixels) after removing each pixel's time mean,
   in % of the truth's p1..p99 range over the CCD (as ``bench_regional``).
   Aims: c/min(a,b) <= 1.1 per TPF; pooled over the TPFs of the structured
   field, min(a,b)/c >= 1.5. ``w`` is the mean fusion weight. The ceiling of a
   fusion by level and surface, ``lvl*`` and ``quad*``: (a) with what the model
   missed at the fusion's background pixels (model - truth there) removed
   exactly, per cadence, as a level and as a least-squares quadratic in row and
   column (a noise-free local estimate, and no leverage limit).
   **Error honesty**: with ``fuse=True``, ``correct()``; the RMS of
   ``model_lc.flux`` - the truth summed over the aperture (mean removed) over
   the RMS of ``model_lc.flux_err``; aim 0.83..1.2 (also shown for
   ``fuse=False``, to tell the model's honesty from the fusion's).
   Diagnostics of the weight: ``sM used``, the model's level error at the
   fusion's background pixels as `fuse` measured it for the errors
   (``Fusion.model_err``: the day's excess scatter of the local estimate,
   spread as the model's quoted error runs; the weight uses it shrunk and
   constant over the day), ``sM true``, that error as it is (RMS over cadences
   of truth - model averaged over the same pixels, time mean removed), and
   ``sL``, the local estimate's error.

2. **Signal preservation.** A 15 x 15 TPF (``simulate.make_tpf``, 2-min
   cadence, the part-3 TPF) on the structured field crossed by the moving
   ridge, corrected with a cube of the *smooth* field (``make_cube``): the model
   misses the ridge and the shadow, so the fusion weight is high. Injected:
   1 % box transits (0.2 d, every 3.7 d) plus a 10 % sinusoid (3-d period),
   ``signal(t) - 1`` times the target star's image added to FLUX, (i) on the
   aperture only and (ii) over the star's whole image (two-Gaussian PSF of the
   simulator, whose wing reaches the background pixels). Recovered: the
   corrected aperture light curve (``correct()``, fusion on) minus that of the
   same TPF without the signal (the noise cancels), over the star's aperture
   flux, fitted with box + sine + cosine + constant. Aim: within 2 %.

3. **Cost.** ``correct_tpf()`` of that 15 x 15 TPF with 12,000 2-min cadences
   (``--quick``: 4,000) against a 64-px ``make_cube`` cube at 200-s cadence
   (so the fusion averages over a 2-cadence model interval): ``fuse=True``
   vs ``fuse=False``, median CPU time (one BLAS thread) of 21 interleaved runs
   each (``--quick``: 3), a fresh corrector per run, and the median and
   quartiles of the paired ratios and differences (on a loaded machine a run's
   time swings by +-0.05 of the ratio); then the same for that
   TPF on the smooth field, which the cube models (the fusion adds little: a
   small weight on some days). Aim: fusion adds < 10 %. Then the fusion's own
   steps on each TPF (median of 3 x as many runs): ``fuse()`` on FLUX and the model
   as ``correct_tpf()`` calls it (with the model's quoted variance), and
   ``Fusion.add_to`` + ``Fusion.variance`` over the
   TPF; and ``correct()`` (the light curve) without and with fusion.

4. **Error honesty per kind.** Part 1's honesty over 21 frames is good to about
   +-15 % per TPF, and its frames (consecutive, after perigees) share much of
   the cube's error, which removing each pixel's time mean takes out. So part 1
   is repeated on 96 frames spread evenly over the sector (``--quick``: 32),
   and the aperture sums' act/quoted is pooled per kind of TPF (RMS actual over
   RMS quoted across the kind's TPFs), fused and with ``fuse=False``. Aim
   0.83..1.2 for every kind. ``pixel act/q``: the cube's own, per pixel of the
   aperture (``cube.evaluate``, no sum): where it equals ``model act/q`` the
   aperture sum propagates the cube's errors as they are, and the ratio is the
   cube's. One or two TPFs per kind sample one or two bins, whose errors over
   these frames are a few components' series (the compact cube's rank), so a
   per-kind ratio is a small sample: the last line gives the spread of act/q
   over the CCD's interior bins (`bin_honesty`), at bin centres and midway
   between them (there the interpolation mixes four bins as independent), and
   how neighbouring bins' errors correlate. ``--by-block`` adds, per TPF, the model's
   aperture-sum errors in the planes with a fine-layer block at the aperture and in the
   others (`by_block`). Needs ~3.5 GB of memory for the frames (96 frames
   at 2048 x 2048, flux and error), and about 2 more minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TPF = 15
AP = 3  # aperture side [px]
SCORE_AIM, POOL_AIM, HONEST = 1.1, 1.5, (0.83, 1.2)


# ============================================================================ TPFs
def tesscut_tpf(flux, err, times, row, column, meta):
    """A TESSCut-like TPF (background in FLUX) with these pixels."""
    from lk_scatterlight.simulate import tpf_from_arrays

    return tpf_from_arrays(times, flux, err, row, column, *meta)


def with_flux(tpf, flux):
    """A copy of ``tpf`` with FLUX replaced."""
    import lightkurve as lk
    from astropy.io import fits

    hdulist = fits.HDUList([hdu.copy() for hdu in tpf.hdu])
    hdulist[1].data["FLUX"] = flux.astype(np.float32)
    return lk.TessTargetPixelFile(hdulist)


def brightest_aperture(median_image: np.ndarray) -> np.ndarray:
    """The brightest 3 x 3 block whose centre is within 2 px of the image's centre."""
    c = TPF // 2
    best, where = -np.inf, (c, c)
    for r in range(c - 2, c + 3):
        for k in range(c - 2, c + 3):
            total = median_image[r - 1 : r + 2, k - 1 : k + 2].sum()
            if total > best:
                best, where = total, (r, k)
    mask = np.zeros(median_image.shape, dtype=bool)
    mask[where[0] - 1 : where[0] + 2, where[1] - 1 : where[1] + 2] = True
    return mask


def faint_pixels(flux: np.ndarray, aperture: np.ndarray) -> np.ndarray:
    """The faint half (median image) of the non-aperture pixels, (nrow, ncol) bool."""
    median_image = np.median(flux, axis=0)
    outside = ~aperture
    return outside & (median_image <= np.median(median_image[outside]))


def local_median(flux: np.ndarray, aperture: np.ndarray) -> np.ndarray:
    """Per cadence, the median of the faint half of the non-aperture pixels, (ntime,)."""
    level = np.median(flux[:, faint_pixels(flux, aperture)], axis=1)
    return level - level.mean()


def exact_surface(miss: np.ndarray, pixels: np.ndarray, terms: int) -> np.ndarray:
    """Per cadence, the least-squares level (``terms=1``), plane (3) or quadratic (6) in
    row and column through ``miss`` (ntime, nrow, ncol) at ``pixels``, over every pixel."""
    y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in pixels.shape), indexing="ij")
    design = np.stack([np.ones_like(y), y, x, y**2, x**2, x * y], axis=-1)[..., :terms]
    coef, *_ = np.linalg.lstsq(design[pixels], miss[:, pixels].T, rcond=None)
    return np.einsum("rck,kt->trc", design, coef)


def corrector(tpf, cube, aperture, fuse: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tpf.to_corrector("scatterlight", cube=cube, aperture_mask=aperture, fuse=fuse)


def removed(tpf, cube, aperture, fuse: bool):
    """Background removed per pixel by ``correct_tpf``, and whether it fused (``SLFUSED``)."""
    corr = corrector(tpf, cube, aperture, fuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = corr.correct_tpf()
    flux = np.asarray(tpf.hdu[1].data["FLUX"], float) - np.asarray(out.hdu[1].data["FLUX"])
    return flux, bool(out.hdu[0].header.get("SLFUSED"))


# ============================================================================ part 1
def ridge_tpfs(sim) -> list:
    """Open-sky TPFs on the glint ridge's median position over the frames.

    The ridge lies where ``0.6 rr + 0.8 cc - 300 + 400 sweep(t) = 0`` (pixels from
    the CCD centre, `ScatteredLightField`); it sweeps across these TPFs during the
    frames, where the cube, whose fine layer keeps structure near masked sources
    best, misses most in open sky (issue 19).
    """
    import bench_build as bb
    import bench_regional as br

    sweep = bb.median_sweep(sim.field, sim.time)
    out = []
    for rr in (-700.0, 200.0):
        cc = (300 - 400 * sweep - 0.6 * rr) / 0.8
        row, column = br._clamp(1024.5 + rr - TPF / 2, 1068.5 + cc - TPF / 2)
        out.append(br.Tpf("ridge", f"ridge r{row}", row, column))
    return out


def build_field(sim, tpfs: list, work: Path) -> tuple:
    """The whole-CCD cube of ``sim``'s frames, the TPFs' pixels cut from them, shape (2,
    nframe, ntpf, TPF, TPF) (flux, error), and the seconds the frames and the build took."""
    import bench_regional as br

    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource

    t0 = time.perf_counter()
    n = len(sim)
    full = (np.empty((n, 2048, 2048), np.float32), np.empty((n, 2048, 2048), np.float32))
    cut = np.empty((2, n, len(tpfs), TPF, TPF), np.float32)
    for i in range(n):
        flux, err = sim.frame(i)
        flux, err = flux[:2048, 44:2092], err[:2048, 44:2092]
        full[0][i], full[1][i] = flux, err
        for j, tpf in enumerate(tpfs):
            cut[0, i, j], cut[1, i, j] = flux[tpf.science()], err[tpf.science()]
    t_frames = time.perf_counter() - t0
    reference = SimulatedFFISource(sim)
    meta = (sim.sector, sim.camera, sim.ccd)
    source = br.memory_source(reference.frames, reference.region, *full, meta)
    t0 = time.perf_counter()
    cube = build_cube(source, BuildConfig(), work_dir=work, progress=False)
    return cube, cut, t_frames, time.perf_counter() - t0


def run_field(name, field, frames, quick: bool, work: Path, cache: Path | None = None) -> dict:
    """Part 1 (or 4) on one field: the frames, the cube, and each TPF's scores.

    With ``cache``, the cube and the TPFs' cut pixels are read from there when a
    previous run with the same field and frames wrote them, else written there.
    """
    import bench_regional as br

    from lk_scatterlight import ScatterLightCube
    from lk_scatterlight.simulate import FFISimulator, sector_times

    sim = FFISimulator(field, time=sector_times(1)[frames], seed=br.SIM_SEED)
    tpfs = br.choose_tpfs(sim, quick)
    if field.structured:
        tpfs += ridge_tpfs(sim)
    stem = None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        frames_id = zlib.crc32(np.asarray(frames, dtype=np.int64).tobytes())
        stem = cache / f"{name}_{len(frames)}_{frames_id:08x}"
    if stem is not None and stem.with_suffix(".npz").exists():
        cut = np.load(stem.with_suffix(".npz"))["cut"]
        cube = ScatterLightCube.read(stem.with_suffix(".fits"))
        t_frames = t_build = 0.0
    else:
        cube, cut, t_frames, t_build = build_field(sim, tpfs, work / name)
        if stem is not None:
            np.savez(stem.with_suffix(".npz"), cut=cut)
            cube.write(stem.with_suffix(".fits"), overwrite=True)
    meta = (sim.sector, sim.camera, sim.ccd)
    n = len(sim)
    used = np.searchsorted(sim.time, cube.btjd).clip(0, n - 1)
    if not np.allclose(sim.time[used], cube.btjd, rtol=0, atol=1e-6):
        msg = "cube planes do not match frame times"
        raise RuntimeError(msg)
    every4 = np.arange(br.ROW_RANGE[0], br.ROW_RANGE[1] + 1, 4)
    p1, p99 = np.percentile(
        br.truth_at(sim, used, every4, every4 + br.COLUMN_RANGE[0] - 1), [1, 99]
    )
    scale = float(p99 - p1)
    rows = []
    for j, t in enumerate(tpfs):
        truth = br.truth_at(sim, used, t.rows, t.columns).astype(float)
        flux, err = cut[0, used, j].astype(float), cut[1, used, j].astype(float)
        tpf = tesscut_tpf(flux, err, sim.time[used], t.row, t.column, meta)
        aperture = brightest_aperture(np.median(flux, axis=0))
        model, _ = removed(tpf, cube, aperture, fuse=False)
        fused, was_fused = removed(tpf, cube, aperture, fuse=True)
        local = np.broadcast_to(local_median(flux, aperture)[:, None, None], flux.shape)
        r = {
            "tpf": t,
            "a": br.rms(model, truth, scale),
            "b": br.rms(local, truth, scale),
            "c": br.rms(fused, truth, scale),
            "note": br.structure_note(sim, sim.time[used], t),
            "fused": was_fused,
            "sq": (model - truth, local - truth, fused - truth),
        }
        # Error honesty of the background over the aperture sum (model_lc), fused and not.
        for key, fuse in (("", True), ("model ", False)):
            corr = corrector(tpf, cube, aperture, fuse=fuse)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                corr.correct()
            lc = corr.model_lc
            good = np.isfinite(lc.flux.value)
            actual = lc.flux.value[good] - truth[good][:, aperture].sum(axis=1)
            actual -= actual.mean()
            quoted = np.sqrt(np.mean(lc.flux_err.value[good] ** 2))
            r[key + "actual"], r[key + "quoted"] = float(np.sqrt(np.mean(actual**2))), float(quoted)
            if fuse:
                fusion = corr.fusion  # correct_tpf() does not keep its fusion; correct() does
            else:  # the cube's own honesty per pixel of the aperture, before any sum
                miss = (corr.model.flux.value - truth)[good][:, aperture]
                miss -= miss.mean(axis=0)
                quoted = corr.model.flux_err.value[good][:, aperture]
                r["pixel actual"] = float(np.sqrt(np.mean(miss**2)))
                r["pixel quoted"] = float(np.sqrt(np.mean(quoted**2)))
                r["by block"] = by_block(cube, t, aperture, actual, lc.flux_err.value[good], good)
        # The ceiling of a fusion by level and surface: the model with what it missed at the
        # background pixels taken out exactly (noise-free), as a level and as a quadratic.
        background = fusion.pixels if fusion is not None else faint_pixels(flux, aperture)
        for key, terms in (("o_level", 1), ("o_quad", 6)):
            exact = model - exact_surface(model - truth, background, terms)
            r[key] = br.rms(exact, truth, scale)
            r["sq"] += (exact - truth,)
        r["w"] = r["sm_q"] = r["sm_true"] = r["sl"] = float("nan")
        if fusion is not None:
            # The fusion's inputs: the model's level error at the background pixels, quoted
            # (what the weight uses) and actual (truth - model, averaged over those pixels).
            miss = (truth - corr.model.flux.value)[:, fusion.pixels].mean(axis=1)
            r["w"] = float(np.mean(fusion.weight))
            r["sm_q"] = float(np.sqrt(np.nanmean(fusion.model_err**2)))
            r["sm_true"] = float(np.nanstd(miss))
            r["sl"] = float(np.sqrt(np.nanmean(fusion.local_err**2)))
            # The fused variance's terms over the aperture sum (RMS over cadences).
            npix = int(aperture.sum())
            quoted_level = getattr(fusion, "quoted_level", None)  # None: older fusions
            quoted_level = [np.nan] if quoted_level is None else quoted_level
            r["terms"] = {
                key: npix * float(np.sqrt(np.nanmean(np.square(values)))) if values.size else 0.0
                for key, values in (
                    ("level", fusion.model_err),
                    ("quoted there", np.sqrt(np.asarray(quoted_level))),
                    ("offset", np.sqrt(fusion.offset_var)),
                    ("shape", np.sqrt(fusion.shape_var)),
                )
            }
        rows.append(r)
    return {
        "name": name,
        "field": repr(field),
        "bins": bin_honesty(sim, cube, used),
        "rows": rows,
        "scale": scale,
        "used": used.size,
        "frames": n,
        "t_frames": t_frames,
        "t_build": t_build,
    }


def by_block(cube, tpf, aperture, actual, quoted, good) -> dict:
    """The aperture sum's actual and quoted errors (model alone) split by whether the fine
    layer has a block at the aperture in the plane (part 4's cadences are the cube's planes).

    Returns the planes with a block, RMS actual and quoted in those planes and in the others,
    and the planes whose actual error exceeds 3x the quote with their share of actual**2.
    """
    planes = np.flatnonzero(good)
    block = np.zeros(planes.size, bool)
    if cube.fine is not None:
        rows, cols = tpf.rows[aperture.any(axis=1)], tpf.columns[aperture.any(axis=0)]
        out = cube.fine.evaluate(planes, planes, np.zeros(planes.size), rows, cols)
        if out is not None:
            block = np.asarray(out[1] > 0).any(axis=(1, 2))

    def rms(x) -> float:
        return float(np.sqrt(np.mean(np.square(x)))) if x.size else float("nan")

    big = np.abs(actual) > 3 * quoted
    return {
        "blocks": int(block.sum()),
        "in": (rms(actual[block]), rms(quoted[block])),
        "out": (rms(actual[~block]), rms(quoted[~block])),
        "big": planes[big].tolist(),
        "big share": float(np.sum(actual[big] ** 2) / max(np.sum(actual**2), 1e-300)),
    }


def bin_honesty(sim, cube, used: np.ndarray) -> dict:
    """The cube's honesty at its bin centres and midpoints, and how its bins' errors correlate.

    Evaluated at the pixels nearest the bin centres (where the interpolation reads one
    bin) and midway between them (where it mixes four, as ``sum w**2 var`` assuming
    independent bins), against the truth, each pixel's time mean removed; interior bins
    (at least 4 from the CCD's edges). Returns the per-bin act/q's median and 10-90 %
    range, its pooled values at centres and midpoints, and the median correlation over
    time of neighbouring bins' errors (along rows and columns).
    """
    import bench_regional as br

    def miss_and_err(rows, cols):
        ev = cube.evaluate(cube.btjd, rows, cols)
        miss = ev.flux.value - br.truth_at(sim, used, rows, cols)
        return miss - miss.mean(axis=0), ev.flux_err.value

    centre_rows, centre_cols = np.round(cube.row).astype(int), np.round(cube.column).astype(int)
    miss, err = miss_and_err(centre_rows, centre_cols)
    inner = (slice(None), slice(4, -4), slice(4, -4))
    miss, err = miss[inner], err[inner]
    per_bin = np.sqrt(np.mean(miss**2, axis=0) / np.mean(err**2, axis=0)).ravel()
    mid_miss, mid_err = miss_and_err(
        np.round((cube.row[1:] + cube.row[:-1]) / 2).astype(int),
        np.round((cube.column[1:] + cube.column[:-1]) / 2).astype(int),
    )
    mid_miss, mid_err = mid_miss[inner], mid_err[inner]

    def correlation(a, b):
        return np.median(np.sum(a * b, 0) / np.sqrt(np.sum(a * a, 0) * np.sum(b * b, 0)))

    return {
        "median": float(np.median(per_bin)),
        "p10": float(np.percentile(per_bin, 10)),
        "p90": float(np.percentile(per_bin, 90)),
        "centres": float(np.sqrt(np.mean(miss**2) / np.mean(err**2))),
        "midpoints": float(np.sqrt(np.mean(mid_miss**2) / np.mean(mid_err**2))),
        "rows": float(correlation(miss[:, 1:], miss[:, :-1])),
        "columns": float(correlation(miss[:, :, 1:], miss[:, :, :-1])),
    }


def pooled(rows, scale) -> tuple[float, ...]:
    """RMS (% of scale) of (a), (b), (c) and the two ceilings over every TPF's pixels and
    cadences."""
    out = []
    for k in range(5):
        res = np.concatenate([(r["sq"][k] - r["sq"][k].mean(axis=0)).ravel() for r in rows])
        out.append(float(100 * np.sqrt(np.mean(res**2)) / scale))
    return tuple(out)


def print_field(info: dict) -> None:
    print(f"\n  {info['name']} field: {info['field']}")
    print(
        f"    {info['used']} of {info['frames']} frames in the cube; truth p1..p99 range "
        f"{info['scale']:.1f} e-/s; frames {info['t_frames']:.0f} s, whole-CCD build "
        f"{info['t_build']:.0f} s"
    )
    print(
        f"    {'class':11s} {'TPF':20s} {'row,col':>9s} {'(a)model':>8s} {'(b)local':>8s} "
        f"{'(c)fused':>8s} {'c/min':>6s} {'lvl*':>6s} {'quad*':>6s} {'w':>5s} {'sM used':>7s} "
        f"{'sM true':>7s} {'sL':>5s} "
        f"{'err act':>7s} {'quoted':>6s} {'act/q':>5s} {'| a: act/q':>10s}  note"
    )
    for r in info["rows"]:
        t = r["tpf"]
        ratio = r["c"] / min(r["a"], r["b"])
        honest = r["actual"] / r["quoted"]
        flags = []
        if ratio > SCORE_AIM:
            flags.append(f"c/min > {SCORE_AIM}")
        if not HONEST[0] <= honest <= HONEST[1]:
            flags.append(f"act/q outside {HONEST[0]}..{HONEST[1]}")
        if not r["fused"]:
            flags.append("no fusion (too few background pixels)")
        note = ", ".join(([r["note"]] if r["note"] else []) + flags)
        print(
            f"    {t.kind:11s} {t.name:20s} {f'{t.row},{t.column}':>9s} {r['a']:8.3f} "
            f"{r['b']:8.3f} {r['c']:8.3f} {ratio:6.2f} {r['o_level']:6.3f} {r['o_quad']:6.3f} "
            f"{r['w']:5.2f} {r['sm_q']:7.3f} {r['sm_true']:7.3f} {r['sl']:5.3f} "
            f"{r['actual']:7.2f} {r['quoted']:6.2f} "
            f"{honest:5.2f} {r['model actual'] / r['model quoted']:10.2f}  {note}"
        )
    a, b, c, level, quad = pooled(info["rows"], info["scale"])
    ratios = np.array([r["c"] / min(r["a"], r["b"]) for r in info["rows"]])
    honest = np.array([r["actual"] / r["quoted"] for r in info["rows"]])
    print(
        f"    pooled over {len(info['rows'])} TPFs: (a) {a:.3f}  (b) {b:.3f}  (c) {c:.3f}; "
        f"min(a,b)/c = {min(a, b) / c:.2f} (aim >= {POOL_AIM} on the structured field)"
    )
    print(
        f"    ceiling: the model with its miss at the background pixels removed exactly, "
        f"as a level {level:.3f}, as a quadratic {quad:.3f}: min(a,b)/that = "
        f"{min(a, b) / level:.2f}, {min(a, b) / quad:.2f}"
    )
    print(
        f"    c/min(a,b) <= {SCORE_AIM}: {int(np.sum(ratios <= SCORE_AIM))} of {ratios.size} "
        f"TPFs (median {np.median(ratios):.2f}, max {ratios.max():.2f}); error act/quoted in "
        f"{HONEST[0]}..{HONEST[1]}: {int(np.sum((honest >= HONEST[0]) & (honest <= HONEST[1])))}"
        f" of {honest.size} (median {np.median(honest):.2f})"
    )


def print_honesty(info: dict, blocks: bool = False) -> None:
    """Error honesty of the fused background per kind of TPF, pooled over its TPFs; with
    ``blocks``, the model's aperture-sum errors split by planes with and without a fine
    block at the aperture (`by_block`)."""
    print(f"\n  {info['name']} field: {info['used']} of {info['frames']} frames in the cube")
    print(
        f"    {'kind':11s} {'TPFs':>4s} {'fused act/q':>11s} {'model act/q':>11s} "
        f"{'pixel act/q':>11s}  per TPF"
    )
    kinds = dict.fromkeys(r["tpf"].kind for r in info["rows"])
    inside = 0
    for kind in kinds:
        rows = [r for r in info["rows"] if r["tpf"].kind == kind]
        ratio = {
            key: np.sqrt(
                np.mean([r[key + "actual"] ** 2 for r in rows])
                / np.mean([r[key + "quoted"] ** 2 for r in rows])
            )
            for key in ("", "model ", "pixel ")
        }
        inside += HONEST[0] <= ratio[""] <= HONEST[1]
        each = ", ".join(f"{r['actual'] / r['quoted']:.2f}" for r in rows)
        print(
            f"    {kind:11s} {len(rows):4d} {ratio['']:11.2f} {ratio['model ']:11.2f} "
            f"{ratio['pixel ']:11.2f}  {each}"
        )
    print(f"    fused act/q in {HONEST[0]}..{HONEST[1]}: {inside} of {len(kinds)} kinds")
    print(
        "    per TPF, aperture sums [e-/s], RMS over cadences: actual and quoted error, model "
        "alone -> fused; the fusion's level error (model_err), the model's quote at the "
        "background pixels (quoted_level), offset_var, shape_var (each x n pixels)"
    )
    for r in info["rows"]:
        terms = r.get("terms", {})
        print(
            f"    {r['tpf'].kind:11s} {r['tpf'].name:20s} act {r['model actual']:5.2f} -> "
            f"{r['actual']:5.2f}, quoted {r['model quoted']:5.2f} -> {r['quoted']:5.2f}; "
            + ", ".join(f"{key} {value:5.2f}" for key, value in terms.items())
        )
    if blocks:
        print(
            "    model alone, aperture sum act / quoted [e-/s] in the planes with a fine block "
            "at the aperture and in the others; planes with |act| > 3 quoted (share of act**2)"
        )
        for r in info["rows"]:
            b = r["by block"]
            print(
                f"    {r['tpf'].kind:11s} {r['tpf'].name:20s} {b['blocks']:3d} with a block: "
                f"{b['in'][0]:5.2f} / {b['in'][1]:5.2f}; without: {b['out'][0]:5.2f} / "
                f"{b['out'][1]:5.2f}; {b['big']} ({b['big share']:.2f})"
            )
    b = info["bins"]
    print(
        f"    the cube per interior bin: act/q median {b['median']:.2f}, 10-90 % "
        f"{b['p10']:.2f}..{b['p90']:.2f}; pooled at bin centres {b['centres']:.2f}, midway "
        f"between bins {b['midpoints']:.2f}; neighbouring bins' errors correlate "
        f"{b['rows']:.2f} (rows), {b['columns']:.2f} (columns)"
    )


# ============================================================================ parts 2 and 3
def synthetic_setup(ncad: int, structured: bool = True):
    """A 2-min TPF on the structured field's ridge path and a smooth-field 200-s cube.

    With ``structured=False`` the TPF shows the smooth field, which the cube models.
    """
    from lk_scatterlight import simulate
    from lk_scatterlight.simulate import ScatteredLightField, make_cube, make_tpf, sector_times

    cube = make_cube(ScatteredLightField(), pixel_bin=64, time=sector_times(1, cadence=200.0))
    times = sector_times(1, cadence=120.0)[:ncad]
    rng = np.random.default_rng(7)
    c = TPF // 2
    rows = np.r_[c + 0.2, rng.uniform(-1, TPF, 8)]
    cols = np.r_[c - 0.3, rng.uniform(-1, TPF, 8)]
    fluxes = 15000 * 10 ** (-0.4 * (np.r_[10.0, rng.uniform(13, 16, 8)] - 10))
    star = simulate._render_stars(rows[:1], cols[:1], fluxes[:1], (TPF, TPF))
    static = 30.0 + star + simulate._render_stars(rows[1:], cols[1:], fluxes[1:], (TPF, TPF))
    # Rows 1000.., columns 1100..: the ridge (0.6 rr + 0.8 cc - 300 + 400 sweep = 0) crosses it.
    tpf = make_tpf(
        ScatteredLightField(structured=structured),
        1000,
        1100,
        shape=(TPF, TPF),
        time=times,
        static=static,
    )
    return tpf, cube, star, times


def run_signal(tpf, cube, star, times) -> list[dict]:
    aperture = brightest_aperture(np.median(tpf.hdu[1].data["FLUX"], axis=0))
    period, depth, amp = 3.7, 0.01, 0.10
    box = (np.mod(times - times[0] - 1.0, period) < 0.2).astype(float)
    sine = np.sin(2 * np.pi * (times - times[0]) / 3.0 + 0.4)
    signal = -depth * box + amp * sine  # signal(t) - 1
    base = np.asarray(tpf.hdu[1].data["FLUX"], float)

    def corrected(t):
        corr = corrector(t, cube, aperture, fuse=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lc = corr.correct()
        return lc.flux.value, corr

    ref, corr = corrected(tpf)
    weight = float(np.mean(corr.fusion.weight)) if corr.fusion is not None else float("nan")
    out = []
    for label, image in (("aperture only", star * aperture), ("whole star image", star)):
        flux = base + signal[:, None, None] * image[None]
        got, _ = corrected(with_flux(tpf, flux))
        rel = (got - ref) / star[aperture].sum()
        good = np.isfinite(rel)
        cosine = np.cos(2 * np.pi * (times - times[0]) / 3.0 + 0.4)
        design = np.column_stack([box, sine, cosine, np.ones_like(box)])[good]
        coef, *_ = np.linalg.lstsq(design, rel[good], rcond=None)
        out.append(
            {
                "label": label,
                "depth": -coef[0] / depth,
                "amp": np.hypot(coef[1], coef[2]) / amp,
                "wing": float(image[~aperture].sum() / image[aperture].sum()),
                "weight": weight,
                "ntransit": int(np.sum(np.diff(np.r_[0, box]) > 0)),
            }
        )
    return out


def run_cost(tpf, cube, repeats: int, method: str = "correct_tpf") -> dict:
    """CPU seconds of ``correct_tpf()`` (or ``correct()``) without and with fusion, runs
    interleaved."""
    aperture = brightest_aperture(np.median(tpf.hdu[1].data["FLUX"], axis=0))
    out = {False: [], True: []}
    for _ in range(repeats):
        for fuse in (False, True):
            corr = corrector(tpf, cube, aperture, fuse)
            t0 = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(corr, method)()
            out[fuse].append(time.process_time() - t0)
    return out


def run_fuse_alone(tpf, cube, repeats: int) -> np.ndarray:
    """CPU seconds of the fusion step alone, as ``correct_tpf()`` runs it: ``fuse()`` on
    FLUX and the model (given; it forms flux minus model only where it reads it) with the
    model's quoted variance and ``FLUX_ERR**2``, then its correction added to the model
    and its variance (``Fusion.add_to``, ``Fusion.variance`` in place, with the quoted
    variance's row sums, as ``correct_tpf()`` calls them)."""
    aperture = brightest_aperture(np.median(tpf.hdu[1].data["FLUX"], axis=0))
    corr = corrector(tpf, cube, aperture, True)
    table = tpf.hdu[1].data
    times = np.asarray(table["TIME"], float)
    model = cube.evaluate(times, corr.rows, corr.columns, bounds="nan")
    # Contiguous native copies, as correct_tpf() reads them (a table column is strided).
    flux, flux_err = (
        np.ascontiguousarray(table[name], dtype=np.float32) for name in ("FLUX", "FLUX_ERR")
    )
    model_flux, model_err = model.flux.value, model.flux_err.value
    flux_var = np.square(flux_err)  # correct_tpf() squares FLUX_ERR anyway and passes it
    out = np.empty((repeats, 2))
    for k in range(repeats):
        fused_flux, fused_var = model_flux.copy(), np.square(model_err)
        t0 = time.process_time()
        fusion = corr._fuse(times, flux, flux_err, model.valid, fused_flux, fused_var, flux_var)
        t1 = time.process_time()
        if fusion.changed().size:  # as correct_tpf() does
            fusion.add_to(fused_flux)
            fusion.variance(fused_var, out=fused_var, row_sums=fusion.quoted_sum)
        out[k] = t1 - t0, time.process_time() - t1
    return out


def print_cost(tpf, cube, ncad: int, repeats: int) -> None:
    """Part 3: the cost of fusion in ``correct_tpf()``, of its steps, and in ``correct()``."""
    print(
        f"\n3. Cost of correct_tpf() for the {TPF}x{TPF} TPF, {ncad} cadences, cube of "
        f"{cube.shape[0]} planes: median of {repeats} interleaved runs, CPU [s]; the TPF of "
        "part 2 (the model misses the ridge: level and surface fused on every day), and the "
        "same TPF on the smooth field the cube models (little to fuse)"
    )
    print(f"   {'TPF':10s} {'fuse':5s} {'median':>7s}  runs")
    tpfs = (("structured", tpf), ("smooth", synthetic_setup(ncad, structured=False)[0]))
    for label, which in tpfs:
        cost = run_cost(which, cube, repeats)
        for fuse, cpu in cost.items():
            runs = ", ".join(f"{w:.3f}" for w in cpu)
            print(f"   {label:10s} {fuse!s:5s} {np.median(cpu):7.3f}  {runs}")
        ratios = np.array(cost[True]) / np.array(cost[False])
        q1, ratio, q3 = np.percentile(ratios, [25, 50, 75])
        added = 1e3 * np.percentile(np.subtract(cost[True], cost[False]), [25, 50, 75])
        print(
            f"   {label:10s} fused / model alone (median of paired runs): {ratio:.3f} (aim < 1.10; "
            f"quartiles {q1:.3f}..{q3:.3f}); fusion adds {added[1]:.1f} ms ({added[0]:.1f}.."
            f"{added[2]:.1f})"
        )
    print(
        f"   the fusion's steps, median of {3 * repeats} runs, CPU [ms]: fuse() on FLUX "
        "and the model; add_to() and variance() over the TPF; and correct() (the light curve) "
        "without -> with fusion, medians and median of paired runs"
    )
    for label, which in tpfs:
        step = 1e3 * np.median(run_fuse_alone(which, cube, 3 * repeats), axis=0)
        lc = {key: np.array(cpu) for key, cpu in run_cost(which, cube, repeats, "correct").items()}
        print(
            f"   {label:10s} fuse() {step[0]:5.1f}, add_to + variance {step[1]:4.1f}; "
            f"correct() {1e3 * np.median(lc[False]):5.1f} -> {1e3 * np.median(lc[True]):5.1f} "
            f"(fused / alone {np.median(lc[True] / lc[False]):.2f})"
        )


# ============================================================================ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, TPFs, cadences")
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS threads (0: the libraries' default)"
    )
    parser.add_argument("--parts", default="1234", help="the parts to run, e.g. 3 (default 1234)")
    parser.add_argument(
        "--fields", default="smooth,structured", help="the fields of parts 1 and 4 (default both)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep the cubes and TPF pixels of parts 1 and 4 here and reuse them (a debugging aid)",
    )
    parser.add_argument(
        "--by-block",
        action="store_true",
        help="part 4: split each aperture sum's errors by planes with and without a fine block",
    )
    args = parser.parse_args()
    import bench_regional as br

    if args.blas_threads > 0:
        br.restart_with_blas_threads(args.blas_threads, __file__)

    import lk_scatterlight
    from lk_scatterlight.simulate import ScatteredLightField, sector_times

    start = time.perf_counter()
    all_t = sector_times(1)
    gap, n_start, n_after, frames = br.perigee_frames(all_t, args.quick)
    print(
        f"bench_fusion: lk_scatterlight {lk_scatterlight.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, {args.blas_threads or 'default'} BLAS thread(s), load average "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print(
        f"\n1. Accuracy: sector 1 (30-min FFIs), frames 0..{n_start - 1} and {gap}.."
        f"{gap + n_after - 1}; {TPF}x{TPF} TESSCut-like TPFs, {AP}x{AP} brightest aperture"
    )
    print(
        "   RMS of (background removed - truth) minus each pixel's time mean, % of the truth's "
        "p1..p99 range; (a) model alone, (b) TPF-local median, (c) fused;\n"
        "   w: mean fusion weight; sM used, sM true, sL: the model's level error at the fusion's "
        "background pixels as fusion.py measured it (for the errors) and as it is\n"
        "   (RMS over cadences of truth - model averaged over those pixels, time mean removed), "
        "and the local estimate's error [e-/s per pixel];\n"
        "   err act / quoted: RMS of the fused model_lc - truth over the aperture (time mean "
        f"removed) and RMS of its flux_err [e-/s] (aim {HONEST[0]}..{HONEST[1]}); "
        "a: act/q: the same for fuse=False"
    )
    fields = [
        (name, field)
        for name, field in (
            ("smooth", ScatteredLightField(seed=2)),
            ("structured", ScatteredLightField(structured=True)),
        )
        if name in args.fields.split(",")
    ]
    if "1" in args.parts:
        with tempfile.TemporaryDirectory(prefix="bench_fusion_") as tmp:
            for name, field in fields:
                print_field(run_field(name, field, frames, args.quick, Path(tmp), args.cache))
        print(f"   [accuracy section: {time.perf_counter() - start:.0f} s]")

    t0 = time.perf_counter()
    ncad = 4000 if args.quick else 12000
    if "2" in args.parts or "3" in args.parts:
        tpf, cube, star, times = synthetic_setup(ncad)
    if "2" in args.parts:
        print(
            f"\n2. Signal preservation: make_tpf {TPF}x{TPF}, {ncad} 2-min cadences (BTJD "
            f"{times[0]:.2f}..{times[-1]:.2f}), structured field at row 1000, column 1100, target "
            f"Tmag 10; cube: make_cube of the smooth field, 64-px bins, 200 s"
        )
        print(
            "   injected: 1% box transits (0.2 d, every 3.7 d) + 10% sinusoid (3 d); recovered / "
            "injected from the fused corrected LC minus the unsignalled one (aim 0.98..1.02)"
        )
        print(
            f"   {'injected into':17s} {'transits':>8s} {'star flux out/in ap':>19s} "
            f"{'mean w':>6s} {'depth':>6s} {'amplitude':>9s}"
        )
        for r in run_signal(tpf, cube, star, times):
            print(
                f"   {r['label']:17s} {r['ntransit']:8d} {r['wing']:19.3f} {r['weight']:6.2f} "
                f"{r['depth']:6.3f} {r['amp']:9.3f}"
            )
        print(f"   [signal section: {time.perf_counter() - t0:.0f} s]")

    if "3" in args.parts:
        t0 = time.perf_counter()
        print_cost(tpf, cube, ncad, 3 if args.quick else 21)
        print(f"   [cost section: {time.perf_counter() - t0:.0f} s]")
    if "4" in args.parts:
        t0 = time.perf_counter()
        nhonest = 32 if args.quick else 96
        spread = np.linspace(0, all_t.size - 1, nhonest).round().astype(int)
        print(
            f"\n4. Error honesty per kind over a longer sequence: {nhonest} frames spread over "
            "the sector (one every ~7 h), the TPFs and cubes as in part 1; act/q: RMS of "
            "model_lc - truth over the aperture (time mean removed) / RMS of its flux_err, pooled "
            f"over the kind's TPFs (aim {HONEST[0]}..{HONEST[1]}); fused and fuse=False"
        )
        with tempfile.TemporaryDirectory(prefix="bench_fusion_") as tmp:
            for name, field in fields:
                info = run_field(name, field, spread, args.quick, Path(tmp), args.cache)
                print_honesty(info, args.by_block)
        print(f"   [honesty section: {time.perf_counter() - t0:.0f} s]")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
