"""Benchmark the cube builder: accuracy against simulated truth, speed, peak memory.

Run: ``python benchmarks/bench_build.py [--frames N] [--quick]``. Prints numbers;
asserts nothing. With the default 2-px fine layer the accuracy section alone takes
~16 minutes of CPU by default (about an hour of wall time on a heavily loaded 2-core
machine; ~4.5 minutes in all on an idle one with the earlier 4-px bins); ``--quick``
uses 40 frames and fewer files.

1. **Accuracy, as a corrector uses the cube.** Simulated sector-1 FFIs
   (`FFISimulator`, 30-min cadence) of (a) a smooth field and (b) the structured
   field (narrow glint ridge + sharp baffle shadow edge) are built into cubes with
   ``build_cube(SimulatedFFISource(sim), BuildConfig(pixel_bin=16))`` and with a
   2-hour time binning (``time_bin=2/24``). Frames: ``N`` (default 120) taken where
   the scattered light changes most, per orbit: the first ``N/3`` frames at full
   cadence from the orbit start (just after perigee), the last ``N/12`` frames at
   full cadence before the orbit end (orbit 1 ends rising into the next
   perigee), and the rest spread evenly in between (this also provides the dark
   frames of the static scene). Frames the quality mask drops (momentum dumps,
   coarse point, glint) are left out by matching the cube's plane times.

   Each cube is evaluated with ``cube.evaluate`` on 15 x 15-pixel TPF-like patches
   at the frame times and compared with ``sim.truth(i)``, after removing each
   pixel's constant offset (mean over time of model - truth: a static-scene
   subtraction cannot see it). Patch classes: ``sky`` (away from bright stars,
   bleeds, straps and edges), ``bright star`` (the patch edge 3 px from a
   Tmag < 9.5 star), ``strap`` (a patch holding a whole group of strap
   columns), ``bleed`` (beside the saturated bleed columns of
   ``sim.saturated_mask()``), ``edge`` (flush with row 1, row 2048, column 45,
   column 2092, at their middles) and ``corner``; plus, for the structured
   field's features, ``shadow edge`` (straddling the 6-px shadow edge at
   column 1318.5) and ``ridge`` (on the glint ridge's median position over the
   frames; it sweeps ~400 px over an orbit, ~60 px over the full-cadence
   stretches), which are ordinary sky for the smooth field.

   The RMS residual is quoted in percent of the scattered-light range: p99 - p1 of
   the truth over the used frames and the whole CCD (every 4th pixel in rows and
   columns). ``rms`` pools all pixels and times of the class; ``worst`` is the
   largest single-patch RMS. Columns:

   * ``cube``: the per-frame build (``compact=False``, dense; with its fine
     layer, the builder's default), with ``σ``: the RMS of the uncertainty
     ``evaluate`` reports (``flux_err``) for the same pixels and times: where
     ``rms ~ σ`` the residual is the bins' noise, not a bias;
   * ``cube, no fine layer``: the same build with ``fine_bin=0``: what the
     16-px bins alone give;
   * ``cube compressed``: the same cube after ``cube.compress()`` with the
     builder's default tolerance (truncated SVD), i.e. what ``build_cube`` returns
     with its default ``BuildConfig(compact=True)``; it also averages noise down;
   * ``cube 2h``: the 2-hour build (default config), evaluated at the same frame
     times (the cube interpolates linearly between 2-h planes);
   * ``spline peer (em.)``: a "smooth spline per frame" method, emulated: per
     frame, a tensor-product cubic B-spline with knots every 48 px fitted by least
     squares to the dense cube's own 16-px planes (static-subtracted, masked,
     binned data), evaluated at the patches with the same strap response, so only
     the spatial model differs;
   * ``point-sampled grid``: a cube whose planes are the exact truth at the
     16-px bin centres (and the true strap response), evaluated the same way: the
     error of point samples on a 16-px grid plus the cube's interpolation, without
     noise. Not a strict floor: the builder's bin fit averages structure narrower
     than a bin, which can do better than point samples of it.

   Also printed: the fine layer's size (blocks, tiles kept per plane, basis
   images, MB against the raw blocks) and the compressed cube's file size; and
   for the ``bleed`` class the RMS over only the pixels >= 8 px from any
   saturated pixel (those patches reach into the masked halo of saturated
   stars, where no frame measures the light).

   Targets (issue): < 0.05 % on the smooth field and < 0.3 % on the structured
   field, in every class. Published per-frame smooth-spline methods reach
   ~0.02-0.04 % on smooth fields, ~1 % on the structured one.

2. **Speed from local files.** ``FFISimulator.write_ffis`` writes frames as
   SPOC-like ``*ffic.fits`` files (~36 MB each) to a temporary folder; a child
   process pinned to one CPU (``sched_setaffinity``, one BLAS thread) opens them
   with `LocalFFISource` and times each step of ``build_cube``'s per-frame work
   with the functions it uses: read (``LocalFFISource.read``, from the page
   cache and after evicting the file with ``posix_fadvise(DONTNEED)``), static
   subtraction, ``binning.bin_plane_fit``, ``fill_empty_bins``,
   ``curvature_correction``, ``_strap_sums``, ``fine.fine_residual`` (and
   ``process_frame``, all of them but the read, as a cross-check; and, apart,
   the fine pass's strap sums of the whole frame, ``_frame_strap_sums``); and the
   once-per-build static scene (``static_scene``) and masks (``make_context``).
   Then the wall time of ``build_cube`` end to end over the same files, on one
   core and on all cores, split into its stages (static scene, masks, streaming pass, assembly incl.
   compression) by wrapping the pipeline's stage functions. Aim: < 0.05 s per
   frame on one core (existing tools: 1-1.5 s per frame); the cold read is the
   floor.

3. **Peak memory.** ``build_cube`` over N local files for two N (20 and 60),
   each in a fresh child process (started through ``/bin/sh`` so it does not
   inherit this process's ``ru_maxrss``), reporting
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` before the build (imports +
   opened source), right after the static scene and at the end (with VmHWM as a
   cross-check). Run with glibc's default (dynamic) mmap threshold and with a
   fixed 1 MiB one (``MALLOC_MMAP_THRESHOLD_``), which returns freed large
   arrays to the system at once: the difference is allocator retention, not
   data the build keeps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PATCH = 15  # patch side [px]
ROW_RANGE = (1, 2048)
COLUMN_RANGE = (45, 2092)
SIM_SEED = 0  # stars, straps, noise, defects
SMOOTH_SEED = 2  # geometry of the smooth field
SPLINE_KNOT_SPACING = 48  # [px]
TARGETS = {"smooth": 0.05, "structured": 0.3}  # [% of range]
TARGET_CLASSES = ("sky", "bright star", "strap", "bleed", "edge", "corner")
EXTRA_CLASSES = ("shadow edge", "ridge")
SHADOW_COLUMN = 1068.5 + 250  # CCD column of the structured field's shadow edge
BIN = 16
REPEATS = 3  # end-to-end builds timed per configuration (best is quoted)


# ============================================================================ frame choice
def select_times(n_frames: int, cadence: float = 1800.0) -> np.ndarray:
    """Sector-1 frame times where the scattered light changes most (see module doc).

    ``cadence`` [s]: the FFI cadence the frames are taken from.
    """
    from lk_scatterlight.simulate import sector_times

    all_t = sector_times(1, cadence=cadence)
    split = int(np.argmax(np.diff(all_t))) + 1  # the orbit gap
    chosen = []
    per_orbit = n_frames // 2
    n_start = per_orbit // 3 * 2
    n_end = per_orbit // 6
    n_spread = per_orbit - n_start - n_end
    for orbit in (all_t[:split], all_t[split:]):
        middle = orbit[n_start:-n_end] if n_end else orbit[n_start:]
        picks = np.linspace(0, middle.size - 1, n_spread + 2)[1:-1].round().astype(int)
        parts = [orbit[:n_start], middle[picks]]
        if n_end:
            parts.append(orbit[-n_end:])
        chosen.append(np.concatenate(parts))
    return np.unique(np.concatenate(chosen))


# ============================================================================ patches
@dataclass
class Patch:
    kind: str
    name: str
    row: int  # first CCD row (1-based)
    column: int  # first CCD column (1-based, science columns 45..2092)

    @property
    def rows(self) -> np.ndarray:
        return self.row + np.arange(PATCH)

    @property
    def columns(self) -> np.ndarray:
        return self.column + np.arange(PATCH)

    def science(self) -> tuple[slice, slice]:
        r0, c0 = self.row - ROW_RANGE[0], self.column - COLUMN_RANGE[0]
        return slice(r0, r0 + PATCH), slice(c0, c0 + PATCH)


def _clamp(row: float, column: float) -> tuple[int, int]:
    row = int(np.clip(round(row), ROW_RANGE[0], ROW_RANGE[1] - PATCH + 1))
    column = int(np.clip(round(column), COLUMN_RANGE[0], COLUMN_RANGE[1] - PATCH + 1))
    return row, column


def _touches_strap(column: int, margin: int = 0) -> bool:
    from lk_scatterlight.builder.straps import STRAP_CCD_COLUMNS

    straps = np.asarray(STRAP_CCD_COLUMNS)
    return bool(np.any((straps >= column - margin) & (straps < column + PATCH + margin)))


def median_sweep(field, times: np.ndarray) -> float:
    """Median of the field's glow-front sweep parameter over the frames (places the ridge)."""
    from lk_scatterlight.simulate import ORBIT_DAYS

    phase = np.mod(times - field.t0, ORBIT_DAYS) / ORBIT_DAYS
    return float(np.median(0.5 - 0.5 * np.cos(2 * np.pi * phase)))


def choose_patches(sim, sweep: float) -> list[Patch]:
    """Patches of every class, from the simulator's stars, bleeds and strap layout."""
    from scipy import ndimage

    from lk_scatterlight.builder.straps import strap_groups

    patches: list[Patch] = []
    mid_r, mid_c = 1024.5 - PATCH // 2, 1068.5 - PATCH // 2
    lo_r, hi_r = ROW_RANGE[0], ROW_RANGE[1] - PATCH + 1
    lo_c, hi_c = COLUMN_RANGE[0], COLUMN_RANGE[1] - PATCH + 1
    for name, r, c in (
        ("row 1", lo_r, mid_c),
        ("row 2048", hi_r, mid_c),
        ("column 45", mid_r, lo_c),
        ("column 2092", mid_r, hi_c),
    ):
        patches.append(Patch("edge", name, *_clamp(r, c)))
    for name, r, c in (
        ("row 1, col 45", lo_r, lo_c),
        ("row 1, col 2092", lo_r, hi_c),
        ("row 2048, col 45", hi_r, lo_c),
        ("row 2048, col 2092", hi_r, hi_c),
    ):
        patches.append(Patch("corner", name, *_clamp(r, c)))

    stars = sim.stars
    saturated = sim.saturated_mask()
    sat_rows, sat_cols = np.nonzero(saturated)
    sat_rows, sat_cols = sat_rows + ROW_RANGE[0], sat_cols + COLUMN_RANGE[0]

    def near_saturation(row, column, distance):
        if sat_rows.size == 0:
            return False
        dr = np.maximum(0, np.maximum(row - sat_rows, sat_rows - (row + PATCH - 1)))
        dc = np.maximum(0, np.maximum(column - sat_cols, sat_cols - (column + PATCH - 1)))
        return bool(np.any(np.hypot(dr, dc) < distance))

    def near_bright_star(row, column, distance, tmag=9.5):
        bright = stars["tmag"] < tmag
        r, c = stars["row"][bright], stars["column"][bright]
        dr = np.maximum(0, np.maximum(row - r, r - (row + PATCH - 1)))
        dc = np.maximum(0, np.maximum(column - c, c - (column + PATCH - 1)))
        return bool(np.any(np.hypot(dr, dc) < distance))

    # Bleeds: both sides of each saturated trail, 4 px beyond it (past the mask's 3-px growth).
    labels, n = ndimage.label(saturated, structure=np.ones((3, 3)))
    for k, (rs, cs) in enumerate(ndimage.find_objects(labels)):
        r_mid = (rs.start + rs.stop - 1) / 2 + ROW_RANGE[0] - PATCH // 2
        c_lo, c_hi = cs.start + COLUMN_RANGE[0], cs.stop - 1 + COLUMN_RANGE[0]
        for side, c in (("right", c_hi + 4), ("left", c_lo - 4 - PATCH + 1)):
            row, column = _clamp(r_mid, c)
            tag = " +strap" if _touches_strap(column) else ""
            patches.append(Patch("bleed", f"trail {k + 1} {side}{tag}", row, column))

    # Bright (unsaturated) stars: patch edge 3 px from the star, alternating sides.
    order = np.argsort(stars["tmag"])
    n_star = 0
    for i in order:
        if stars["tmag"][i] >= 9.5 or n_star == 4:
            break
        r, c = stars["row"][i], stars["column"][i]
        if not (60 < r < 1988 and 105 < c < 2032):
            continue
        for side in ("right", "left") if n_star % 2 == 0 else ("left", "right"):
            c0 = round(c) + 3 if side == "right" else round(c) - 3 - PATCH + 1
            row, column = _clamp(r - PATCH // 2, c0)
            if not _touches_strap(column, 2) and not near_saturation(row, column, 60):
                name = f"Tmag {stars['tmag'][i]:.1f} {side}"
                patches.append(Patch("bright star", name, row, column))
                n_star += 1
                break

    # Straps: a whole group of strap columns centred in the patch, at assorted rows.
    groups = strap_groups()
    wanted = {121: 300, 717: 1500, 1017: 900, 1417: 1200, 2007: 1800}
    for first, row in wanted.items():
        members = [c for g in groups for c in g if first <= c <= first + 9]
        c0 = (min(members) + max(members)) / 2 - PATCH // 2
        patches.append(
            Patch("strap", f"columns {min(members)}-{max(members)}", *_clamp(row - 7, c0))
        )

    # Ordinary sky: deterministic random interior positions away from everything above.
    rng = np.random.default_rng(12345)
    taken = [(p.row, p.column) for p in patches]
    n_sky = 0
    while n_sky < 8:
        row = int(rng.integers(100, 1948))
        column = int(rng.integers(145, 1992))
        if _touches_strap(column, 3) or near_saturation(row, column, 40):
            continue
        if near_bright_star(row, column, 25):
            continue
        if any(abs(row - r) < 3 * PATCH and abs(column - c) < 3 * PATCH for r, c in taken):
            continue
        taken.append((row, column))
        patches.append(Patch("sky", f"r{row} c{column}", row, column))
        n_sky += 1

    # Structured-field features (ordinary sky for the smooth field).
    for row in (300, 1000, 1700):
        row, column = _clamp(row, SHADOW_COLUMN - PATCH / 2)
        patches.append(Patch("shadow edge", f"r{row}", row, column))
    # Ridge: 0.6 rr + 0.8 cc - 300 + 400 sweep = 0 (pixels from the CCD centre).
    for rr in (-700.0, -250.0, 200.0, 650.0):
        cc = (300 - 400 * sweep - 0.6 * rr) / 0.8
        row, column = _clamp(1024.5 + rr - PATCH / 2, 1068.5 + cc - PATCH / 2)
        tag = " +strap" if _touches_strap(column) else ""
        patches.append(Patch("ridge", f"r{row} c{column}{tag}", row, column))
    return patches


# ============================================================================ accuracy
def truth_samples(sim, frames: np.ndarray, patches: list[Patch]):
    """Truth at the patches for the given frames, and its p1, p99 over the whole CCD."""
    out = np.empty((frames.size, len(patches), PATCH, PATCH), dtype=np.float32)
    sub = np.empty((frames.size, 512, 512), dtype=np.float32)
    for k, i in enumerate(frames):
        truth = sim.truth(int(i))
        for j, p in enumerate(patches):
            out[k, j] = truth[p.science()]
        sub[k] = truth[::4, ::4]
    p1, p99 = np.percentile(sub, [1, 99])
    return out, float(p1), float(p99)


def evaluate_cube(cube, times: np.ndarray, patches: list[Patch], with_error: bool = False):
    """``cube.evaluate`` at every patch: flux (and its 1-sigma error), (ntime, npatch, P, P)."""
    out = np.empty((times.size, len(patches), PATCH, PATCH), dtype=np.float32)
    err = np.empty_like(out)
    for j, p in enumerate(patches):
        evaluation = cube.evaluate(times, p.rows, p.columns)
        out[:, j] = evaluation.flux.value
        err[:, j] = evaluation.flux_err.value
    return (out, err) if with_error else out


def spline_peer(cube, patches: list[Patch]) -> np.ndarray:
    """Per plane: LSQ tensor-product cubic B-spline (knots every 48 px) on the bin values."""
    from scipy.interpolate import BSpline

    def knots(lo, hi):
        interior = np.arange(
            lo + SPLINE_KNOT_SPACING, hi - SPLINE_KNOT_SPACING / 2, SPLINE_KNOT_SPACING
        )
        return np.concatenate([[lo] * 4, interior, [hi] * 4])

    t_row = knots(ROW_RANGE[0] - 0.5, ROW_RANGE[1] + 0.5)
    t_col = knots(COLUMN_RANGE[0] - 0.5, COLUMN_RANGE[1] + 0.5)
    b_row = BSpline.design_matrix(cube.row, t_row, 3).toarray()
    b_col = BSpline.design_matrix(cube.column, t_col, 3).toarray()
    planes = np.asarray(cube.flux.value, dtype=float)
    # A grid least-squares fit separates: C = pinv(Br) F pinv(Bc)^T.
    coef = np.linalg.pinv(b_row) @ planes @ np.linalg.pinv(b_col).T
    out = np.empty((planes.shape[0], len(patches), PATCH, PATCH), dtype=np.float32)
    for j, p in enumerate(patches):
        e_row = BSpline.design_matrix(p.rows.astype(float), t_row, 3).toarray()
        e_col = BSpline.design_matrix(p.columns.astype(float), t_col, 3).toarray()
        e_col = e_col * cube.column_response(p.columns)[:, None]
        out[:, j] = e_row @ coef @ e_col.T
    return out


def point_grid_cube(sim, frames: np.ndarray):
    """A cube holding the exact truth at the 16-px bin centres, with the true straps."""
    from lk_scatterlight import ScatterLightCube

    centres = BIN * np.arange(2048 // BIN) + (BIN - 1) / 2
    row, column = ROW_RANGE[0] + centres, COLUMN_RANGE[0] + centres
    with np.errstate(over="ignore"):
        flux = sim.field(sim.time[frames], row, column).astype(np.float32)
    straps = sorted(sim.strap_response)
    return ScatterLightCube.from_arrays(
        sim.sector,
        sim.camera,
        sim.ccd,
        sim.time[frames],
        row,
        column,
        flux,
        np.zeros_like(flux),
        time_start=sim.tstart[frames],
        time_stop=sim.tstop[frames],
        strap_column=straps,
        strap_response=[sim.strap_response[c] for c in straps],
    )


def residual_stats(model: np.ndarray, truth: np.ndarray, scale: float) -> np.ndarray:
    """Per-patch mean square of (model - truth) after removing each pixel's time mean."""
    res = model.astype(np.float64) - truth
    res -= res.mean(axis=0, keepdims=True)
    return (res**2).mean(axis=(0, 2, 3)) / scale**2


def run_accuracy(name, field, times, patches_from, work) -> tuple[dict, object]:
    """Build both cubes of one field and return per-class stats (and the simulator)."""
    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource
    from lk_scatterlight.simulate import FFISimulator

    sim = FFISimulator(field, time=times, seed=SIM_SEED)
    patches = patches_from(sim)
    default = BuildConfig(pixel_bin=BIN)
    # The per-frame cube is built dense and compressed here exactly as build_cube does
    # by default (BuildConfig.compact), so one build gives both.
    can_choose = "compact" in {f.name for f in dataclasses.fields(BuildConfig)}
    config = BuildConfig(pixel_bin=BIN, compact=False) if can_choose else default
    t0 = time.perf_counter()
    cube = build_cube(SimulatedFFISource(sim), config, work_dir=work / f"{name}-1", progress=False)
    t_build = time.perf_counter() - t0
    if cube.is_compact:
        compressed = cube
    else:
        compressed = cube.compress(tolerance=getattr(default, "compact_tolerance", 0.01))
    t0 = time.perf_counter()
    cube2h = build_cube(
        SimulatedFFISource(sim),
        BuildConfig(pixel_bin=BIN, time_bin=2 / 24),
        work_dir=work / f"{name}-2h",
        progress=False,
    )
    t_build2h = time.perf_counter() - t0
    coarse_only = build_cube(
        SimulatedFFISource(sim),
        dataclasses.replace(config, fine_bin=0),
        work_dir=work / f"{name}-nofine",
        progress=False,
    )
    frames = np.searchsorted(sim.time, cube.btjd)
    frames = frames.clip(0, sim.time.size - 1)
    if not np.allclose(sim.time[frames], cube.btjd, rtol=0, atol=1e-6):
        msg = "cube planes do not match frame times"
        raise RuntimeError(msg)
    ftimes = sim.time[frames]
    t0 = time.perf_counter()
    truth, p1, p99 = truth_samples(sim, frames, patches)
    t_truth = time.perf_counter() - t0
    scale = p99 - p1
    flux, sigma = evaluate_cube(cube, ftimes, patches, with_error=True)
    models = {
        "cube": flux,
        "compressed": evaluate_cube(compressed, ftimes, patches),
        "cube 2h": evaluate_cube(cube2h, ftimes, patches),
        "no fine": evaluate_cube(coarse_only, ftimes, patches),
        "spline peer": spline_peer(cube, patches),
        "point grid": evaluate_cube(point_grid_cube(sim, frames), ftimes, patches),
    }
    stats = {key: residual_stats(m, truth, scale) for key, m in models.items()}
    stats["sigma"] = (sigma.astype(np.float64) ** 2).mean(axis=(0, 2, 3)) / scale**2
    # Bleed patches reach into the masked halo of saturated stars, where no frame
    # measures the light: the same statistic over their pixels >= 8 px from any
    # saturated pixel.
    from scipy import ndimage

    far = ndimage.distance_transform_edt(~sim.saturated_mask()) >= 8
    bleed_far = {}
    for key in ("cube", "no fine"):
        res = models[key].astype(np.float64) - truth
        res -= res.mean(axis=0, keepdims=True)
        ms = [
            (res[:, j][:, far[p.science()]] ** 2).mean() / scale**2
            for j, p in enumerate(patches)
            if p.kind == "bleed" and far[p.science()].any()
        ]
        bleed_far[key] = float(np.mean(ms)) if ms else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        size = compressed.write(Path(tmp) / "cube.fits").stat().st_size
    info = {
        "patches": patches,
        "stats": stats,
        "p1": p1,
        "p99": p99,
        "frames_total": sim.time.size,
        "frames_used": frames.size,
        "planes_2h": cube2h.shape[0],
        "rank": compressed.rank,
        "dense": not cube.is_compact,
        "compact_2h": cube2h.is_compact,
        "t_build": t_build,
        "t_build2h": t_build2h,
        "t_truth": t_truth,
        "strap_error": _strap_response_error(cube, sim),
        "fine": cube.fine,
        "file_mb": size / 1e6,
        "bleed_far": bleed_far,
    }
    return info, sim


def _strap_response_error(cube, sim) -> tuple[float, float, int]:
    """Median and max |measured - true| strap response, and how many straps were measured."""
    if cube.strap_column.size == 0:
        return float("nan"), float("nan"), 0
    true = np.array([sim.strap_response[c] for c in cube.strap_column.tolist()])
    err = np.abs(cube.strap_response - true)
    return float(np.median(err)), float(err.max()), int(cube.strap_column.size)


def print_accuracy(name: str, field_repr: str, info: dict) -> None:
    target = TARGETS[name]
    patches, stats = info["patches"], info["stats"]
    kinds = np.array([p.kind for p in patches])
    print(f"\n{name} field: {field_repr}")
    print(
        f"  frames {info['frames_used']} used of {info['frames_total']} "
        f"(2-h cube: {info['planes_2h']} planes, {'compact' if info['compact_2h'] else 'dense'}; "
        f"compressed cube: rank {info['rank']}); "
        f"range p1..p99 = {info['p1']:.2f}..{info['p99']:.2f} e-/s (whole CCD, every 4th px, "
        f"used frames) -> scale {info['p99'] - info['p1']:.2f} e-/s; target < {target} %"
    )
    s_med, s_max, s_n = info["strap_error"]
    print(
        f"  build {info['t_build']:.0f} s (per frame), {info['t_build2h']:.0f} s (2 h), "
        f"truth {info['t_truth']:.0f} s; strap response |measured - true|: median "
        f"{s_med:.4f}, max {s_max:.4f} over {s_n} strap columns"
    )
    fine = info["fine"]
    if fine is None:
        print(f"  fine layer: none; compressed cube file {info['file_mb']:.2f} MB")
    else:
        print(
            f"  fine layer ({fine.pixel_bin}-px bins, {fine.pixel_bin * fine.tile}-px tiles): "
            f"{len(fine)} blocks in {np.unique(fine.plane).size} planes "
            f"({len(fine) / np.unique(fine.plane).size:.0f} of {fine.ntiles**2} tiles per plane), "
            f"{fine.basis.shape[0]} basis images, {fine.nbytes / 1e6:.2f} MB "
            f"(as raw blocks {len(fine) * fine.tile**2 * 4 / 1e6:.1f} MB); compressed cube "
            f"file {info['file_mb']:.2f} MB"
        )
    groups = (
        ("cube", ("cube", "sigma")),
        ("cube, no fine layer", ("no fine",)),
        ("cube compressed", ("compressed",)),
        ("cube 2h", ("cube 2h",)),
        ("spline peer (em.)", ("spline peer",)),
        ("point-sampled grid", ("point grid",)),
    )
    widths = [6 + 13 * len(keys) for _, keys in groups]
    line1 = " ".join(f"{label:^{w}s}" for (label, _), w in zip(groups, widths, strict=True))
    line2 = " ".join(
        "".join("      σ" if k == "sigma" else "   rms  worst" for k in keys) + "      "
        for _, keys in groups
    )
    print(f"  {'':13s} {'':2s} {line1}")
    print(f"  {'class':13s} {'n':>2s} {line2}cube/compressed/2h vs target (class rms)")
    for kind in TARGET_CLASSES + EXTRA_CLASSES:
        sel = kinds == kind
        if not sel.any():
            continue
        cells, verdict = [], []
        for _, keys in groups:
            cell = ""
            for key in keys:
                ms = stats[key][sel]
                rms, worst = 100 * np.sqrt(ms.mean()), 100 * np.sqrt(ms.max())
                if key == "sigma":
                    cell += f" {rms:6.3f}"
                    continue
                cell += f" {rms:6.3f} {worst:6.3f}"
                if key in ("cube", "compressed", "cube 2h"):
                    verdict.append("ok" if rms < target else "OVER")
            cells.append(cell + " " * 6)
        note = "/".join(verdict) if kind in TARGET_CLASSES else "(extra class)"
        print(f"  {kind:13s} {sel.sum():2d} {' '.join(cells)}{note}")
    floor = stats["point grid"]
    over = [j for j in np.argsort(floor)[::-1] if 100 * np.sqrt(floor[j]) > target]
    if over:
        print(
            "  patches where truth point-sampled on the 16-px grid misses the target: "
            + "; ".join(
                f"{patches[j].kind} {patches[j].name} {100 * np.sqrt(floor[j]):.2f} %" for j in over
            )
        )
    far = info["bleed_far"]
    print(
        f"  bleed patches, pixels >= 8 px from saturated pixels only: cube "
        f"{100 * np.sqrt(far['cube']):.3f} %, no fine layer {100 * np.sqrt(far['no fine']):.3f} %"
    )
    ms = stats["cube"]
    worst = np.argsort(ms)[::-1][:5]
    print(
        "  worst patches (cube): "
        + "; ".join(
            f"{patches[j].kind} {patches[j].name} {100 * np.sqrt(ms[j]):.3f} %" for j in worst
        )
    )


# ============================================================================ speed / memory
def _evict(path: Path) -> None:
    """Drop a file from the page cache (clean pages only), so the next read hits the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def child_speed(directory: Path, n: int, steps: bool) -> dict:
    """Per-step times and end-to-end build time over the first n files (runs in a child)."""
    from lk_scatterlight import ScatterLightCube
    from lk_scatterlight.builder import binning, fine, masks, pipeline, strap_photometry
    from lk_scatterlight.builder.fine.residual import _frame_strap_sums
    from lk_scatterlight.builder.sources import LocalFFISource

    files = sorted(directory.glob("*ffic.fits"))[:n]
    config = pipeline.BuildConfig(pixel_bin=BIN)
    result: dict = {"n": len(files), "cpus": sorted(os.sched_getaffinity(0))}
    t0 = time.perf_counter()
    source = LocalFFISource(files)
    result["open"] = time.perf_counter() - t0
    if steps:
        good = masks.good_frames(source.quality, config.bitmask)
        cold, warm = [], []
        for i in range(len(files)):
            _evict(source.paths[i])
            t0 = time.perf_counter()
            source.read(i)
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            source.read(i)
            warm.append(time.perf_counter() - t0)
        result["read_cold"], result["read_warm"] = cold, warm
        t0 = time.perf_counter()
        static, _ = pipeline.static_scene(source, good, config, progress=False)
        result["static_scene"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        context = pipeline.make_context(static, config)
        result["masks"] = time.perf_counter() - t0
        names = (
            "read",
            "subtract",
            "bin_plane_fit",
            "fill",
            "curvature",
            "strap_sums",
            "fine_residual",
        )
        extra = ("process_frame", "fine_strap_sums")  # not in the total
        times = {k: [] for k in (*names, *extra)}  # (wall, CPU) pairs [s]
        c = context

        def now():
            return time.perf_counter(), time.thread_time()

        for i in np.flatnonzero(good).tolist():
            t = [now()]
            flux, flux_err = source.read(i)
            t.append(now())
            diff = flux - c.static
            t.append(now())
            binned = binning.bin_plane_fit(
                diff,
                c.weights,
                c.pixel_bin,
                clip=c.clip,
                uncertainty=flux_err,
                sums=c.mask_sums,
                min_fraction=c.min_fraction,
                static=c.static_residual,
            )
            t.append(now())
            value, error = binning.fill_empty_bins(binned.value, binned.error)
            t.append(now())
            if c.curvature_correction:
                value = binning.curvature_correction(value, binned.moments, c.pixel_bin)
                binning.curvature_error(error, binned.moments, c.pixel_bin)
            t.append(now())
            measured = strap_photometry.strap_sums(
                diff, c.clean, c.strap_idx, c.ref_idx, c.strap_rows
            )
            t.append(now())
            fine.fine_residual(diff, value, error, binned.npix, c.fine, flux_err, measured)
            t.append(now())
            for k, name in enumerate(names):
                times[name].append((t[k + 1][0] - t[k][0], t[k + 1][1] - t[k][1]))
            t0 = now()
            pipeline.process_frame(flux, context, flux_err)  # all but the read, as built
            t1 = now()
            times["process_frame"].append((t1[0] - t0[0], t1[1] - t0[1]))
            t0 = now()
            _frame_strap_sums(diff, c.fine, measured)  # fine_residual's, on the whole frame
            t1 = now()
            times["fine_strap_sums"].append((t1[0] - t0[0], t1[1] - t0[1]))
        result["steps"] = times

    # Time the stages inside the real build by wrapping the module-level functions
    # build_cube calls.
    phases: dict[str, float] = {}

    def timed(name, func):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    # The serial runner calls the stages; assembly calls the compression and fine layer.
    from lk_scatterlight.builder import assembly, runner

    runner.static_scene = timed("static scene", runner.static_scene)
    runner.make_context = timed("masks", runner.make_context)
    runner.assemble = timed("assembly", runner.assemble)
    assembly.compress_planes = timed("compress", assembly.compress_planes)  # compact path's SVD
    ScatterLightCube.compress = timed("compress", ScatterLightCube.compress)
    assembly.assemble_fine = timed("fine layer", assembly.assemble_fine)
    runs = []
    for _ in range(REPEATS):
        phases.clear()
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            pipeline.build_cube(
                LocalFFISource(files), config, work_dir=Path(tmp) / "w", progress=False
            )
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.append({"wall": wall, "cpu": cpu, **phases})
    result["build"] = runs
    result["load"] = os.getloadavg()
    return result


def child_memory(directory: Path, n: int) -> dict:
    """Peak memory of one build over the first n files (runs in a fresh child)."""
    from lk_scatterlight.builder import runner
    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import LocalFFISource

    def maxrss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    marks = {}
    static_scene = runner.static_scene  # what the serial runner calls

    def wrapped(*args, **kwargs):  # ru_maxrss is monotonic: the peak up to this point
        result = static_scene(*args, **kwargs)
        marks["static"] = maxrss()
        return result

    runner.static_scene = wrapped
    files = sorted(directory.glob("*ffic.fits"))[:n]
    source = LocalFFISource(files)
    before = maxrss()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cube = build_cube(
            source, BuildConfig(pixel_bin=BIN), work_dir=Path(tmp) / "w", progress=False
        )
        wall = time.perf_counter() - t0
    return {
        "n": len(files),
        "planes": cube.shape[0],
        "before": before,
        "static": marks.get("static", float("nan")),
        "peak": maxrss(),
        "hwm": _vm_hwm_mb(),
        "wall": wall,
        "malloc": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default"),
    }


def _vm_hwm_mb() -> float:
    """Peak resident set of this process's address space (VmHWM) [MB], a cross-check."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return float("nan")


def run_child(
    kind: str,
    directory: Path,
    n: int,
    one_core: bool = False,
    steps: bool = False,
    extra_env: dict | None = None,
):
    """Run this script as a child; returns the JSON it prints.

    The child is started through ``/bin/sh``, which forks it: a process exec'd
    straight from this (large) one would inherit its ``ru_maxrss``.
    """
    args = [sys.executable, __file__, "--child", kind, "--dir", str(directory), "--n", str(n)]
    if steps:
        args.append("--steps")
    env = dict(os.environ, **(extra_env or {}))
    preexec = None
    if one_core:
        cpu = min(os.sched_getaffinity(0))
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"

        def preexec():
            os.sched_setaffinity(0, {cpu})

    done = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit $?', "sh", *args],
        env=env,
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.stderr.write(done.stderr)
        msg = f"child {kind} failed"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_speed(one: dict, both: dict) -> None:
    ms = 1e3
    n = one["n"]
    steps = one["steps"]
    print(f"\n2. Speed from {n} local SPOC-like FFI files (LocalFFISource; ~36 MB each)")
    print(
        f"  per step, median over {len(steps['read'])} good frames [ms] (child pinned to CPU "
        f"{one['cpus']}, 1 BLAS thread;\n  CPU = the thread's CPU time, which other processes' "
        "load does not inflate):"
    )
    print(f"    {'':34s} {'wall':>8s} {'CPU':>8s}")
    total = np.zeros(2)
    for name, values in steps.items():
        if name in ("process_frame", "fine_strap_sums"):
            continue
        median = np.median(np.array(values), axis=0)
        total += median
        label = "read (page cache)" if name == "read" else name
        print(f"    {label:34s} {ms * median[0]:8.1f} {ms * median[1]:8.1f}")
    print(f"    {'total per frame':34s} {ms * total[0]:8.1f} {ms * total[1]:8.1f}")
    process = np.median(np.array(steps["process_frame"]), axis=0)
    label = "(process_frame: all but the read)"
    print(f"    {label:34s} {ms * process[0]:8.1f} {ms * process[1]:8.1f}")
    strap = np.median(np.array(steps["fine_strap_sums"]), axis=0)
    label = "(fine_residual's whole-frame straps)"
    print(f"    {label:34s} {ms * strap[0]:8.1f} {ms * strap[1]:8.1f}")
    cold, warm = statistics.median(one["read_cold"]), statistics.median(one["read_warm"])
    print(f"    {'read, file evicted from the cache':34s} {ms * cold:8.1f}   (the floor)")
    print(f"    {'read, page cache (again)':34s} {ms * warm:8.1f}")
    print("  once per build [ms, wall]:")
    print(f"    {'open (headers of all files)':34s} {ms * one['open']:8.1f}")
    print(
        f"    {'static scene':34s} {ms * one['static_scene']:8.1f}   (reads "
        f"min(n_candidates=40, good frames) frames: all {n} here)"
    )
    print(f"    {'masks (make_context)':34s} {ms * one['masks']:8.1f}")
    print(
        f"  end-to-end build_cube over the {n} files, default BuildConfig(pixel_bin=16), "
        f"progress off, best of {REPEATS} [s, wall]:"
    )
    for label, r in (("1 core", one), (f"{len(both['cpus'])} cores", both)):
        best = min(r["build"], key=lambda run: run["wall"])
        parts = {k: best.get(k, 0.0) for k in ("static scene", "masks", "assembly")}
        rest = best["wall"] - sum(parts.values())
        runs = ", ".join(f"{run['wall']:.2f}" for run in r["build"])
        load = ", ".join(f"{x:.1f}" for x in r["load"])
        print(
            f"    {label:8s} {best['wall']:5.2f} = {best['wall'] / n:.3f} per file: "
            + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
            + f" (compress {best.get('compress', 0.0):.2f}, fine layer "
            f"{best.get('fine layer', 0.0):.2f}); streaming pass {rest:.2f} = "
            f"{rest / n:.3f} per file"
        )
        print(
            f"             [process CPU time {best['cpu']:.2f} s = {best['cpu'] / n:.3f} per file; "
            f"runs {runs}; load average {load}]"
        )
    print(
        f"  streaming pass per frame on one core (sum of step medians): {ms * total[0]:.1f} ms "
        f"wall, {ms * total[1]:.1f} ms CPU; aim < 50 ms; existing tools 1000-1500 ms"
    )


def print_memory(results: list[dict]) -> None:
    print("\n3. Peak memory of build_cube over local files (fresh child process per N)")
    print(
        f"  {'glibc mmap threshold':>21s} {'N files':>8s} {'planes':>7s} {'before build':>13s} "
        f"{'after static scene':>19s} {'peak ru_maxrss':>15s} {'(VmHWM)':>8s} {'wall [s]':>9s}"
        "   [MB]"
    )
    for r in results:
        allocator = "default (dynamic)" if r["malloc"] == "default" else f"fixed {r['malloc']} B"
        print(
            f"  {allocator:>21s} {r['n']:8d} {r['planes']:7d} {r['before']:13.0f} "
            f"{r['static']:19.0f} {r['peak']:15.0f} {r['hwm']:8.0f} {r['wall']:9.1f}"
        )
    for allocator in sorted({r["malloc"] for r in results}):
        runs = [r for r in results if r["malloc"] == allocator]
        if len(runs) == 2:
            a, b = runs
            slope = (b["peak"] - a["peak"]) / (b["n"] - a["n"])
            label = "default allocator" if allocator == "default" else "fixed mmap threshold"
            print(
                f"  {label}: peak grows {slope:+.2f} MB per extra file from N={a['n']} to {b['n']}"
            )
    print(
        "  (the per-frame results the build keeps are "
        f"{(2 * 4 + 2) * (2048 // BIN) ** 2 / 2**20:.3f} MB per frame: value + error float32, "
        "npix int16 per bin, memory-mapped;\n  the static scene reads min(40, good frames) "
        "candidates, so up to ~40 frames N also changes that stage's work;\n  ru_maxrss also "
        "counts the work area's memory-mapped pages the build touched, reclaimable page cache: "
        "see benchmarks/README.md)"
    )


# ============================================================================ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=None, help="frames per accuracy build")
    parser.add_argument("--quick", action="store_true", help="fewer frames everywhere")
    parser.add_argument("--child", choices=("speed", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "speed":
        print(json.dumps(child_speed(args.dir, args.n, args.steps)))
        return
    if args.child == "memory":
        print(json.dumps(child_memory(args.dir, args.n)))
        return

    import lk_scatterlight
    from lk_scatterlight.simulate import ScatteredLightField

    n_frames = args.frames or (40 if args.quick else 120)
    n_speed = 8 if args.quick else 20
    n_memory = (8, 16) if args.quick else (20, 60)
    start = time.perf_counter()
    times = select_times(n_frames)
    print(
        f"bench_build: lk_scatterlight {lk_scatterlight.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    per_orbit = n_frames // 2
    print(
        f"\n1. Accuracy: sector 1 (30-min FFIs), {times.size} frames, BTJD {times[0]:.3f}.."
        f"{times[-1]:.3f}: per orbit the first {per_orbit // 3 * 2} and the last "
        f"{per_orbit // 6} at full cadence, the rest spread between"
    )
    print(
        f"  patches {PATCH}x{PATCH} px; residual = model - truth minus each pixel's time mean; "
        "numbers are % of the range p99 - p1"
    )
    smooth = ScatteredLightField(seed=SMOOTH_SEED)
    structured = ScatteredLightField(structured=True)
    sweep = median_sweep(structured, times)
    sims = {}
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        work = Path(tmp)
        for name, field in (("smooth", smooth), ("structured", structured)):
            info, sims[name] = run_accuracy(
                name, field, times, lambda sim: choose_patches(sim, sweep), work
            )
            print_accuracy(name, repr(field), info)
        print(f"  [accuracy section: {time.perf_counter() - start:.0f} s]")

        t0 = time.perf_counter()
        ffis = work / "ffis"
        n_write = max(n_speed, *n_memory)
        writer = sims["smooth"]
        if len(writer) < n_write:  # few accuracy frames: simulate enough for the files
            from lk_scatterlight.simulate import FFISimulator

            writer = FFISimulator(smooth, n_frames=n_write, seed=SIM_SEED)
        writer.write_ffis(ffis, indices=range(n_write))
        t_write = time.perf_counter() - t0
        print(f"\n  (wrote {n_write} FFI files in {t_write:.0f} s)")
        one = run_child("speed", ffis, n_speed, one_core=True, steps=True)
        both = run_child("speed", ffis, n_speed)
        print_speed(one, both)
        memory = [run_child("memory", ffis, n) for n in n_memory]
        fixed = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
        memory += [run_child("memory", ffis, n, extra_env=fixed) for n in n_memory]
        print_memory(memory)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
