"""Benchmark the whole ``lk-scatterlight build`` as a maintainer runs it.

Run: ``python benchmarks/bench_whole_build.py [--frames N] [--fields smooth structured]
[--cadences 1800 200] [--fine-bin 2 4] [--keep DIR] [--baseline DIR]``. Prints numbers;
asserts nothing.
About 2 minutes per field and cadence with the default 48 frames on an idle 2-core
machine (most of it writing the simulated FFI files; ~1.5-2.5 s each).

For each simulated field (``smooth``: ``ScatteredLightField(seed=2)``; ``structured``:
``ScatteredLightField(structured=True)``, a ~12-px glint ridge and a ~6-px baffle
shadow edge) and each FFI cadence (1800 s: sector 1; 200 s: sector 60):

1. ``FFISimulator.write_ffis`` writes ``N`` SPOC-format ``*ffic.fits`` files
   (~36 MB each) to a temporary folder: the first ``N / 2`` consecutive frames
   after the first orbit's perigee (where the scattered light changes fastest)
   and ``N / 2`` spread evenly over the sector (they also give the static scene
   its dark frames).
2. A child process runs the command line's ``main`` with
   ``build --source local DIR --sector S --camera 1 --ccd 1 --no-progress`` and
   default settings otherwise (compact cube, fine layer on; ``--fine-bin B ...``
   adds ``--fine-bin B`` and runs one build per size given), pinned to one CPU
   with one BLAS/OpenMP thread. Every file is read once just before, so the
   build reads them from the page cache, as when it runs right after the
   download (from a cold disk the read costs more; ``bench_build.py`` times
   both). With ``--baseline DIR`` the same build runs a second time with the
   ``lk_scatterlight`` package in ``DIR`` (e.g. ``git archive`` of another
   commit), and both are printed side by side. The child is started through ``/bin/sh`` so it
   does not inherit this process's peak memory; its wall time is measured
   around the child, its CPU time (user + system) and peak resident memory with
   ``resource.getrusage``.
3. Inside the child, the builder's stage functions are wrapped to add up the CPU
   time of the thread that runs them (``time.thread_time``; reads run on the
   read-ahead threads), each stage net of the stages called inside it:

   ``start-up``
       Python, imports and argument parsing: the process's CPU time when
       ``build_cube`` is entered, less ``open``.
   ``open``
       ``LocalFFISource(...)``: listing the files and reading every header.
   ``read``
       ``LocalFFISource.read`` (opening and decoding the FITS files), wherever
       it is called (static scene or streaming pass).
   ``static scene``
       ``scene.static_scene`` without its reads.
   ``masks``
       ``framepass.make_context`` (source masks, strap geometry, fine-layer context).
   ``frames``
       ``framepass.process_frame`` without the two stages below (static
       subtraction, bin fill, curvature correction, strap sums).
   ``bin_plane_fit``
       ``binning.bin_plane_fit`` (the robust per-bin plane fit).
   ``fine layer``
       ``fine.fine_residual``, the fine layer's per-frame work, less the next stage.
   ``fine smoothing``
       its smoothing along the structure of the kept tiles and of the fill probe
       (``residual._smooth_along_structure``, ``residual._smoothed_probe``; 2-px
       fine bins only).
   ``fine assembly``
       ``fine.assemble_fine`` (factoring each kept tile over time).
   ``compression``
       the coarse cube's low-rank compression (``lowrank.compress_planes`` /
       ``ScatterLightCube.compress``).
   ``assembly``
       the rest of ``assembly.assemble`` (medians, strap response, metadata).
   ``write``
       ``ScatterLightCube.write``.
   ``other``
       the child's total CPU minus all of the above (work-area checkpoints,
       file listing, the driver, the threads' overhead).

**Extrapolation to a sector.** ``start-up``, ``static scene`` and ``masks`` do the
same work whatever the number of frames (the static scene reads at most 40
candidate frames); every other stage grows with it, about linearly (the fine
assembly and the compression factor each tile / bin over its planes; the fine
assembly costs most per frame at a few hundred planes, where each kept tile's
Gram matrix is the largest for its planes: measured 1.2, 2.4 and 1.3 ms per frame
for 160 kept tiles over 48, 144 and 1,267 planes). A
sector's CPU per frame is therefore quoted as ``(fixed + per_frame x F) / F``
with ``per_frame`` the measured CPU of the growing stages per frame and ``F``
the frames of a whole sector of that cadence (``simulate.sector_times``: 1,267
at 30 min, 11,404 at 200 s). It leans slightly optimistic for the stages that
grow faster than linearly and for the read, which the page cache serves here
(the files were just written): on a cold disk the read is the floor. The
existing tools need 1-1.5 s of CPU per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

SMOOTH_SEED = 2
SIM_SEED = 0
CADENCES = {1800: 1, 200: 60}  # FFI cadence [s] -> a sector of that era
EXISTING_TOOLS = (1.0, 1.5)  # CPU s per frame
#: Stage names in print order (see the module docstring).
STAGES = (
    "start-up",
    "open",
    "read",
    "static scene",
    "masks",
    "frames",
    "bin_plane_fit",
    "fine layer",
    "fine smoothing",
    "fine assembly",
    "compression",
    "assembly",
    "write",
    "other",
)
FIXED = ("start-up", "static scene", "masks")


# ============================================================================ child side
class StageClock:
    """Thread CPU time per stage, each net of the wrapped stages called inside it."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._local = threading.local()

    def wrap(self, name, func):
        def wrapper(*args, **kwargs):
            stack = self._local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # CPU of the stages called inside this one
            start = time.thread_time()
            try:
                return func(*args, **kwargs)
            finally:
                spent = time.thread_time() - start
                inner = stack.pop()
                self.cpu[name] += spent - inner
                self.calls[name] += 1
                if stack:
                    stack[-1] += spent

        return wrapper


def install_hooks(clock: StageClock) -> list[str]:
    """Wrap the builder's stage functions; return the names that could not be found."""
    from lk_scatterlight import cube as cube_module
    from lk_scatterlight.builder import assembly, binning, framepass, pipeline, runner, sources
    from lk_scatterlight.builder.fine import residual

    entered = {}
    build_cube = pipeline.build_cube

    def build_entry(*args, **kwargs):
        entered.setdefault("cpu", time.process_time())
        clock.cpu["start-up"] = entered["cpu"]
        return build_cube(*args, **kwargs)

    targets = [
        (sources.LocalFFISource, "__init__", "open"),
        (sources.LocalFFISource, "read", "read"),
        # Where the serial runner and the stages look the functions up (the modules
        # split from builder/pipeline.py), not pipeline's re-exports.
        (runner, "static_scene", "static scene"),
        (runner, "make_context", "masks"),
        (runner, "process_frame", "frames"),
        (framepass, "process_frame", "frames"),  # process_chunk's
        (binning, "bin_plane_fit", "bin_plane_fit"),
        (framepass, "fine_residual", "fine layer"),
        (residual, "_smooth_along_structure", "fine smoothing"),
        (residual, "_smoothed_probe", "fine smoothing"),
        (assembly, "assemble_fine", "fine assembly"),
        (assembly, "compress_planes", "compression"),
        (cube_module.ScatterLightCube, "compress", "compression"),
        (runner, "assemble", "assembly"),
        (cube_module.ScatterLightCube, "write", "write"),
    ]
    missing = []
    for owner, attribute, stage in targets:
        func = getattr(owner, attribute, None)
        if func is None:
            missing.append(f"{getattr(owner, '__name__', owner)}.{attribute}")
            continue
        setattr(owner, attribute, clock.wrap(stage, func))
    pipeline.build_cube = build_entry
    return missing


def child(argv: list[str], report: Path) -> int:
    """Run ``lk-scatterlight`` with the stage hooks; write the stage times to ``report``."""
    clock = StageClock()
    missing = install_hooks(clock)
    from lk_scatterlight import cli

    status = cli.main(argv)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    stages = dict(clock.cpu)
    stages["start-up"] = stages.get("start-up", 0.0) - stages.get("open", 0.0)
    stages["other"] = total - sum(stages.values())
    result = {
        "status": status,
        "cpu": total,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "stages": stages,
        "calls": dict(clock.calls),
        "missing": missing,
    }
    report.write_text(json.dumps(result))
    return status


# ============================================================================ parent side
def frame_times(sector: int, n: int) -> np.ndarray:
    """``n / 2`` consecutive frames from the first perigee, ``n / 2`` spread over the sector."""
    from lk_scatterlight.simulate import sector_times

    all_times = sector_times(sector)
    first = np.arange(n // 2)
    spread = np.rint(np.linspace(n // 2, all_times.size - 1, n - n // 2)).astype(int)
    return all_times[np.unique(np.concatenate([first, spread]))]


def write_frames(field_name: str, cadence: int, n: int, folder: Path) -> float:
    """Write the simulated FFIs of one field and cadence; return the time it took [s]."""
    from lk_scatterlight.simulate import FFISimulator, ScatteredLightField

    field = (
        ScatteredLightField(structured=True)
        if field_name == "structured"
        else ScatteredLightField(seed=SMOOTH_SEED)
    )
    sector = CADENCES[cadence]
    sim = FFISimulator(field, sector=sector, time=frame_times(sector, n), seed=SIM_SEED)
    t0 = time.perf_counter()
    sim.write_ffis(folder)
    return time.perf_counter() - t0


def warm(ffis: Path) -> None:
    """Read every file once, so the build reads them from the page cache."""
    for path in sorted(ffis.glob("*ffic.fits")):
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass


def run_build(
    ffis: Path, sector: int, out: Path, package: Path | None = None, fine_bin: int | None = None
) -> dict:
    """One CLI build in a child pinned to one CPU; returns the child's report.

    ``package``: a folder holding another ``lk_scatterlight`` to run instead
    (put first on ``PYTHONPATH``); ``fine_bin``: the build's ``--fine-bin``
    (None: the default).
    """
    report = out / "report.json"
    argv = [
        "build",
        "--source",
        "local",
        str(ffis),
        "--sector",
        str(sector),
        "--camera",
        "1",
        "--ccd",
        "1",
        "--out",
        str(out),
        "--work-dir",
        str(out / "work"),
        "--no-progress",
    ]
    if fine_bin is not None:
        argv += ["--fine-bin", str(fine_bin)]
    command = [sys.executable, __file__, "--child", str(report), "--", *argv]
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package), env.get("PYTHONPATH", "")])
    cpu = min(os.sched_getaffinity(0))
    warm(ffis)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit $?', "sh", *command],
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.stderr.write(done.stderr)
        msg = f"build failed with status {done.returncode}"
        raise RuntimeError(msg)
    result = json.loads(report.read_text())
    result["wall"] = wall
    result["cpu_children"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    cubes = sorted(out.glob("*.fits"))
    result["cube_mb"] = cubes[0].stat().st_size / 1e6 if cubes else float("nan")
    shutil.rmtree(out)
    out.mkdir()
    return result


def sector_frames(cadence: int) -> int:
    """Frames of a whole simulated sector at this cadence."""
    from lk_scatterlight.simulate import sector_times

    return int(sector_times(CADENCES[cadence]).size)


def sector_estimate(r: dict, n: int, cadence: int) -> tuple[float, float, float]:
    """(fixed CPU [s], growing CPU per frame [s], a sector's CPU per frame [s])."""
    stages = r["stages"]
    fixed = sum(stages.get(s, 0.0) for s in FIXED)
    growing = sum(v for s, v in stages.items() if s not in FIXED) / n
    frames = sector_frames(cadence)
    return fixed, growing, (fixed + growing * frames) / frames


def print_result(
    field_name: str, cadence: int, n: int, t_write: float, runs: dict[str, dict]
) -> None:
    """One field and cadence: a column of stage CPU times per package run."""
    print(
        f"\n{field_name} field, {cadence}-s cadence (sector {CADENCES[cadence]}): {n} frames"
        + (f" (written in {t_write:.0f} s)" if t_write else "")
    )
    labels = list(runs)
    for label, r in runs.items():
        print(
            f"  {label}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s (children's rusage "
            f"{r['cpu_children']:.1f} s) = {r['cpu'] / n:.3f} s CPU per frame; peak RSS "
            f"{r['maxrss_mb']:.0f} MB; cube {r['cube_mb']:.2f} MB"
        )
    header = "".join(f" {label[:22]:>22s}" for label in labels)
    print(f"  {'CPU [s] (per frame [ms])':28s}{header}")
    for stage in (*STAGES, "total"):
        cells = []
        for r in runs.values():
            value = r["cpu"] if stage == "total" else r["stages"].get(stage, 0.0)
            cells.append(f" {value:10.2f} ({1e3 * value / n:7.1f})")
        tag = " (fixed)" if stage in FIXED else ""
        print(f"  {stage + tag:28s}{''.join(cells)}")
    frames = sector_frames(cadence)
    for label, r in runs.items():
        fixed, growing, sector = sector_estimate(r, n, cadence)
        print(
            f"  {label}: a whole sector ({frames} frames) ~{sector:.3f} s CPU per frame "
            f"(fixed {fixed:.1f} s + {growing:.4f} s x frames); existing tools "
            f"{EXISTING_TOOLS[0]}-{EXISTING_TOOLS[1]} s per frame"
        )
        if r["missing"]:
            print(f"    (not timed, not found: {', '.join(r['missing'])})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48, help="frames per build (default 48)")
    parser.add_argument(
        "--fields", nargs="+", default=["smooth", "structured"], choices=("smooth", "structured")
    )
    parser.add_argument(
        "--cadences", nargs="+", type=int, default=[1800, 200], choices=sorted(CADENCES)
    )
    parser.add_argument(
        "--keep", type=Path, help="keep (and reuse) the simulated FFI files in this folder"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run every build with the lk_scatterlight package in this folder (e.g. an "
        "export of another commit) and print both",
    )
    parser.add_argument(
        "--fine-bin",
        nargs="+",
        type=int,
        help="one build per fine-layer bin size [px] given (default: the builder's default)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child is not None:
        return child([a for a in rest if a != "--"], args.child)

    import lk_scatterlight

    print(
        f"bench_whole_build: lk_scatterlight {lk_scatterlight.__version__} "
        f"({Path(lk_scatterlight.__file__).parent}), numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        "  each build: `lk-scatterlight build --source local DIR` with default settings, in a "
        "child pinned to one CPU, 1 BLAS thread, files read from the page cache; CPU = user + "
        "system"
    )
    packages = {"this checkout": None}
    if args.baseline is not None:
        packages[f"baseline {args.baseline}"] = args.baseline
    for cadence in args.cadences:
        for field_name in args.fields:
            with tempfile.TemporaryDirectory(prefix="bench_whole_build_") as tmp:
                base = args.keep if args.keep is not None else Path(tmp)
                ffis = base / f"{field_name}-{cadence}s-{args.frames}"
                t_write = 0.0
                if not ffis.is_dir():  # written under another name, renamed when complete
                    partial = ffis.with_name(ffis.name + ".partial")
                    shutil.rmtree(partial, ignore_errors=True)
                    t_write = write_frames(field_name, cadence, args.frames, partial)
                    partial.rename(ffis)
                out = Path(tmp) / "out"
                out.mkdir()
                runs = {
                    label + ("" if fine_bin is None else f" fb{fine_bin}"): run_build(
                        ffis, CADENCES[cadence], out, package, fine_bin
                    )
                    for fine_bin in args.fine_bin or [None]
                    for label, package in packages.items()
                }
                print_result(field_name, cadence, args.frames, t_write, runs)
                sys.stdout.flush()
    print(f"\n(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
