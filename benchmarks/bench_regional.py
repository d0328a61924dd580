"""Benchmark on-demand regional cubes: accuracy against the whole-CCD cube, and cost.

Run: ``python benchmarks/bench_regional.py [--quick]`` (from the repository root).
Prints numbers; asserts nothing. Runs with one BLAS thread
(``--blas-threads N`` to change; the script restarts itself with
``OPENBLAS_NUM_THREADS`` etc. set). About 4-6 minutes on a busy 2-core machine by
default, 2-3 minutes with ``--quick`` (fewer frames, fewer TPFs, fewer frame
counts in the cost fit).

A regional cube is built from the FFI pixels of the region around a TPF only
(`lk_scatterlight.ondemand.tpf_build_region`: the TPF grown by two 16-px bins,
snapped outwards to the CCD's 64-px grid, made square), read from MAST's FFI
cube, sparsely (every k-th row, `~lk_scatterlight.ondemand.choose_row_step`)
when the region over all frames exceeds the download budget (200 MB).

1. **Accuracy.** Simulated sector-1 FFIs (`FFISimulator`, 30-min cadence,
   40,000 stars, 3 saturated ones with bleed trails, strap columns) of a smooth
   field and of the structured field (narrow glint ridge + sharp baffle shadow
   edge); frames: the first 16 of orbit 1 (scattered light decaying after
   perigee) and the first 8 after the orbit gap (``--quick``: 10 + 4); one
   simulator per field, shared by every TPF. Each frame is generated once; its
   science pixels are kept in memory, so every build reads the same pixels as
   ``SimulatedFFISource(sim)`` (checked on one frame per field) without
   regenerating them. 15 x 15-px TPFs: ``sky`` (away from straps, bright and
   saturated stars; one centred in a 64-px grid cell, one straddling a grid
   line in rows and columns), ``edge`` (flush with row 1 / column 2092, 100 px
   from their middles), ``corner`` (row 2048, column 45), ``sat. star`` (the
   TPF's edge 4 px beside a saturated star's saturated pixels, at the star's
   row), ``bleed`` (on the bleed columns, starting 4 px past the end of the
   trail), ``strap`` (a whole strap group centred in the TPF) and ``shadow
   edge`` (straddling the structured field's 6-px shadow edge at column 1318.5;
   ordinary sky in the smooth field); ``--quick`` has one edge and one strap
   TPF. The models, each compared with ``sim.truth`` on the TPF's
   pixels at the frames the cubes use (quality-flagged frames are dropped):

   * (a) ``whole``: ``build_cube`` over the whole CCD, built once per field
     (default ``BuildConfig()``: 16-px bins, fine layer, compact);
   * (b) ``region``: ``build_cube`` on ``source.crop(tpf_build_region(tpf))``, the
     same config;
   * (c) ``step 4``: the same region, reading only every 4th row
     (``crop(region, row_step=4)``: the middle row of each run of 4,
     `~lk_scatterlight.builder.sources.sparse_read_rows`), built as `~lk_scatterlight.ondemand`
     builds it (`~lk_scatterlight.builder.plan.sparse_config`: fine bins that
     hold a read row); ``--steps 3,4,8`` adds a column (c) per row step (the
     10-min and 200-s sectors' steps) and its ratio to (b);
   * (d) ``local median``: per cadence, the median of the TPF's faintest half of
     pixels in the simulated frame (the half is chosen once, from the TPF's
     median image, as SPOC picks background pixels), the same for every pixel;
   * (e) ``plane fit``: per cadence, a least-squares plane ``a + b x + c y`` fitted to
     those pixels (SPOC-like), evaluated at every pixel.

   Diagnostic columns, per row step k: ``c/f``, the step-k cube's error over
   that of (f) a full-row build with step k's fine bins (``sparse_config(config,
   k)``: 4 px at steps 3-4, 8 px at 6-8): what the sparse read loses beyond the
   coarser bins it needs; with ``--full-masks``, ``m/c``: (m) the step-k build
   given the full read's star, bleed and fine-layer masks on the rows it read
   (its static scene and strap flattening, swapped in for the build's own while
   it runs), over (c): what masks made from the read rows alone cost.
   ``whole nf`` and ``region nf``, the whole-CCD and
   regional builds without the fine layer (``fine_bin=0``: the 16-px bins
   alone), to tell whether a regional shortfall comes from the fine layer or
   from the bins; ``note`` says when a sharp feature of the structured field
   (the moving glint ridge, the shadow edge) crosses the TPF, and which ratios
   miss the aim; ``fine blk``: the fine-layer blocks (tile x plane) the
   regional cube (b) kept.

   Score (as ``bench_build``): RMS over the TPF's pixels and frames of
   model - truth after removing each pixel's time mean (a constant offset the
   static-scene subtraction cannot see, and the static sky the local methods
   include), in % of the truth's p1..p99 range over the whole CCD (every 4th
   pixel) and the used frames. ``region/whole`` and ``step4/whole`` are the
   ratios of those RMS; the aim is <= 1.5. ``c/b`` (step k / region) is what
   the sparse read loses.

   ``--fine-bin N`` builds every cube with fine bins of N px (default: the
   builder's default).

2. **Cost** of a regional cube for a 15 x 15 TPF in open sky (centred in a
   64-px cell) and one straddling a 64-px grid line, at the frame counts of a
   sector at 30-min, 10-min and 200-s cadence (``sector_times(1, cadence)``:
   1,267, 3,801, 11,404 frames): the build region, the row step the default
   200 MB budget picks (``choose_row_step``; "over" when even 1 row in 16 does
   not fit, in which case step 16 is costed), the bytes downloaded
   (``region_bytes``: flux and error, float32), and the build's time and peak
   memory. These are *measured* on small frame counts and *extrapolated*
   linearly: part 1's regional builds give the time per frame at 24 frames;
   then a fresh child process (started through ``/bin/sh``, so it does not
   inherit this process's ``ru_maxrss``) builds the region from the same
   simulated pixels repeated to N frames (N = the frames part 1's cubes used,
   120, 480; ``--quick``: part 1's and 96) at the row step of each cadence
   (a row step whose build fails is reported as failing), and reports
   the wall and CPU time and ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
   before (imports + pixels) and after each build (N ascending; ru_maxrss is
   monotonic). A least-squares line in N through those points gives the
   quoted build time and peak memory at the real frame counts. The download
   itself (network) is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TPF = 15  # TPF side [px]
ROW_RANGE = (1, 2048)
COLUMN_RANGE = (45, 2092)
GRID = 64  # the regional build's grid [px] (lcm of 16-px bins and 64-px fine tiles)
SIM_SEED = 0
SMOOTH_SEED = 2
SHADOW_COLUMN = 1068.5 + 250  # CCD column of the structured field's shadow edge
STEPS = (4,)  # sparse row steps of part 1 (--steps)
AIM = 1.5  # regional / whole-CCD RMS
CADENCES = (("30 min", 1800.0), ("10 min", 600.0), ("200 s", 200.0))


# ============================================================================ sources
def memory_source(frames, region, flux: np.ndarray, err: np.ndarray, meta=None):
    """An `FFISource` serving pixels held in memory (``flux[i % n]``) for ``region``.

    ``frames`` are `FrameInfo` objects (their count may exceed the arrays': the
    pixels then repeat). Reads return fresh copies, as `FFISource.read` promises.
    """
    from lk_scatterlight.builder.sources import FFISource

    class MemorySource(FFISource):
        def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            k = self._check_index(index) % flux.shape[0]
            return flux[k].copy(), err[k].copy()

    sector, camera, ccd = meta or (1, 1, 1)
    source = MemorySource(sector, camera, ccd, list(frames), f"memory, {region}")
    source.region = region
    return source


# ============================================================================ TPFs
@dataclass
class Tpf:
    kind: str
    name: str
    row: int  # first CCD row (1-based)
    column: int  # first CCD column (1-based, science columns 45..2092)

    @property
    def rows(self) -> np.ndarray:
        return self.row + np.arange(TPF)

    @property
    def columns(self) -> np.ndarray:
        return self.column + np.arange(TPF)

    @property
    def region(self):
        from lk_scatterlight.ccd import Region

        return Region(self.row, self.column, TPF, TPF)

    def science(self) -> tuple[slice, slice]:
        r0, c0 = self.row - ROW_RANGE[0], self.column - COLUMN_RANGE[0]
        return slice(r0, r0 + TPF), slice(c0, c0 + TPF)


def _clamp(row: float, column: float) -> tuple[int, int]:
    row = int(np.clip(round(row), ROW_RANGE[0], ROW_RANGE[1] - TPF + 1))
    column = int(np.clip(round(column), COLUMN_RANGE[0], COLUMN_RANGE[1] - TPF + 1))
    return row, column


def _touches_strap(column: int, margin: int = 0) -> bool:
    from lk_scatterlight.builder.straps import STRAP_CCD_COLUMNS

    straps = np.asarray(STRAP_CCD_COLUMNS)
    return bool(np.any((straps >= column - margin) & (straps < column + TPF + margin)))


def choose_tpfs(sim, quick: bool) -> list[Tpf]:
    """TPFs of every class, from the simulator's stars, saturated pixels and straps."""
    from scipy import ndimage

    from lk_scatterlight.builder.straps import strap_groups

    stars = sim.stars
    saturated = sim.saturated_mask()
    sat_rows, sat_cols = np.nonzero(saturated)
    sat_rows, sat_cols = sat_rows + ROW_RANGE[0], sat_cols + COLUMN_RANGE[0]

    def distance(row, column, r, c):
        dr = np.maximum(0, np.maximum(row - r, r - (row + TPF - 1)))
        dc = np.maximum(0, np.maximum(column - c, c - (column + TPF - 1)))
        return np.hypot(dr, dc)

    def clear(row, column):
        bright = stars["tmag"] < 9.5
        b_rows, b_cols = stars["row"][bright], stars["column"][bright]
        return (
            not _touches_strap(column, 3)
            and not np.any(distance(row, column, sat_rows, sat_cols) < 60)
            and not np.any(distance(row, column, b_rows, b_cols) < 25)
        )

    tpfs: list[Tpf] = []
    # Open sky: first grid cells (deterministic scan) whose TPF position is clear.
    # 0-based offsets in a cell: 24..38 is centred in it, 57..71 straddles its end.
    for name, offset in (("cell centre", (GRID - TPF) // 2), ("grid line", GRID - TPF // 2)):
        for cell_r, cell_c in ((9, 11), (22, 7), (14, 25), (5, 18), (26, 20), (17, 3)):
            row = ROW_RANGE[0] + GRID * cell_r + offset
            column = COLUMN_RANGE[0] + GRID * cell_c + offset
            if clear(row, column):
                tpfs.append(Tpf("sky", name, row, column))
                break
    mid_r, mid_c = 1024.5 - TPF // 2, 1068.5 - TPF // 2
    hi_r, hi_c = ROW_RANGE[1] - TPF + 1, COLUMN_RANGE[1] - TPF + 1
    edges = [("row 1", ROW_RANGE[0], mid_c + 100), ("column 2092", mid_r - 100, hi_c)]
    for name, r, c in edges[: 1 if quick else 2]:
        tpfs.append(Tpf("edge", name, *_clamp(r, c)))
    tpfs.append(Tpf("corner", "row 2048, col 45", *_clamp(hi_r, COLUMN_RANGE[0])))

    # Saturated stars and their bleed trails (connected saturated pixels).
    labels, _ = ndimage.label(saturated, structure=np.ones((3, 3)))
    order = np.argsort(stars["tmag"])
    n_sat = 0
    for i in order[:10]:
        r, c = float(stars["row"][i]), float(stars["column"][i])
        lab = labels[int(round(r)) - ROW_RANGE[0], int(round(c)) - COLUMN_RANGE[0]]
        if lab == 0 or not (150 < r < 1900 and 150 < c < 1990):
            continue
        rows, cols = np.nonzero(labels == lab)
        rows, cols = rows + ROW_RANGE[0], cols + COLUMN_RANGE[0]
        at_row = np.abs(rows - r) <= TPF // 2
        c_lo, c_hi = cols[at_row].min(), cols[at_row].max()
        right = _clamp(r - TPF // 2, c_hi + 4)
        left = _clamp(r - TPF // 2, c_lo - 4 - TPF + 1)
        row, column = left if _touches_strap(right[1]) else right
        tmag = f"Tmag {stars['tmag'][i]:.1f}"
        tpfs.append(Tpf("sat. star", f"{tmag}, beside", row, column))
        trail_end = rows.max()  # the lower end of the trail (highest row)
        on = np.round(np.median(cols[rows == trail_end]))
        row, column = _clamp(trail_end + 4, on - TPF // 2)
        tpfs.append(Tpf("bleed", f"{tmag}, trail end +4", row, column))
        n_sat += 1
        if n_sat == 1:
            break

    # Straps: a whole group of strap columns centred in the TPF.
    groups = strap_groups()
    wanted = {717: 1500, 1417: 1200}
    for first, row in list(wanted.items())[: 1 if quick else 2]:
        members = [c for g in groups for c in g if first <= c <= first + 9]
        c0 = (min(members) + max(members)) / 2 - TPF // 2
        name = f"columns {min(members)}-{max(members)}"
        tpfs.append(Tpf("strap", name, *_clamp(row - TPF // 2, c0)))
    row, column = _clamp(1000, SHADOW_COLUMN - TPF / 2)
    tpfs.append(Tpf("shadow edge", f"column {SHADOW_COLUMN}", row, column))
    return tpfs


# ============================================================================ part 1
def frame_pass(sim, tpfs, regions):
    """Generate every frame once; keep the regions' pixels (and the whole CCD's) and TPFs'."""
    n = len(sim)
    keep = {}
    for region in set(regions):
        shape = (n, region.nrows, region.ncols)
        keep[region] = (np.empty(shape, np.float32), np.empty(shape, np.float32))
    full = (np.empty((n, 2048, 2048), np.float32), np.empty((n, 2048, 2048), np.float32))
    tpf_flux = np.empty((n, len(tpfs), TPF, TPF))
    for i in range(n):
        flux, err = sim.frame(i)
        flux, err = flux[:2048, 44:2092], err[:2048, 44:2092]
        full[0][i], full[1][i] = flux, err
        for region, (f, e) in keep.items():
            f[i], e[i] = flux[region.science_slice], err[region.science_slice]
        for j, tpf in enumerate(tpfs):
            tpf_flux[i, j] = flux[tpf.science()]
    return full, keep, tpf_flux


def truth_at(sim, frames: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``sim.truth(i)`` at these CCD rows and columns only, (nframes, nrow, ncol).

    The same expression as `FFISimulator.truth` (the field times the column
    response, as float32), evaluated at fewer pixels.
    """
    response = sim.column_response[np.asarray(columns) - COLUMN_RANGE[0]]
    out = np.empty((frames.size, rows.size, columns.size), np.float32)
    with np.errstate(over="ignore"):  # the structured shadow's logistic overflows harmlessly
        for k, i in enumerate(frames):
            out[k] = sim.field(sim.time[i : i + 1], rows, columns)[0] * response
    return out


def structure_note(sim, times: np.ndarray, tpf: Tpf) -> str:
    """Which of the structured field's sharp features cross the TPF over the frames used.

    The ridge lies where ``0.6 rr + 0.8 cc - 300 + 400 sweep(t) = 0`` and the shadow
    edge at ``cc = 250`` (``rr``, ``cc``: pixels from the CCD centre; see
    `ScatteredLightField`); a feature crosses the TPF if it passes within 12 px of
    its centre (the TPF's half-diagonal is 10 px).
    """
    from lk_scatterlight.simulate import ORBIT_DAYS

    field = sim.field
    if not field.structured:
        return ""
    rr, cc = tpf.rows.mean() - 1024.5, tpf.columns.mean() - 1068.5
    phase = np.mod(times - field.t0, ORBIT_DAYS) / ORBIT_DAYS
    sweep = 0.5 - 0.5 * np.cos(2 * np.pi * phase)
    ridge = np.abs(0.6 * rr + 0.8 * cc - 300 + 400 * sweep)  # along the ridge's normal
    notes = []
    if ridge.min() < 12:
        notes.append(f"on the ridge in {np.mean(ridge < 12):.0%} of frames")
    if abs(cc - 250) < 12:
        notes.append("on the shadow edge")
    return ", ".join(notes)


def local_models(flux: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local median and plane fit on the faintest half of a TPF's pixels, (ntime, P, P)."""
    median_image = np.median(flux, axis=0)
    faint = median_image <= np.median(median_image)
    level = np.median(flux[:, faint], axis=1)
    median = np.broadcast_to(level[:, None, None], flux.shape)
    y, x = np.mgrid[0:TPF, 0:TPF] - (TPF - 1) / 2
    design = np.column_stack([np.ones(faint.sum()), x[faint], y[faint]])
    coef, *_ = np.linalg.lstsq(design, flux[:, faint].T, rcond=None)  # (3, ntime)
    plane = coef[0][:, None, None] + coef[1][:, None, None] * x + coef[2][:, None, None] * y
    return median, plane


def rms(model: np.ndarray, truth: np.ndarray, scale: float) -> float:
    """RMS of model - truth after removing each pixel's time mean [% of scale]."""
    res = np.asarray(model, dtype=np.float64) - truth
    res -= res.mean(axis=0, keepdims=True)
    return float(100 * np.sqrt(np.mean(res**2)) / scale)


@contextlib.contextmanager
def full_read_masks(static_full: np.ndarray):
    """Within: a build whose static scene skips rows (a sparse read) makes its source
    masks from ``static_full``, a full read's static scene of the same region, and
    keeps them on the rows it read (a diagnostic: the builder has no such option).

    ``framepass.flatten_straps`` is wrapped to flatten ``static_full`` the same way
    (the strap columns and references of the build), and ``masks.static_source_mask``
    and ``masks.drop_extended`` to take that flattened scene instead of the sparse one.
    """
    from lk_scatterlight.builder import framepass, masks

    flatten, source_mask, extended = (
        framepass.flatten_straps,
        masks.static_source_mask,
        masks.drop_extended,
    )
    full: dict[str, np.ndarray] = {}

    def flatten_both(static, strap_idx, ref_idx):
        if np.isnan(static).all(axis=1).any():
            full["flat"] = flatten(static_full, strap_idx, ref_idx)
        return flatten(static, strap_idx, ref_idx)

    def swapped_source_mask(flat, **kwargs):
        unread = np.isnan(flat).all(axis=1)
        if not unread.any():
            return source_mask(flat, **kwargs)
        mask = source_mask(full["flat"], **kwargs)
        full["last"] = mask.copy()  # the fine layer's mask, when drop_extended follows
        mask[unread] = True
        return mask

    def swapped_extended(mask, static, **kwargs):
        unread = np.isnan(static).all(axis=1)
        if not unread.any():
            return extended(mask, static, **kwargs)
        kept = extended(full["last"], static_full, **kwargs)  # on every row, as read in full
        kept[unread] = False
        return kept

    framepass.flatten_straps = flatten_both
    masks.static_source_mask, masks.drop_extended = swapped_source_mask, swapped_extended
    try:
        yield
    finally:
        framepass.flatten_straps = flatten
        masks.static_source_mask, masks.drop_extended = source_mask, extended


def timed_build(source, config, work: Path) -> tuple[object, float, float]:
    from lk_scatterlight.builder.pipeline import build_cube

    t0, c0 = time.perf_counter(), time.process_time()
    cube = build_cube(source, config, work_dir=work, progress=False)
    return cube, time.perf_counter() - t0, time.process_time() - c0


def run_field(
    name,
    field,
    frames,
    tpfs_from,
    work: Path,
    quick: bool,
    steps=STEPS,
    fine_bin=None,
    swap_masks: bool = False,
) -> dict:
    """Part 1 for one field: the whole-CCD cube, regional cubes and local estimates."""
    from lk_scatterlight.builder.masks import good_frames
    from lk_scatterlight.builder.pipeline import BuildConfig
    from lk_scatterlight.builder.plan import sparse_config
    from lk_scatterlight.builder.scene import static_scene
    from lk_scatterlight.builder.sources import SimulatedFFISource
    from lk_scatterlight.ondemand import tpf_build_region
    from lk_scatterlight.simulate import FFISimulator, sector_times

    config = BuildConfig() if fine_bin is None else BuildConfig(fine_bin=fine_bin)
    sim = FFISimulator(field, time=sector_times(1)[frames], seed=SIM_SEED)
    tpfs = tpfs_from(sim, quick)
    regions = [tpf_build_region(t.region, config) for t in tpfs]
    t0 = time.perf_counter()
    full, keep, tpf_flux = frame_pass(sim, tpfs, regions)
    t_frames = time.perf_counter() - t0
    reference = SimulatedFFISource(sim)
    frame_list = reference.frames
    meta = (sim.sector, sim.camera, sim.ccd)

    # The cached pixels are the simulator's (one frame checked through the real crop path).
    check = regions[0]
    mine = memory_source(frame_list, check, *keep[check], meta).crop(check).read(1)[0]
    theirs = reference.crop(check).read(1)[0]
    if not np.array_equal(mine, theirs, equal_nan=True):
        msg = "cached pixels differ from SimulatedFFISource's"
        raise RuntimeError(msg)

    whole_source = memory_source(frame_list, reference.region, *full, meta)
    whole, t_whole, c_whole = timed_build(whole_source, config, work / f"{name}-whole")
    coarse = dataclasses.replace(config, fine_bin=0)  # diagnostic: the 16-px bins alone
    whole_nf, *_ = timed_build(whole_source, coarse, work / f"{name}-whole-nofine")
    del whole_source, full
    used = np.searchsorted(sim.time, whole.btjd).clip(0, len(sim) - 1)
    if not np.allclose(sim.time[used], whole.btjd, rtol=0, atol=1e-6):
        msg = "cube planes do not match frame times"
        raise RuntimeError(msg)
    times = sim.time[used]
    every4 = np.arange(ROW_RANGE[0], ROW_RANGE[1] + 1, 4)
    p1, p99 = np.percentile(truth_at(sim, used, every4, every4 + COLUMN_RANGE[0] - 1), [1, 99])
    scale = float(p99 - p1)
    tpf_truth = [truth_at(sim, used, t.rows, t.columns) for t in tpfs]
    if not np.array_equal(tpf_truth[0][0], sim.truth(int(used[0]))[tpfs[0].science()]):
        msg = "truth_at differs from FFISimulator.truth"
        raise RuntimeError(msg)

    rows, timings = [], []
    for j, (tpf, region) in enumerate(zip(tpfs, regions, strict=True)):
        truth = tpf_truth[j]
        result = {"tpf": tpf, "build": region}
        result["note"] = structure_note(sim, times, tpf)
        for key, cube in (("whole", whole), ("whole nf", whole_nf)):
            result[key] = rms(cube.evaluate(times, tpf.rows, tpf.columns).flux.value, truth, scale)
        base = memory_source(frame_list, region, *keep[region], meta)
        sparse = [(f"step {k}", k, sparse_config(config, k)) for k in steps]
        # Diagnostics: every row read, with the fine bins of each step (once per size).
        sizes = {cfg.fine_bin: cfg for _, _, cfg in sparse if cfg.fine_bin != config.fine_bin}
        full_rows = [(f"full fb{b}", 1, cfg) for b, cfg in sizes.items()]
        builds = [("region", 1, config), *sparse, *full_rows, ("region nf", 1, coarse)]
        if swap_masks:
            builds += [(f"masks {k}", k, cfg) for _, k, cfg in sparse]
            static_full, _ = static_scene(
                base.crop(region), good_frames(base.quality), config, progress=False
            )
        for key, step, cfg in builds:
            swap = full_read_masks(static_full) if key.startswith("masks") else None
            with swap or contextlib.nullcontext():
                cube, wall, cpu = timed_build(
                    base.crop(region, row_step=step), cfg, work / f"{name}-{j}-{key}"
                )
            if not np.allclose(cube.btjd, whole.btjd, rtol=0, atol=1e-6):
                msg = f"the regional cube of {tpf.name} has other planes than the whole-CCD cube"
                raise RuntimeError(msg)
            model = cube.evaluate(times, tpf.rows, tpf.columns).flux.value
            result[key] = rms(model, truth, scale)
            if key == "region":
                result["fine blocks"] = 0 if cube.fine is None else len(cube.fine)
            if key == "region" or key.startswith("step"):
                timings.append({"tpf": j, "step": step, "wall": wall, "cpu": cpu, "n": len(sim)})
        median, plane = local_models(tpf_flux[used, j])
        result["local median"] = rms(median, truth, scale)
        result["plane fit"] = rms(plane, truth, scale)
        rows.append(result)
    return {
        "name": name,
        "field": repr(field),
        "rows": rows,
        "builds": timings,
        "keep": keep,
        "frames": len(sim),
        "used": used.size,
        "good": used,
        "scale": scale,
        "p1": float(p1),
        "p99": float(p99),
        "t_frames": t_frames,
        "t_whole": t_whole,
        "c_whole": c_whole,
        "tpfs": tpfs,
        "regions": regions,
        "steps": list(steps),
        "fine_bins": {k: sparse_config(config, k).fine_bin for k in steps},
        "fine_bin": config.fine_bin,
        "swap_masks": swap_masks,
    }


def print_accuracy(info: dict) -> None:
    print(f"\n  {info['name']} field: {info['field']}")
    print(
        f"    frames {info['used']} used of {info['frames']} (quality-flagged dropped); range "
        f"p1..p99 {info['p1']:.1f}..{info['p99']:.1f} e-/s -> scale {info['scale']:.1f} e-/s; "
        f"frame generation {info['t_frames']:.0f} s; whole-CCD build {info['t_whole']:.1f} s "
        f"wall, {info['c_whole']:.1f} s CPU"
    )
    steps = info["steps"]
    print(
        "    fine bins of the sparse builds: "
        + ", ".join(f"step {k}: {info['fine_bins'][k]} px" for k in steps)
    )
    swap = info["swap_masks"]

    def full_rows(r: dict, k: int) -> float:
        """(f): every row read, with step k's fine bins (the region itself if unchanged)."""
        return r.get(f"full fb{info['fine_bins'][k]}", r["region"])

    header = (
        f"    {'class':11s} {'TPF':20s} {'first row,col':>13s} {'build region':>22s} "
        f"{'(a)whole':>8s} {'(b)region':>9s} "
        + "".join(f"{f'(c)step {k}':>10s} {'c/a':>5s} {'c/b':>5s} " for k in steps)
        + f"{'b/a':>5s} {'(d)local median':>15s} {'(e)plane fit':>12s} {'| whole nf':>9s} "
        f"{'region nf':>9s} {'fine blk':>8s} "
        + "".join(f"{f'c/f{k}':>6s} " for k in steps)
        + ("".join(f"{f'm/c{k}':>6s} " for k in steps) if swap else "")
        + "  note"
    )
    print(header)
    for r in info["rows"]:
        tpf, region = r["tpf"], r["build"]
        ratio = r["region"] / r["whole"]
        flags = [f"b > {AIM}x"] if ratio > AIM else []
        flags += [f"c{k} > {AIM}x" for k in steps if r[f"step {k}"] / r["whole"] > AIM]
        note = ", ".join(([r["note"]] if r["note"] else []) + flags)
        where = f"{region.nrows} px @ r{region.row} c{region.column}"
        sparse = "".join(
            f"{r[f'step {k}']:10.3f} {r[f'step {k}'] / r['whole']:5.2f} "
            f"{r[f'step {k}'] / r['region']:5.2f} "
            for k in steps
        )
        print(
            f"    {tpf.kind:11s} {tpf.name:20s} {f'{tpf.row},{tpf.column}':>13s} {where:>22s} "
            f"{r['whole']:8.3f} {r['region']:9.3f} {sparse}{ratio:5.2f} "
            f"{r['local median']:15.3f} {r['plane fit']:12.3f} "
            f"{r['whole nf']:9.3f} {r['region nf']:9.3f} {r['fine blocks']:8d} "
            + "".join(f"{r[f'step {k}'] / full_rows(r, k):6.2f} " for k in steps)
            + ("".join(f"{r[f'masks {k}'] / r[f'step {k}']:6.2f} " for k in steps) if swap else "")
            + f"  {note}"
        )
    ratios = [("region/whole (b/a)", np.array([r["region"] / r["whole"] for r in info["rows"]]))]
    for k in steps:
        for label, base in (("whole", "a"), ("region", "b")):
            values = np.array([r[f"step {k}"] / r[label] for r in info["rows"]])
            ratios.append((f"step{k}/{label} (c/{base})", values))
        values = np.array([r[f"step {k}"] / full_rows(r, k) for r in info["rows"]])
        ratios.append((f"step{k}/full rows, {info['fine_bins'][k]}-px fine bins (c/f)", values))
        if swap:
            values = np.array([r[f"masks {k}"] / r[f"step {k}"] for r in info["rows"]])
            ratios.append((f"step{k} with the full read's masks/own (m/c)", values))
    for label, values in ratios:
        over = int(np.sum(values > AIM))
        within = f"; {len(values) - over} of {len(values)} TPFs within the aim (<= {AIM})"
        if "(c/f)" in label or "(m/c)" in label:  # diagnostics: no aim
            within = ""
        print(f"    {label}: median {np.median(values):.2f}, max {values.max():.2f}{within}")
    walls = [b["wall"] for b in info["builds"]]
    cpus = [b["cpu"] for b in info["builds"]]
    print(
        f"    regional builds ({len(walls)}): median {np.median(walls):.2f} s wall, "
        f"{np.median(cpus):.2f} s CPU each ({info['frames']} frames read)"
    )


# ============================================================================ part 2
def child_cost(data: Path, step: int, counts: list[int], fine_bin: int | None = None) -> dict:
    """Build the region of ``data`` at each frame count (ascending); time and ru_maxrss."""
    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.plan import sparse_config
    from lk_scatterlight.builder.sources import FrameInfo
    from lk_scatterlight.ccd import Region
    from lk_scatterlight.simulate import sector_times

    def maxrss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # [MB]

    arrays = np.load(data)
    flux, err = arrays["flux"], arrays["err"]
    region = Region(*arrays["region"].tolist())
    all_times = sector_times(1, cadence=200.0)
    half = 100.0 / 86400
    out = {"before": maxrss(), "runs": []}
    for n in counts:
        frames = [
            FrameInfo(i, float(t), float(t - half), float(t + half), 0, i, f"frame{i}")
            for i, t in enumerate(all_times[:n])
        ]
        source = memory_source(frames, region, flux, err).crop(region, row_step=step)
        with tempfile.TemporaryDirectory() as tmp:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                config = BuildConfig() if fine_bin is None else BuildConfig(fine_bin=fine_bin)
                config = sparse_config(config, step)
                cube = build_cube(source, config, work_dir=Path(tmp) / "w", progress=False)
            except Exception as exc:  # reported in the output
                out["error"] = f"{type(exc).__name__}: {exc} (N = {n})"
                return out
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out["runs"].append(
            {"n": n, "planes": cube.shape[0], "wall": wall, "cpu": cpu, "peak": maxrss()}
        )
        del cube
    return out


def run_child(data: Path, step: int, counts: list[int], fine_bin: int | None = None) -> dict:
    """Run `child_cost` in a fresh process (through /bin/sh: no inherited ru_maxrss)."""
    args = [sys.executable, __file__, "--child", str(data), "--step", str(step)]
    args += ["--counts", ",".join(map(str, counts))]
    if fine_bin is not None:
        args += ["--fine-bin", str(fine_bin)]
    done = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit $?', "sh", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.stderr.write(done.stderr)
        msg = "cost child failed"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def line(x, y, at: float) -> float:
    """Least-squares line through (x, y), evaluated at ``at`` (NaN without two points)."""
    if len(x) < 2:
        return float("nan")
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(intercept + slope * at)


def run_cost(info: dict, work: Path, counts: list[int], fine_bin: int | None = None) -> list[dict]:
    """Part 2 for the two sky TPFs of ``info`` (the smooth field's pixels)."""
    from lk_scatterlight.builder.ffi_cube import region_bytes
    from lk_scatterlight.exceptions import ScatterLightError
    from lk_scatterlight.ondemand import DEFAULT_MAX_BYTES, choose_row_step
    from lk_scatterlight.simulate import sector_times

    out = []
    for j, tpf in enumerate(info["tpfs"]):
        if tpf.kind != "sky":
            continue
        region = info["regions"][j]
        flux, err = (a[info["good"]] for a in info["keep"][region])
        data = work / f"cost-{j}.npz"
        np.savez(
            data, flux=flux, err=err, region=[region.row, region.column, region.nrows, region.ncols]
        )
        part1 = [b for b in info["builds"] if b["tpf"] == j]
        children: dict[int, dict] = {}
        for label, cadence in CADENCES:
            n = len(sector_times(1, cadence=cadence))
            try:
                step, over = choose_row_step(region, n, DEFAULT_MAX_BYTES), False
            except ScatterLightError:
                step, over = 16, True
            if step not in children:
                children[step] = run_child(data, step, counts, fine_bin)
            runs = children[step]["runs"]
            ns = [r["n"] for r in runs]
            out.append(
                {
                    "tpf": tpf,
                    "region": region,
                    "cadence": label,
                    "n": n,
                    "step": step,
                    "over": over,
                    "bytes": region_bytes(n, region, step),
                    "part1": part1,
                    "runs": runs,
                    "before": children[step]["before"],
                    "error": children[step].get("error"),
                    "wall": line(ns, [r["wall"] for r in runs], n),
                    "cpu": line(ns, [r["cpu"] for r in runs], n),
                    "peak": line(ns, [r["peak"] for r in runs], n),
                }
            )
    return out


def print_cost(rows: list[dict], whole: dict, counts: list[int]) -> None:
    from lk_scatterlight.builder.ffi_cube import region_bytes
    from lk_scatterlight.ccd import Region

    print(
        "\n2. Cost of a regional cube per TPF (15 x 15 px), default BuildConfig and 200 MB budget"
    )
    print(
        "   time and peak RSS: MEASURED on builds of N = "
        + ", ".join(map(str, counts))
        + " frames (a fresh child per row step; pixels of part 1's smooth field repeated),\n"
        "   EXTRAPOLATED by a least-squares line in N to the sector's frame count; the download "
        "(network) is not included"
    )
    print(
        f"   {'TPF':12s} {'build region':>22s} {'cadence':>7s} {'frames':>6s} {'row step':>9s} "
        f"{'download MB':>11s} {'build s wall':>12s} {'s CPU':>6s} {'ms CPU/frame':>12s} "
        f"{'peak RSS MB':>11s} {'(build)':>8s}"
    )
    for r in rows:
        step = f"{r['step']}{' OVER' if r['over'] else ''}"
        region = r["region"]
        where = f"{region.nrows} px @ r{region.row} c{region.column}"
        start = (
            f"   {r['tpf'].name:12s} {where:>22s} {r['cadence']:>7s} {r['n']:6d} "
            f"{step:>9s} {r['bytes'] / 1e6:11.0f}"
        )
        if r["error"]:
            print(f"{start}   build FAILS at this row step (see below)")
            continue
        print(
            f"{start} {r['wall']:12.1f} {r['cpu']:6.1f} {1e3 * r['cpu'] / r['n']:12.2f} "
            f"{r['peak']:11.0f} {r['peak'] - r['before']:+8.0f}"
        )
    print("   measured points (child process; per row step: N frames -> wall s / CPU s / peak MB):")
    seen = set()
    for r in rows:
        key = (r["tpf"].name, r["step"])
        if key in seen:
            continue
        seen.add(key)
        points = "; ".join(
            f"{p['n']} -> {p['wall']:.2f} / {p['cpu']:.2f} / {p['peak']:.0f}" for p in r["runs"]
        )
        error = f"{'; ' if points else ''}FAILS: {r['error']}" if r["error"] else ""
        print(
            f"     {r['tpf'].name:12s} step {r['step']:2d}: before build {r['before']:.0f} MB; "
            f"{points}{error}"
        )
    for r in rows:
        key = r["tpf"].name
        if key in seen:
            continue
        seen.add(key)
        p1 = "; ".join(
            f"step {b['step']}: {1e3 * b['wall'] / b['n']:.1f} ms wall, "
            f"{1e3 * b['cpu'] / b['n']:.1f} ms CPU per frame"
            for b in r["part1"]
        )
        print(
            f"     part 1 regional builds of {key} ({r['part1'][0]['n']} frames, in-process; "
            f"build time / frames): {p1}"
        )
    for label, _ in CADENCES:
        n = next(r["n"] for r in rows if r["cadence"] == label)
        nbytes = region_bytes(n, Region.full())
        print(
            f"   for scale, the whole CCD at {label}: {n} frames x {nbytes / n / 1e6:.1f} MB = "
            f"{nbytes / 1e9:.0f} GB of flux + error"
        )
    print(
        f"   whole-CCD build of part 1 (smooth field, {whole['frames']} frames, pixels in memory): "
        f"{whole['t_whole']:.1f} s wall, {whole['c_whole']:.1f} s CPU = "
        f"{1e3 * whole['c_whole'] / whole['frames']:.0f} ms CPU per frame"
    )


# ============================================================================ main
def restart_with_blas_threads(threads: int, script: str) -> None:
    """Re-run ``script`` with the BLAS/OpenMP thread count set, unless it already is.

    The count is read when numpy loads, so it cannot change in a running process;
    children inherit it.
    """
    blas_vars = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if any(os.environ.get(var) != str(threads) for var in blas_vars):
        env = dict(os.environ, **dict.fromkeys(blas_vars, str(threads)))
        os.execve(sys.executable, [sys.executable, script, *sys.argv[1:]], env)


def perigee_frames(all_t: np.ndarray, quick: bool):
    """Frames after each perigee: the first ``n_start`` and the first ``n_after`` after
    the orbit gap. Returns ``(gap, n_start, n_after, frames)``."""
    gap = int(np.argmax(np.diff(all_t))) + 1
    n_start, n_after = (10, 4) if quick else (16, 8)
    return gap, n_start, n_after, np.r_[0:n_start, gap : gap + n_after]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, TPFs and N")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS/OpenMP threads (default 1; the builder's many small lstsq/eigh calls "
        "are far slower with threaded BLAS on a busy machine)",
    )
    parser.add_argument(
        "--steps",
        default=",".join(map(str, STEPS)),
        help="row steps of part 1's sparse builds, comma-separated (default 4; e.g. 3,4,8)",
    )
    parser.add_argument(
        "--fine-bin",
        type=int,
        help="the fine layer's bin size [px] of every build (default: the builder's)",
    )
    parser.add_argument(
        "--full-masks",
        action="store_true",
        help="diagnostic (m): also build each row step with the full read's source masks",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--step", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    restart_with_blas_threads(args.blas_threads, __file__)
    if args.child:
        counts = [int(n) for n in args.counts.split(",")]
        print(json.dumps(child_cost(args.child, args.step, counts, args.fine_bin)))
        return

    import lk_scatterlight
    from lk_scatterlight.simulate import ScatteredLightField, sector_times

    start = time.perf_counter()
    steps = [int(k) for k in args.steps.split(",")]
    all_t = sector_times(1)
    gap, n_start, n_after, frames = perigee_frames(all_t, args.quick)
    print(
        f"bench_regional: lk_scatterlight {lk_scatterlight.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, {args.blas_threads} BLAS thread(s), load average "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print(
        f"\n1. Accuracy of regional cubes: sector 1 (30-min FFIs), frames 0..{n_start - 1} and "
        f"{gap}..{gap + n_after - 1} (BTJD {all_t[0]:.2f}..{all_t[n_start - 1]:.2f}, "
        f"{all_t[gap]:.2f}..{all_t[gap + n_after - 1]:.2f})"
    )
    print(
        f"   TPFs {TPF}x{TPF} px; RMS of model - truth minus each pixel's time mean, in % of the "
        "truth's p1..p99 range; aim region/whole <= 1.5"
    )
    fields = (
        ("smooth", ScatteredLightField(seed=SMOOTH_SEED)),
        ("structured", ScatteredLightField(structured=True)),
    )
    with tempfile.TemporaryDirectory(prefix="bench_regional_") as tmp:
        work = Path(tmp)
        infos = []
        for name, field in fields:
            info = run_field(
                name,
                field,
                frames,
                choose_tpfs,
                work,
                args.quick,
                steps,
                args.fine_bin,
                swap_masks=args.full_masks,
            )
            print_accuracy(info)
            infos.append(info)
            if name != "smooth":
                info.pop("keep")  # part 2 uses the smooth field's pixels
        print(f"   [accuracy section: {time.perf_counter() - start:.0f} s]")
        t0 = time.perf_counter()
        used = infos[0]["used"]
        counts = [used, 96] if args.quick else [used, 120, 480]
        cost = run_cost(infos[0], work, counts, args.fine_bin)
        print_cost(cost, infos[0], counts)
        print(f"   [cost section: {time.perf_counter() - t0:.0f} s]")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
