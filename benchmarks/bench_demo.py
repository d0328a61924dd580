"""Benchmark ``lk-scatterlight demo`` end to end, as a user runs it.

Each run is ``python -m lk_scatterlight.cli demo --out <tmp>`` in a fresh
interpreter (imports included; the progress bars go to a pipe). The script prints, per run, the
wall time, the CPU time of the child (user + system, from
``resource.getrusage(RUSAGE_CHILDREN)``: less sensitive to other load on a
shared machine than wall time), the 1-minute load average before the run and
the wall time of each step the demo reports on stderr; then the medians.

Run: ``python benchmarks/bench_demo.py [--repeat N] [--baseline PATH]``.
``--baseline`` puts another checkout first on ``PYTHONPATH`` (e.g. the main
worktree) to measure it instead (before/after). Takes ~30 s (the demo before
the regional build: ~1 min per run). Prints numbers; asserts nothing.
"""

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: A step line of the demo on stderr: "<step> <seconds> s  <what>".
STEP = re.compile(r"^(\w+)\s+([\d.]+) s  ")


def run_once(root: Path, out: Path) -> dict:
    """One demo run: wall and CPU seconds, load average before, step times."""
    env = dict(os.environ, PYTHONPATH=str(root))
    command = [sys.executable, "-m", "lk_scatterlight.cli", "demo"]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(  # run from out's folder: `-m` puts the working folder on sys.path
        [*command, "--out", out.name],
        capture_output=True,
        text=True,
        env=env,
        cwd=out.parent,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"the demo failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    steps = {}
    for line in done.stderr.splitlines():
        match = STEP.match(line)
        if match:
            steps[match.group(1)] = float(match.group(2))
    return {"wall": wall, "cpu": cpu, "load": load, "steps": steps}


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
                f"load average {result['load']:.2f} before; steps [s]: {steps}"
            )
    wall = statistics.median(r["wall"] for r in runs)
    cpu = statistics.median(r["cpu"] for r in runs)
    load = statistics.median(r["load"] for r in runs)
    print(
        f"median of {len(runs)}: wall {wall:.1f} s, CPU {cpu:.1f} s "
        f"(median load average {load:.2f}, load after {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
