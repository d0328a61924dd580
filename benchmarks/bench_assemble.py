"""Benchmark the builder's assembly stage: peak memory and time of the compression.

Run: ``python benchmarks/bench_assemble.py [--frames 1000 4000 12000] [--baseline DIR]``.
Prints numbers; asserts nothing. About 3-4 minutes on an idle 2-core machine with
the defaults; needs ~3.5 GB of temporary disk (``--tmp``) and up to ~6 GB of RAM
with ``--baseline``.

A default compact build (``BuildConfig(compact=True)``, one plane per frame) ends by
compressing the per-frame binned planes that the streaming pass left in the
memory-mapped work area (``value.npy``, ``error.npy``). Writing thousands of
36-MB FFIs to measure that stage is heavy, so this script writes such work arrays
directly: for each N, a realistic sector of N frames of 128 x 128 bins (16-px
bins), ``simulate.ScatteredLightField(seed=2)`` sampled at N frame times spread
over sector 1 (the 200-s cadence of an extended-mission sector is ~11,400 frames),
with errors that vary in time and space like photon noise
(``0.05 * sqrt(flux / 50)`` e-/s) and Gaussian noise of that size; 2 % extra
frames are interleaved as quality-dropped frames that the cube must skip.

Each mode then runs in a fresh child process (started through ``/bin/sh`` so it
does not inherit this process's ``ru_maxrss``), which reports its peak resident
memory (``ru_maxrss``, with the resident memory after imports for reference)
and the wall time of the stage:

* ``chunked``: what ``pipeline.assemble`` now does for a compact build
  (``assembly._assemble_compact``): ``lowrank.compress_planes`` over ``lowrank.Planes`` views
  of the memory maps, reading blocks of frames (randomised SVD with chunked
  passes, error model chunk by chunk); peak memory independent of N;
* ``dense``: the previous assembly: load the used frames' ``value``/``error``
  into RAM, ``ScatterLightCube.from_arrays(...)``, then ``cube.compress()``.
  With ``--baseline DIR`` the child imports ``lk_scatterlight`` from ``DIR``
  (e.g. the pre-change package: ``git archive <commit> lk_scatterlight | tar -x
  -C DIR``), so this measures the old implementation; without it, the current
  in-memory ``compress()`` (which shares the chunked code but holds the arrays).

Accuracy: the parent reconstructs both compact cubes (block by block) and
reports their ranks, the largest difference between them relative to the flux
error of the dense cube, and each one's RMS residual against the dense flux
against the noise RMS (the rank rule's ``(1 + tolerance)`` bound).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # this checkout, imported by the children
NBINS = 16  # pixel bin [px]: 128 x 128 bins
NOISE = 0.05  # [e-/s] noise at 50 e-/s
BLOCK = 500  # frames generated at a time


def frame_times(n: int) -> np.ndarray:
    """``n`` frame mid-times spread over sector 1 (with its orbit gap) [BTJD]."""
    from lk_scatterlight import simulate

    cadence = 200.0 * 11404 / n
    t = simulate.sector_times(1, cadence=cadence)
    while t.size < n:
        cadence *= 0.99
        t = simulate.sector_times(1, cadence=cadence)
    return t[:n]


def write_work_arrays(folder: Path, n: int, seed: int = 0) -> None:
    """``value.npy``, ``error.npy`` (memory-mappable) and ``index.npy`` of n used frames."""
    from lk_scatterlight import simulate

    field = simulate.ScatteredLightField(seed=2)
    total = n + n // 50
    dropped = np.zeros(total, dtype=bool)
    dropped[np.linspace(0, total - 1, total - n).astype(int)] = True
    time_all = frame_times(total)
    nb = 2048 // NBINS
    row = 1 + NBINS * np.arange(nb) + (NBINS - 1) / 2
    column = 45 + NBINS * np.arange(nb) + (NBINS - 1) / 2
    rng = np.random.default_rng(seed)
    shape = (total, nb, nb)
    value = np.lib.format.open_memmap(folder / "value.npy", "w+", np.float32, shape)
    error = np.lib.format.open_memmap(folder / "error.npy", "w+", np.float32, shape)
    for start in range(0, total, BLOCK):
        part = slice(start, min(start + BLOCK, total))
        flux = field(time_all[part], row, column)
        err = NOISE * np.sqrt(np.clip(flux, 1, None) / 50)
        value[part] = flux + rng.normal(0, 1, flux.shape) * err
        error[part] = err
    value.flush()
    error.flush()
    np.save(folder / "index.npy", np.flatnonzero(~dropped))
    np.save(folder / "time.npy", time_all[~dropped])
    del value, error


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, folder: Path, out: Path) -> dict:
    """Compress the work arrays of ``folder`` with ``mode``; save the factors to ``out``."""
    import lk_scatterlight
    from lk_scatterlight.cube import ScatterLightCube

    value = np.load(folder / "value.npy", mmap_mode="r")
    error = np.load(folder / "error.npy", mmap_mode="r")
    index = np.load(folder / "index.npy")
    t = np.load(folder / "time.npy")
    nb = value.shape[1]
    centres = NBINS * np.arange(nb) + (NBINS - 1) / 2
    before = _maxrss_mb()
    t0 = time.perf_counter()
    if mode == "chunked":
        from lk_scatterlight.lowrank import Planes, compress_planes

        lowrank = compress_planes(Planes(value, index), Planes(error, index), 0.01, 64)
    else:  # the previous assemble: load the used frames, build a dense cube, compress it
        cube = ScatterLightCube.from_arrays(
            1, 1, 1, t, 1 + centres, 45 + centres, value[index], error[index]
        )
        lowrank = cube.compress(tolerance=0.01)._lowrank
    wall = time.perf_counter() - t0
    np.savez(
        out,
        mean=lowrank.mean,
        components=lowrank.components,
        coefficients=lowrank.coefficients,
        err_scale=lowrank.err_scale,
        err_image=lowrank.err_image,
    )
    return {
        "mode": mode,
        "package": str(Path(lk_scatterlight.__file__).parent),
        "n": int(index.size),
        "before": before,
        "peak": _maxrss_mb(),
        "wall": wall,
        "info": lowrank.info._asdict(),
    }


def run_child(mode: str, folder: Path, out: Path, baseline: Path | None) -> dict:
    """Run this script as a child (through ``/bin/sh``); returns the JSON it prints."""
    args = [sys.executable, __file__, "--child", mode, "--dir", str(folder), "--out", str(out)]
    package = baseline if baseline is not None and mode == "dense" else ROOT
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(package), os.getenv("PYTHONPATH", "")]))
    done = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit $?', "sh", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.stderr.write(done.stderr)
        msg = f"child {mode} failed"
        raise RuntimeError(msg)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(folder: Path, a: Path, b: Path) -> dict:
    """Largest |a - b| of two compact cubes' flux relative to the dense flux_err, and
    each one's RMS residual against the dense flux, block by block."""
    value = np.load(folder / "value.npy", mmap_mode="r")
    error = np.load(folder / "error.npy", mmap_mode="r")
    index = np.load(folder / "index.npy")
    fa, fb = np.load(a), np.load(b)
    worst, sum_a, sum_b, sum_e = 0.0, 0.0, 0.0, 0.0
    for start in range(0, index.size, BLOCK):
        rows = index[start : start + BLOCK]
        dense = value[rows].reshape(rows.size, -1).astype(float)
        err = error[rows].reshape(rows.size, -1).astype(float)
        flux = []
        for f in (fa, fb):
            comp = f["components"].reshape(f["components"].shape[0], -1)
            coef = f["coefficients"][start : start + BLOCK]
            flux.append((coef @ comp + f["mean"].ravel()).astype(float))
        worst = max(worst, float(np.max(np.abs(flux[0] - flux[1]) / err)))
        sum_a += float(np.sum((flux[0] - dense) ** 2))
        sum_b += float(np.sum((flux[1] - dense) ** 2))
        sum_e += float(np.sum(err**2))
    return {
        "max_diff_over_err": worst,
        "resid_over_noise": (np.sqrt(sum_a / sum_e), np.sqrt(sum_b / sum_e)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 4000, 12000])
    parser.add_argument("--baseline", type=Path, help="import the dense mode from this folder")
    parser.add_argument("--tmp", type=Path, help="folder for the work arrays")
    parser.add_argument("--child", choices=("chunked", "dense"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.out)))
        return

    print(f"Assembly of a compact cube: {2048 // NBINS} x {2048 // NBINS} bins, N frames")
    print(f"dense mode from: {args.baseline or 'this checkout (in-memory compress)'}")
    header = (
        f"{'N':>6s} {'mode':>8s} {'rank':>5s} {'peak RSS [MB]':>14s} {'after imports':>14s} "
        f"{'wall [s]':>9s} {'resid/noise':>12s}"
    )
    print(header)
    notes = []
    for n in args.frames:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            folder = Path(tmp)
            t0 = time.perf_counter()
            write_work_arrays(folder, n)
            made = time.perf_counter() - t0
            results = {}
            for mode in ("dense", "chunked"):
                results[mode] = run_child(mode, folder, folder / f"{mode}.npz", args.baseline)
            acc = compare(folder, folder / "dense.npz", folder / "chunked.npz")
        for mode, ratio in zip(("dense", "chunked"), acc["resid_over_noise"], strict=True):
            r = results[mode]
            print(
                f"{r['n']:6d} {mode:>8s} {r['info']['rank']:5d} {r['peak']:14.0f} "
                f"{r['before']:14.0f} {r['wall']:9.1f} {ratio:12.4f}"
            )
        notes.append(
            f"N={n}: max |chunked - dense| = {acc['max_diff_over_err']:.2e} x flux_err "
            f"(work arrays written in {made:.0f} s)"
        )
    print("\n".join(notes))
    print(
        "resid/noise: RMS of compact - dense flux over the RMS flux_err (rank rule: "
        "<= 1.01 or per-bin condition)"
    )


if __name__ == "__main__":
    main()
