"""Benchmark start-up: ``import lk_scatterlight`` and light ``lk-scatterlight`` commands.

Each command runs in a fresh interpreter ``--repeat`` times (default 5); the
script prints the median and minimum wall time and the median CPU time (user +
system of the child, less sensitive to other load on the machine) and, for each
command, which of lightkurve, matplotlib, scipy.signal, pandas, pooch and
requests it imported. ``info`` reads a small cube written by
`lk_scatterlight.simulate.make_cube` (512-pixel bins) into a temporary folder.

Run: ``python benchmarks/bench_startup.py [--repeat N] [--baseline PATH]``.
``--baseline`` puts another checkout first on ``PYTHONPATH`` (e.g. the main
worktree) to compare before/after. Takes ~1 minute. Prints numbers; asserts
nothing.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("lightkurve", "matplotlib", "scipy.signal", "pandas", "pooch", "requests")

PROBE = """
import sys
{code}
print("LOADED", " ".join(m for m in {heavy!r} if m in sys.modules))
"""


def run(code: str, root: Path, repeat: int) -> tuple[list[float], list[float], str]:
    """Wall and CPU times [s] of ``repeat`` runs of ``code``, and the heavy modules loaded."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    walls, cpus, loaded = [], [], ""
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(  # from a scratch folder: `-c` puts the folder first on sys.path
            [sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=tempfile.gettempdir(),
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        loaded = result.stdout.strip().splitlines()[-1].removeprefix("LOADED").strip()
    return walls, cpus, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--baseline", type=Path, help="checkout to measure instead of this one (before/after)"
    )
    args = parser.parse_args()
    root = (args.baseline or Path(__file__).parents[1]).resolve()

    with tempfile.TemporaryDirectory() as tmp:
        cube = Path(tmp) / "cube.fits"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from lk_scatterlight import simulate; "
                "field = simulate.ScatteredLightField(); "
                f"simulate.make_cube(field, pixel_bin=512).write({str(cube)!r})",
            ],
            check=True,
            env=dict(os.environ, PYTHONPATH=str(root)),
            cwd=tmp,
        )
        cases = {
            "import lk_scatterlight": "import lk_scatterlight",
            "lk-scatterlight --help": (
                "from lk_scatterlight.cli import main\n"
                "try:\n    main(['--help'])\nexcept SystemExit:\n    pass"
            ),
            "lk-scatterlight info CUBE": (
                f"from lk_scatterlight.cli import main\nmain(['info', {str(cube)!r}])"
            ),
        }
        print(
            f"{root}, python {sys.version.split()[0]}, {os.cpu_count()} cores, "
            f"load {os.getloadavg()[0]:.1f}, {args.repeat} runs each"
        )
        for name, code in cases.items():
            walls, cpus, loaded = run(code, root, args.repeat)
            print(
                f"{name:<28} wall median {statistics.median(walls):5.2f} s "
                f"(min {min(walls):5.2f}), cpu median {statistics.median(cpus):5.2f} s; "
                f"heavy modules: {loaded or 'none'}"
            )


if __name__ == "__main__":
    main()
