"""Benchmark ``lk-scatterlight demo`` end to end, as a user runs it.

Each run is ``python -m lk_scatterlight.cli demo --out <tmp>`` in a fresh
interpreter (imports included; the progress bars go to a file). The script prints, per run, the
wall time, the CPU time of the child (user + system, from ``os.wait4``: less
sensitive to other load on a shared machine than wall time), its peak RSS
(``ru_maxrss``), the 1-minute load average before the run, the wall time of
each step the demo reports on stderr and the accuracy it reports (model minus
injected light, % of the range); then the region its cube is built from and the medians.

Run: ``python benchmarks/bench_demo.py [--repeat N] [--baseline PATH]``.
``--baseline`` puts another checkout first on ``PYTHONPATH`` (e.g. the main
worktree) to measure it instead (before/after). Each run takes ~12 s of CPU
(with 2-px fine bins; ~1 min of wall time on a busy 2-core machine). Prints
numbers; asserts nothing.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A step line of the demo on stderr: "<step> <seconds> s  <what>".
STEP = re.compile(r"^(\w+)\s+([\d.]+) s  ")
#: The demo's accuracy on stdout: "... RMS <e-/s> e-/s (<percent>% of the range) ...".
ACCURACY = re.compile(r"RMS [\d.]+ e-/s \(([\d.]+)% of the range\)")
#: The region the demo's cube is built from, on stdout: "cube built from <region>."
REGION = re.compile(r"cube built from (.+)\.$", re.MULTILINE)


def run_once(root: Path, out: Path) -> dict:
    """One demo run: wall and CPU seconds, peak RSS, load average before, step times, accuracy."""
    env = dict(os.environ, PYTHONPATH=str(root))
    command = [sys.executable, "-m", "lk_scatterlight.cli", "demo", "--out", out.name]
    load = os.getloadavg()[0]
    log, errors = out.with_suffix(".out"), out.with_suffix(".err")
    with open(log, "w+") as stdout, open(errors, "w+") as stderr:
        start = time.perf_counter()
        # run from out's folder: `-m` puts the working folder on sys.path
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=out.parent)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own CPU time and peak RSS
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        tail = errors.read_text()[-2000:]
        raise SystemExit(f"the demo failed (exit {child.returncode}):\n{tail}")
    steps = {}
    for line in errors.read_text().splitlines():
        match = STEP.match(line)
        if match:
            steps[match.group(1)] = float(match.group(2))
    summary = log.read_text()
    accuracy, region = ACCURACY.search(summary), REGION.search(summary)
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss": usage.ru_maxrss / 1024,  # kB on Linux -> MB
        "load": load,
        "steps": steps,
        "accuracy": float(accuracy.group(1)) if accuracy else float("nan"),
        "region": region.group(1) if region else "?",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--baseline", type=Path, help="checkout to measure instead of this one (before/after)"
    )
    args = parser.parse_args()
    root = (args.baseline or Path(__file__).parents[1]).resolve()
    print(f"lk-scatterlight demo from {root}, {os.cpu_count()} CPUs")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            result = run_once(root, Path(tmp) / f"demo{i}.png")
            runs.append(result)
            steps = ", ".join(f"{k} {v:.1f}" for k, v in result["steps"].items()) or "-"
            print(
                f"run {i + 1}: wall {result['wall']:5.1f} s, CPU {result['cpu']:5.1f} s, "
                f"peak RSS {result['rss']:4.0f} MB, load average {result['load']:.2f} before; "
                f"model RMS {result['accuracy']:.3f} % of the range; steps [s]: {steps}"
            )
    print(f"the demo's cube is built from {runs[0]['region']}")
    keys = ("wall", "cpu", "rss", "load", "accuracy")
    median = {key: statistics.median(r[key] for r in runs) for key in keys}
    print(
        f"median of {len(runs)}: wall {median['wall']:.1f} s, CPU {median['cpu']:.1f} s, "
        f"peak RSS {median['rss']:.0f} MB, model RMS {median['accuracy']:.3f} % of the range "
        f"(median load average {median['load']:.2f}, "
        f"load after {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
