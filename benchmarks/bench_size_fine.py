"""Benchmark the size of a structured-field cube on disk, exact and rounded (issue 18).

Run: ``python benchmarks/bench_size_fine.py [--frames 120 240] [--cadence 1800 200]
[--keep DIR] [--read-only]``. Prints numbers; asserts nothing. About 25 minutes on
a busy 2-core machine (five builds of 1 to 5 minutes, then ~1 minute per cube;
``--keep DIR`` keeps the built cubes there and reuses them). ``--read-only`` only
times reading and evaluating the ``after_*.fits`` files kept in ``DIR``: run it
on two versions of the package to compare their read times.

For each FFI cadence (30 min and 200 s) and frame count ``N``, simulated sector-1
FFIs of the structured field ``ScatteredLightField(structured=True)`` (a ~12-px
glint ridge and a ~6-px baffle shadow edge), frames chosen as in
``bench_build.py`` (``select_times``: most of them consecutive from the start of
each orbit, where the light changes most), are built with the builder's
defaults (``BuildConfig(pixel_bin=16)``: compact encoding, fine layer). The cube
is written twice:

* ``before``: every factor stored exactly, as float32 (``to_hdulist(...,
  precision=None)``; the layout of earlier files, with narrow index columns);
* ``after``: ``cube.write``: the low-rank factors ``FLUX_COMP`` and ``FLUX_COEF``
  rounded to steps tied to the quoted ``flux_err`` (``LowRank.quantum``), the
  fine layer's basis images and coefficients to steps tied to each block's
  quoted error (``FineLayer.quantum``), both RICE-compressed (coefficients as
  time series); ``FINE_INDEX`` a RICE-compressed integer image.

Printed:

* the size of every extension and of the file, before and after;
* the rounding: for the fine layer, RMS over each block of (after - before) in
  units of the block's quoted ``ERROR`` (pooled, median and largest block); for
  the low-rank flux, RMS over planes of (after - before) in units of the quoted
  ``flux_err`` (pooled and largest bin). The writer keeps both expected RMS
  below ``PRECISION`` = 0.05;
* accuracy against the simulator's truth, as ``bench_build.py`` measures it:
  RMS of (model - truth) minus each pixel's time mean, on 15 x 15-px patches
  of every class, in % of the scattered-light range, from the file written
  before and the one written after, and the relative change of that RMS;
* the CPU time to read each file and to evaluate a 25 x 25-px TPF at 2-min
  cadence over the cube's span (median of 15 reads and of 7 evaluations, the
  two files in turn, after one untimed call each: the page cache warm; CPU
  rather than wall time, as the machine is shared);
* an extrapolation to a sector: each extension's size grows linearly with the
  number of frames between the two builds of a cadence (blocks, coefficients
  and the index grow with frames; the low-rank ``FLUX_COMP`` only until the
  rank reaches its cap, 64 by default, taken at the "before" size of a
  full-rank float32 array, an upper bound for the rounded one), extended to the
  frames of a 30-min sector (sector 1) from the 30-min builds and of a 200-s
  sector (sector 60) from the 200-s builds. The frames of these builds are
  chosen where the light changes most, so the growth per frame is probably an
  overestimate for the quieter rest of a sector; and it falls with the number
  of frames (the 30-min fine layer grew by 1.5 kB per frame from 60 to 120
  frames, 1.1 kB from 120 to 240), so the longer builds by default.

  Except for the fine layer's basis images (``FINE`` and its steps
  ``FINE_SCALE``) in the 200-s sector. A tile's basis images span the shapes
  the residual takes in that tile over the time the frames cover: a new shape
  appears as the ridge moves on, not because another frame was taken. A
  sector's 200-s frames cover the same time as its 30-min frames, so the
  200-s sector gets the 30-min sector's extrapolated ``FINE`` and
  ``FINE_SCALE``, times the ratio of their sizes in a 200-s build at the
  times of the first 30-min build (the 200-s frames nearest them) to those of
  that 30-min build. That ratio carries what the cadence itself changes (the
  noise of a frame; the simulator gives 200-s and 30-min frames the same
  noise, so it is 1 for now; real 200-s frames are noisier and keep fewer
  basis images). Extrapolated linearly in frames instead, as before, the
  200-s builds, whose consecutive frames cover 2 to 4 hours, would put ~43,000
  basis images in a sector (~120 per tile kept, where a tile of 16 x 16 fine
  bins has 256 dimensions and the 30-min sector needs ~16); that figure is
  printed too. The coefficients and the index still grow with frames (one
  entry per block and basis image).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent))

FINE_HDUS = ("FINE", "FINE_SCALE", "FINE_INDEX", "FINE_COEF")
#: Extensions with one entry per basis image of the fine layer (see the module docstring).
COVERAGE_HDUS = ("FINE", "FINE_SCALE")
ROUNDED_HDUS = (*FINE_HDUS, "FLUX_COMP", "FLUX_COEF", "FLUX_SCALE")
#: FFI cadences [s] measured, and the sector each extrapolates to.
SECTORS = {1800.0: ("30-min sector (sector 1)", 1), 200.0: ("200-s sector (sector 60)", 60)}
TPF = 1000 + np.arange(25)  # rows of the TPF; columns start at 1290 (on the shadow edge)


def write_before(cube, path: Path) -> Path:
    """``cube`` with its factors and fine layer stored exactly, as float32."""
    from lk_scatterlight.cubefile import to_hdulist

    to_hdulist(cube, compact=cube.is_compact, precision=None).writeto(
        path, overwrite=True, checksum=True
    )
    return path


def extension_sizes(path: Path) -> dict[str, int]:
    """Bytes of each extension in the file (header + data, padded), by name."""
    sizes = {}
    with fits.open(path, disable_image_compression=True) as hdul:
        info = hdul.fileinfo
        offsets = [info(i)["hdrLoc"] for i in range(len(hdul))] + [path.stat().st_size]
        for i, hdu in enumerate(hdul):
            sizes[hdu.name] = offsets[i + 1] - offsets[i]
    return sizes


def frame_times(n_frames: int, cadence: float, matched: bool = False) -> np.ndarray:
    """Times of the frames built: ``bench_build.select_times``; ``matched``: the 200-s
    frames nearest to the 30-min frames chosen so (the same times, 200-s noise)."""
    import bench_build as bb

    from lk_scatterlight.simulate import sector_times

    if not matched:
        return bb.select_times(n_frames, cadence=cadence)
    every = sector_times(1, cadence=cadence)
    nearest = np.searchsorted(every, bb.select_times(n_frames, cadence=1800.0))
    return np.unique(every[nearest.clip(0, every.size - 1)])


def build(n_frames: int, keep: Path, cadence: float = 1800.0, matched: bool = False):
    """The structured-field cube of ``n_frames`` frames at ``cadence`` [s] (built, or read
    from ``keep``); ``matched``: at the times of the 30-min build (`frame_times`)."""
    import bench_build as bb

    from lk_scatterlight import ScatterLightCube
    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource
    from lk_scatterlight.simulate import FFISimulator, ScatteredLightField

    times = frame_times(n_frames, cadence, matched)
    sim = FFISimulator(ScatteredLightField(structured=True), time=times, seed=bb.SIM_SEED)
    name = f"matched{cadence:g}" if matched else f"{cadence:g}s"
    saved = keep / f"structured_{name}_{n_frames}.fits"
    if saved.exists():  # the float32 layout: exactly the built cube
        return ScatterLightCube.read(saved), sim, 0.0
    start = time.perf_counter()
    cube = build_cube(
        SimulatedFFISource(sim),
        BuildConfig(pixel_bin=16),
        work_dir=keep / f"work_{name}_{n_frames}",
        progress=False,
    )
    seconds = time.perf_counter() - start
    write_before(cube, saved)
    return cube, sim, seconds


def accuracy(cube, sim) -> tuple[list[str], np.ndarray]:
    """Patch classes and the per-patch mean square of (model - truth), as bench_build."""
    import bench_build as bb

    frames = np.searchsorted(sim.time, cube.btjd).clip(0, sim.time.size - 1)
    patches = bb.choose_patches(sim, bb.median_sweep(sim.field, sim.time[frames]))
    truth, p1, p99 = bb.truth_samples(sim, frames, patches)
    model = bb.evaluate_cube(cube, sim.time[frames], patches)
    return [p.kind for p in patches], bb.residual_stats(model, truth, p99 - p1)


def timed(funcs: dict, repeat=15) -> dict[str, float]:
    """Median CPU time [s] of each of ``funcs``, run in turn (so load hits all alike)
    after one untimed call each (the page cache warm)."""
    times = {key: [] for key in funcs}
    for func in funcs.values():
        func()
    for _ in range(repeat):
        for key, func in funcs.items():
            start = time.process_time()
            func()
            times[key].append(time.process_time() - start)
    return {key: float(np.median(values)) for key, values in times.items()}


def speed(paths: dict[str, Path], repeat: int = 15) -> None:
    """Print the CPU time to read each file and to evaluate a 25 x 25-px TPF from it."""
    from lk_scatterlight import ScatterLightCube

    cubes = {k: ScatterLightCube.read(p) for k, p in paths.items()}
    cube = next(iter(cubes.values()))
    span = (cube.time_start.value[0], cube.time_stop.value[-1])
    t = np.arange(*span, 120 / 86400)
    read = timed({k: lambda p=p: ScatterLightCube.read(p) for k, p in paths.items()}, repeat)
    ev = timed(
        {k: lambda c=c: c.evaluate(t, TPF, TPF + 290, bounds="nan") for k, c in cubes.items()},
        max(3, repeat // 2),
    )
    for key in paths:
        print(
            f"  {key:6s}: read {read[key] * 1e3:6.1f} ms; evaluate 25x25 px x {t.size} "
            f"cadences {ev[key] * 1e3:6.1f} ms (CPU, median, interleaved)"
        )


def run(n_frames: int, keep: Path, cadence: float) -> dict:
    from lk_scatterlight import ScatterLightCube

    cube, sim, seconds = build(n_frames, keep, cadence)
    name = f"{cadence:g}s_{n_frames}"
    paths = {
        "before": write_before(cube, keep / f"before_{name}.fits"),
        "after": cube.write(keep / f"after_{name}.fits", overwrite=True),
    }
    fine = cube.fine
    built = f", built in {seconds:.0f} s" if seconds else ""
    print(
        f"\n== {cadence:g}-s FFIs, {cube.shape[0]} planes ({n_frames} frames asked){built}: "
        "fine layer "
        f"{len(fine)} blocks, {fine.basis.shape[0]} basis images, "
        f"{fine.coef.size} coefficients; low-rank rank {cube.rank}"
    )
    sizes = {k: extension_sizes(p) for k, p in paths.items()}
    print(f"  {'extension':12s} {'before':>9s} {'after':>9s}  [MB]")
    for name in dict.fromkeys([*sizes["before"], *sizes["after"]]):
        b, a = sizes["before"].get(name, 0), sizes["after"].get(name, 0)
        print(f"  {name:12s} {b / 1e6:9.3f} {a / 1e6:9.3f}")
    total = {k: p.stat().st_size for k, p in paths.items()}
    print(f"  {'file':12s} {total['before'] / 1e6:9.3f} {total['after'] / 1e6:9.3f}")

    cubes = {k: ScatterLightCube.read(p) for k, p in paths.items()}
    diff = (cubes["after"].fine.blocks() - cubes["before"].fine.blocks()).astype(float)
    ratio = np.sqrt((diff**2).mean(axis=(1, 2))) / fine.error
    pooled = np.sqrt((diff**2).mean() / np.mean(fine.error.astype(float) ** 2))
    print(
        f"  fine rounding RMS / quoted ERROR: pooled {pooled:.4f}, median block "
        f"{np.median(ratio):.4f}, largest {ratio.max():.4f} (quoted ERROR RMS "
        f"{np.sqrt(np.mean(fine.error**2)):.4f} e-/s)"
    )
    flux = {k: c._lowrank.flux_coef @ np.asarray(c._lowrank.flux_comp).reshape(cube.rank + 1, -1)
            for k, c in cubes.items()}  # fmt: skip
    lowrank = cube._lowrank
    sigma = np.sqrt(lowrank.var_coef @ lowrank.var_comp.reshape(len(lowrank.var_comp), -1))
    per_bin = np.sqrt(np.mean(((flux["after"] - flux["before"]) / sigma) ** 2, axis=0))
    print(
        f"  low-rank rounding RMS / quoted flux_err: pooled {np.sqrt(np.mean(per_bin**2)):.4f}, "
        f"largest bin {per_bin.max():.4f}"
    )
    kinds, before = accuracy(cubes["before"], sim)
    _, after = accuracy(cubes["after"], sim)
    kinds = np.array(kinds)
    print("  RMS vs truth [% of range]   before     after   change")
    for kind in dict.fromkeys(kinds):
        b = 100 * np.sqrt(before[kinds == kind].mean())
        a = 100 * np.sqrt(after[kinds == kind].mean())
        print(f"    {kind:24s} {b:8.4f}  {a:8.4f}  {100 * (a / b - 1):+6.2f} %")

    speed(paths)
    info = cube.compression
    rounded = sizes["after"].get("FLUX_COMP", 0) / max(cube.rank, 1)  # per component
    cap = {  # the low-rank part at its cap on the rank, per frame where it grows with frames
        ("FLUX_COMP", "before"): (info.max_rank * cube.shape[1] * cube.shape[2] * 4, 0),
        ("FLUX_COMP", "after"): (info.max_rank * rounded, 0),
        ("FLUX_COEF", "before"): (0, info.max_rank * 4),
    }
    return {"frames": cube.shape[0], "sizes": sizes, "total": total, "cap": cap}


def matched_ratio(n_frames: int, keep: Path, r30: dict) -> dict[tuple[str, str], float]:
    """Size of each `COVERAGE_HDUS` extension of the 200-s build at the times of the 30-min
    build ``r30`` (`frame_times` ``matched``), over its size in ``r30``, before and after."""
    cube, _, seconds = build(n_frames, keep, 200.0, matched=True)
    paths = {
        "before": write_before(cube, keep / f"before_matched200_{n_frames}.fits"),
        "after": cube.write(keep / f"after_matched200_{n_frames}.fits", overwrite=True),
    }
    built = f", built in {seconds:.0f} s" if seconds else ""
    print(
        f"\n== 200-s FFIs at the times of the {r30['frames']}-plane 30-min build, "
        f"{cube.shape[0]} planes{built}: {cube.fine.basis.shape[0]} basis images"
    )
    ratio = {}
    for key, path in paths.items():
        sizes = extension_sizes(path)
        for name in COVERAGE_HDUS:
            size, size30 = sizes.get(name, 0), r30["sizes"][key].get(name, 0)
            ratio[name, key] = size / size30 if size30 else 1.0  # both absent: no change
            if size30:
                print(f"  {name:12s} {key:6s} {size / 1e6:7.3f} MB, x{ratio[name, key]:.2f}")
    return ratio


def extrapolate(results: list[dict], cadence: float, coverage: dict | None = None) -> dict:
    """Each extension's size in a whole sector (see the module docstring): linear growth
    with frames between the two builds, or for `COVERAGE_HDUS` the sizes ``coverage``
    (by name and key) when given. Prints and returns the sizes [MB] by (name, key)."""
    from lk_scatterlight.simulate import sector_times

    (r0, r1) = results[:2]
    n0, n1 = r0["frames"], r1["frames"]
    label, sector = SECTORS[cadence]
    frames = sector_times(sector, cadence=cadence).size
    print(f"\n== {cadence:g}-s builds extrapolated to a {label}, {frames} frames [MB]")
    print(f"  {'extension':12s} {'before':>9s} {'after':>9s}")
    totals = {"before": 0.0, "after": 0.0}
    linear = dict(totals)
    out = {}
    for name in dict.fromkeys([*r1["sizes"]["before"], *r1["sizes"]["after"]]):
        row = {}
        for key in totals:
            s0 = r0["sizes"][key].get(name, 0)
            s1 = r1["sizes"][key].get(name, 0)
            size = max(s1 + (s1 - s0) / (n1 - n0) * (frames - n1), s1)
            if (name, key) in r1["cap"]:  # the rank stops growing at its cap
                fixed, per_frame = r1["cap"][name, key]
                size = min(size, fixed + per_frame * frames)
            linear[key] += size / 1e6
            if coverage is not None and name in COVERAGE_HDUS:
                size = coverage[name, key] * 1e6
            row[key] = out[name, key] = size / 1e6
            totals[key] += row[key]
        if name in ROUNDED_HDUS or max(row.values()) > 0.3:
            print(f"  {name:12s} {row['before']:9.2f} {row['after']:9.2f}")
    print(f"  {'file':12s} {totals['before']:9.2f} {totals['after']:9.2f}")
    if coverage is not None:
        print(
            f"  (with {', '.join(COVERAGE_HDUS)} linear in frames too: "
            f"{linear['before']:.2f}, {linear['after']:.2f})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs=2, default=[120, 240])
    parser.add_argument(
        "--cadence", type=float, nargs="+", default=list(SECTORS), choices=list(SECTORS),
        help="FFI cadences [s] to build (default both)",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the built cubes here")
    parser.add_argument(
        "--read-only", action="store_true",
        help="only time reading and evaluating the after_*.fits files kept in --keep",
    )  # fmt: skip
    args = parser.parse_args()
    import lk_scatterlight

    print(
        f"bench_size_fine: lk_scatterlight {lk_scatterlight.__version__}, {os.cpu_count()} CPUs, "
        "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    if args.read_only:
        if args.keep is None:
            parser.error("--read-only needs --keep DIR")
        for path in sorted(args.keep.glob("after_*.fits")):
            print(f"\n== {path.name}")
            speed({"after": path}, repeat=21)
        return
    with tempfile.TemporaryDirectory(prefix="bench_size_fine_") as tmp:
        keep = args.keep or Path(tmp)
        keep.mkdir(parents=True, exist_ok=True)
        results = {
            cadence: [run(n, keep, cadence) for n in args.frames] for cadence in args.cadence
        }
        if 1800.0 in results:
            sector = extrapolate(results[1800.0], 1800.0)
        if 200.0 in results:
            coverage = None
            if 1800.0 in results:  # the 200-s basis images from the 30-min sector's
                ratio = matched_ratio(args.frames[0], keep, results[1800.0][0])
                coverage = {key: sector[key] * ratio[key] for key in ratio}
            extrapolate(results[200.0], 200.0, coverage)


if __name__ == "__main__":
    main()
