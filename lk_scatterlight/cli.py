"""The ``lk-scatterlight`` command.

Usage examples
--------------
1. Run the offline demo (synthetic cube and TPF, before/after figure)::

       lk-scatterlight demo --out demo.png

2. Print the metadata and coverage of a cube file::

       lk-scatterlight info cube.fits

3. List the published cubes and models, then download one of each into the cache::

       lk-scatterlight list
       lk-scatterlight fetch 2 1 1 --bin 16
       lk-scatterlight fetch-model s1-25

4. Check built cubes and show what publishing them would do, then do it
   (token in ``ZENODO_TOKEN``; see docs/publishing.rst)::

       lk-scatterlight publish cubes/ --sandbox
       lk-scatterlight publish cubes/ --sandbox --upload

5. Publish a trained model under a name, then load it by that name::

       lk-scatterlight publish-model model.npz s1-25 --sandbox --upload
       lk-scatterlight fetch-model s1-25

Exit codes: 0 success, 1 an error while running (one line on stderr; the
traceback with ``--debug``), 2 a usage error (one line on stderr), 130
interrupted (Ctrl-C; an interrupted build resumes when the same command is run
again).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from .ccd import CAMERAS, CCDS, LATEST_SECTOR, N_SCIENCE, check_sector
from .exceptions import ScatterLightError

__all__ = ["main"]

log = logging.getLogger(__name__)

#: Commands that build a cube and resume from their checkpoints when run again.
RESUMABLE = ("build", "build-many", "dataset")


class UsageError(ScatterLightError):
    """A command line that cannot work (exit code 2), found after argparse accepted it."""


class _Parser(argparse.ArgumentParser):
    """argparse, reporting a usage error as one line (not the whole usage text)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------------- argument types
def sector_number(text: str) -> int:
    """argparse type: a TESS sector, 1..`~lk_scatterlight.ccd.LATEST_SECTOR`."""
    try:
        return check_sector(int(text))
    except ValueError as err:
        msg = (
            f"sector must be a whole number 1..{LATEST_SECTOR} (the sectors whose pointing "
            f"tesswcs knows), got {text!r}"
        )
        raise argparse.ArgumentTypeError(msg) from err


def _int_at_least(lo: int, what: str) -> Callable[[str], int]:
    """argparse type: a whole number >= ``lo``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = lo - 1
        if value < lo:
            msg = f"{what} must be a whole number >= {lo}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def pixel_bin(text: str) -> int:
    """argparse type: a pixel bin size [px] dividing the 2048 science pixels of a side."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or N_SCIENCE % value:
        divisors = ", ".join(str(2**k) for k in range(12))
        msg = f"bin size must divide {N_SCIENCE} (one of {divisors}), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


#: Subcommand name -> (function adding its arguments, function running it).
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {}


def subcommand(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``func(args) -> int`` as subcommand ``name``."""

    def decorator(func: Callable[..., int]) -> Callable[..., int]:
        SUBCOMMANDS[name] = (add_arguments, func)
        return func

    return decorator


# ---------------------------------------------------------------------- demo
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="lk_scatterlight_demo.png", help="PNG to write")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the simulation")
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the builder's progress bars"
    )


@subcommand("demo", _demo_arguments)
def _demo(args: argparse.Namespace) -> int:
    """Correct a simulated TESSCut-like TPF offline and write a before/after figure."""
    folder = Path(args.out).parent
    _check_folder(folder, "--out", args.out)
    guard = _FolderGuard()
    guard.watch(folder)

    def report(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    report(
        "lk-scatterlight demo: simulate FFIs -> build a cube -> publish it to a local "
        "registry -> fetch -> correct a TPF (about 10 s)"
    )
    from .demo import run_demo

    try:
        folder.mkdir(parents=True, exist_ok=True)
        result = run_demo(
            out=args.out, seed=args.seed, progress=not args.no_progress, report=report
        )
    except BaseException:
        guard.undo()
        raise
    sys.stdout.write(result.summary() + "\n")
    return 0


# ---------------------------------------------------------------------- registry
def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and ``--no-progress``, for the commands that download."""
    parser.add_argument(
        "--cache-dir",
        help="cache folder (default: $LK_SCATTERLIGHT_CACHE, conf.cache_dir or the OS cache)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _fetch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sector", type=sector_number, help=f"TESS sector (1-{LATEST_SECTOR})")
    parser.add_argument("camera", type=int, choices=CAMERAS, help="camera (1-4)")
    parser.add_argument("ccd", type=int, choices=CCDS, help="CCD (1-4)")
    parser.add_argument(
        "--bin", type=pixel_bin, help="pixel bin size (default: the finest published)"
    )
    _cache_arguments(parser)


@subcommand("fetch", _fetch_arguments)
def _fetch(args: argparse.Namespace) -> int:
    """Download a published cube into the cache (if needed) and print its path."""
    from .registry import _build_hint, fetch_cube

    try:
        path = fetch_cube(
            args.sector,
            args.camera,
            args.ccd,
            args.bin,
            cache_dir=args.cache_dir,
            progressbar=not args.no_progress,
        )
    except ScatterLightError as err:  # advice worded for Python -> for the command line
        ids = (args.sector, args.camera, args.ccd)
        text = str(err).replace(_build_hint(*ids), _build_hint(*ids, python=False))
        raise ScatterLightError(text) from err
    sys.stdout.write(f"{path}\n")
    return 0


def _fetch_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="published model name (see `lk-scatterlight list`)")
    _cache_arguments(parser)


@subcommand("fetch-model", _fetch_model_arguments)
def _fetch_model(args: argparse.Namespace) -> int:
    """Download a published learned model into the cache (if needed) and print its path."""
    from .registry import fetch_model

    path = fetch_model(args.name, cache_dir=args.cache_dir, progressbar=not args.no_progress)
    sys.stdout.write(f"{path}\n")
    return 0


@subcommand("list", lambda parser: None)
def _list(args: argparse.Namespace) -> int:
    """List the published cubes and learned models."""
    from .registry import available_cubes, available_models

    table, models = available_cubes(), available_models()
    if len(table) == 0:
        sys.stdout.write(
            "No scattered-light cubes are published yet; build one with "
            "`lk-scatterlight build --sector S --camera C --ccd D`.\n"
        )
    else:
        sys.stdout.write("\n".join(table.pformat(max_lines=-1, max_width=-1)) + "\n")
    if len(models):
        sys.stdout.write("\nPublished models (ScatterLightModel.load(name)):\n")
        sys.stdout.write("\n".join(models.pformat(max_lines=-1, max_width=-1)) + "\n")
    return 0


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="cube file (FITS)")


@subcommand("info", _info_arguments)
def _info(args: argparse.Namespace) -> int:
    """Print a cube file's metadata, coverage and encoding."""
    import numpy as np

    from .cube import ScatterLightCube

    _check_fits(Path(args.path))
    cube = ScatterLightCube.read(args.path)
    rows = _cube_summary(cube)
    info = cube.compression
    if info is None:
        encoding = [("encoding", "dense (float32 flux and flux_err arrays)")]
    else:
        encoding = [
            ("encoding", f"compact (LOWRANK), rank {info.rank} of at most {info.max_rank}"),
            (
                "tolerance",
                f"{info.tolerance:g} (residual RMS <= {1 + info.tolerance:g} x noise RMS "
                f"{info.noise_rms:.3g} e-/s)",
            ),
            (
                "error",
                f"RMS {info.residual_rms:.3g} e-/s vs the dense cube (max "
                f"{info.residual_max:.3g}); dropped signal {info.truncation_rms:.3g} e-/s RMS, "
                f"in flux_err; flux_err model within {100 * info.err_model_max:.2g} %",
            ),
        ]
    if cube.fine is not None:
        fine = cube.fine
        encoding.append(
            (
                "fine layer",
                f"{fine.pixel_bin} px bins in {fine.pixel_bin * fine.tile} px tiles: "
                f"{len(fine)} blocks in {np.unique(fine.plane).size} planes, "
                f"{fine.basis.shape[0]} basis images, {fine.nbytes / 1e6:.2f} MB",
            )
        )
    encoding.append(("file size", f"{Path(args.path).stat().st_size / 1e6:.2f} MB"))
    at = next((i for i, (key, _) in enumerate(rows) if key.startswith("meta ")), len(rows))
    rows[at:at] = encoding
    lines = [f"{key + ':':<14}{value}" for key, value in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


#: How a FITS file starts: plain, gzip- or bzip2-compressed.
_FITS_MAGIC = (b"SIMPLE  =", b"\x1f\x8b", b"BZh")


def _check_fits(path: Path) -> None:
    """Raise a one-line error unless ``path`` is a readable file that looks like FITS."""
    if path.is_dir():
        msg = f"{path} is a folder; give the path of a cube file (FITS)."
        raise ScatterLightError(msg)
    if not path.is_file():
        return  # the reader says that no cube is there
    with open(path, "rb") as file:
        start = file.read(len(_FITS_MAGIC[0]))
    if not start.startswith(_FITS_MAGIC):
        msg = (
            f"{path} is not a FITS file (it does not start with a FITS header); give the "
            "path of a cube file written by `lk-scatterlight build` or `fetch`."
        )
        raise ScatterLightError(msg)


def _cube_summary(cube) -> list[tuple[str, str]]:
    """(label, text) pairs describing a `ScatterLightCube`."""
    import numpy as np

    from .interpolate import time_segments

    start, stop = cube.time_start, cube.time_stop
    segments = time_segments(start.value, stop.value, cube.max_gap)
    ngaps = int(segments[-1])
    flux = cube.flux.value
    nt, nr, nc = cube.shape
    rows = [
        ("sector", str(cube.sector)),
        ("camera", str(cube.camera)),
        ("ccd", str(cube.ccd)),
        ("shape", f"{nt} planes x {nr} rows x {nc} columns (time, row, column)"),
        ("pixel bin", f"{cube.pixel_bin:g} px"),
        ("rows", f"{cube.row[0]:g}..{cube.row[-1]:g} (bin centres, 1-based)"),
        ("columns", f"{cube.column[0]:g}..{cube.column[-1]:g} (bin centres, 1-based)"),
        (
            "time BTJD",
            f"{start.value[0]:.5f}..{stop.value[-1]:.5f} (TDB; "
            f"{stop.value[-1] - start.value[0]:.3f} d)",
        ),
        ("time UTC", f"{start[0].utc.isot}..{stop[-1].utc.isot}"),
        ("planes", str(nt)),
        ("gaps", f"{ngaps} (holes longer than {cube.max_gap:.4g} d)"),
        ("flux", f"{np.nanmin(flux):.4g}..{np.nanmax(flux):.4g} e-/s per pixel"),
    ]
    rows += [(f"meta {key}", str(value)) for key, value in sorted(cube.meta.items())]
    return rows


# ---------------------------------------------------------------------- build
def parse_duration(text: str) -> float | None:
    """``"frame"`` -> None (one plane per FFI); ``"2h"``, ``"30min"``, ``"0.1d"`` -> days."""
    from astropy import units as u

    if text.strip().lower() == "frame":
        return None
    try:
        value = u.Quantity(text).to_value(u.day)
    except (TypeError, ValueError, u.UnitsError) as err:
        raise argparse.ArgumentTypeError(
            f"time bin must be 'frame' or a duration such as '2h', '30min', '0.1d'; got {text!r}"
        ) from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"time bin must be positive, got {text!r}")
    return value


def _build_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--sector",
        type=sector_number,
        required=required,
        help=f"TESS sector (1-{LATEST_SECTOR})",
    )
    parser.add_argument("--camera", type=int, required=required, choices=CAMERAS)
    parser.add_argument("--ccd", type=int, required=required, choices=CCDS)
    _build_options(parser)
    parser.add_argument("--work-dir", default=None, help="checkpoint folder (resumable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cube")


def _build_options(parser: argparse.ArgumentParser) -> None:
    """Options of `build` and `build-many` (and of commands that build a cube)."""
    parser.add_argument(
        "--source",
        nargs="+",
        default=["tesscube"],
        metavar="KIND [PATH]",
        help="'tesscube' (MAST's FFI cubes on AWS), 'local PATH' (a folder, glob or files of "
        "SPOC *ffic.fits; '{sector}', '{camera}', '{ccd}' in PATH are filled in) or "
        "'simulate [NFRAMES]' (synthetic frames); default tesscube",
    )
    parser.add_argument(
        "--pixel-bin", type=pixel_bin, default=16, help="bin size [px], divides 2048 (default 16)"
    )
    parser.add_argument(
        "--fine-bin",
        type=_int_at_least(0, "--fine-bin"),
        default=4,
        help="bin size [px] of the fine layer that keeps structure narrower than a bin "
        "(glint ridges, shadow edges) where the frames show it; divides --pixel-bin; "
        "0 for none (default 4)",
    )
    parser.add_argument(
        "--time-bin",
        type=parse_duration,
        default=None,
        help="'frame' (default: one plane per FFI) or a duration, e.g. '2h'",
    )
    parser.add_argument("--out", default=".", help="output folder or file (default: .)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _dense_option(parser: argparse.ArgumentParser) -> None:
    """``--dense``, for the commands that write a cube file."""
    parser.add_argument(
        "--dense", action="store_true", help="write a dense cube instead of the compact encoding"
    )


def _cluster_options(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--scheduler`` / ``--workers``: where a Dask build runs."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the frame work on this Dask scheduler (tcp://host:8786 or a scheduler file)",
    )
    group.add_argument(
        "--workers",
        type=_int_at_least(1, "--workers"),
        metavar="N",
        help="run the frame work on a local Dask cluster of N single-threaded worker processes"
        + (" (default: one per core)" if required else " (default: serial, in this process)")
        + "; each holds ~0.3 GB of frames in flight",
    )
    parser.add_argument(
        "--chunk",
        type=_int_at_least(1, "--chunk"),
        default=50,
        help="frames per Dask task and per checkpoint at most (default 50)",
    )
    parser.add_argument(
        "--prefetch",
        type=_int_at_least(1, "--prefetch"),
        default=None,
        help="frames read ahead (default: 4 in this process, 1 in each Dask task)",
    )


def _build_command_arguments(parser: argparse.ArgumentParser) -> None:
    _build_arguments(parser, required=False)
    _dense_option(parser)
    _cluster_options(parser)
    regional = parser.add_argument_group(
        "regional cubes", "build only a square of the CCD (see docs/ondemand.rst)"
    )
    regional.add_argument(
        "--region",
        nargs=4,
        type=int,
        metavar=("ROW", "COL", "NROWS", "NCOLS"),
        help="pixels the cube must cover: first row and column (1-based CCD pixels, columns "
        "counting the 44 collateral columns) and size; grown by 1.5 bins, snapped out to the "
        "CCD's 64-px grid, made square and at least 128 px wide (the on-demand rule)",
    )
    regional.add_argument(
        "--for-tpf",
        metavar="FILE",
        help="the region (and sector, camera, CCD) of a TPF file, as tpf.to_corrector builds it",
    )
    regional.add_argument(
        "--max-mb",
        type=float,
        default=200.0,
        help="download budget of a region from MAST's FFI cube [MB]; above it only every k-th "
        "row is read (default 200)",
    )
    regional.add_argument(
        "--row-step",
        type=_int_at_least(1, "--row-step"),
        default=None,
        help="read every k-th row of the region (default: 1, or what --max-mb needs)",
    )


#: `BuildConfig` field -> the option that sets it, to word its errors for the command line.
_CONFIG_OPTIONS = {
    "pixel_bin": "--pixel-bin",
    "fine_bin": "--fine-bin",
    "time_bin": "--time-bin",
    "chunk": "--chunk",
}


def _config(args: argparse.Namespace, dask: bool = False):
    """The `BuildConfig` of the command line.

    Raises
    ------
    UsageError
        If the options do not fit together (e.g. ``--fine-bin`` not dividing
        ``--pixel-bin``).
    """
    from .builder.pipeline import BuildConfig

    options = {"pixel_bin": args.pixel_bin, "time_bin": args.time_bin, "fine_bin": args.fine_bin}
    if hasattr(args, "chunk"):  # build and build-many (dataset keeps the defaults)
        options.update(
            compact=not args.dense,
            chunk=args.chunk,
            prefetch=args.prefetch if args.prefetch is not None else (1 if dask else 4),
        )
    try:
        return BuildConfig(**options)
    except ValueError as err:
        text = str(err)
        for name, option in _CONFIG_OPTIONS.items():
            text = re.sub(rf"\b{name}\b", option, text)
        raise UsageError(text) from err


def _check_folder(folder: Path, option: str, given: str | None = None) -> None:
    """Fail now, not after the work, if ``folder`` cannot be created or written to.

    ``option`` and ``given`` (its value; default ``folder``) name the folder in
    the message.
    """
    option = f"{option} {given if given is not None else folder}"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        msg = f"{option}: {existing} is a file, not a folder; choose another path."
        raise ScatterLightError(msg)
    if not os.access(existing, os.W_OK | os.X_OK):
        msg = (
            f"{option}: {existing} is not writable (permission denied); choose a folder you "
            "can write to."
        )
        raise ScatterLightError(msg)


class _FolderGuard:
    """Folders a command creates, removed again if it fails while they are still empty.

    `watch` notes what the nearest existing parent of a folder holds; if the
    command then fails (error or Ctrl-C), `undo` removes the new empty folders
    there (created by the command or by the build, such as an unused work
    folder), so a failed run leaves no empty folders behind. Folders holding
    anything, such as checkpoints to resume from, are kept.
    """

    def __init__(self) -> None:
        self._before: dict[Path, set[str]] = {}

    def watch(self, folder: Path) -> None:
        parent = folder.resolve()
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent not in self._before and parent.is_dir():
            self._before[parent] = set(os.listdir(parent))

    def undo(self) -> None:
        for parent, before in self._before.items():
            for name in set(os.listdir(parent)) - before:
                _remove_empty_tree(parent / name)


def _remove_empty_tree(path: Path) -> None:
    """Remove ``path`` and the folders in it if they hold no files."""
    if not path.is_dir() or path.is_symlink():
        return
    for root, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(root)
        except OSError:  # not empty
            pass


def _dask_client(args: argparse.Namespace):
    """A Dask client for ``--scheduler``/``--workers``; its dashboard link goes to stderr."""
    import contextlib

    import distributed  # noqa: F401  (sets up its loggers on import)

    from .builder.distributed import dask_client

    if not getattr(args, "verbose", False):  # Dask logs every connection and key at INFO
        logging.getLogger("distributed").setLevel(logging.WARNING)

    @contextlib.contextmanager
    def announced():
        with dask_client(scheduler=args.scheduler, workers=args.workers) as client:
            sys.stderr.write(f"Dask dashboard: {client.dashboard_link}\n")
            yield client

    return announced()


def make_source(kind: list[str], sector: int, camera: int, ccd: int):
    """The frame source named by ``--source`` (`lk_scatterlight.builder.source_factory`).

    Its usage errors become `UsageError` (exit code 2); the builder is imported
    only here, so ``lk-scatterlight --help`` stays cheap.
    """
    from .builder.source_factory import SourceSpecError
    from .builder.source_factory import make_source as factory

    try:
        return factory(kind, sector, camera, ccd)
    except SourceSpecError as err:
        raise UsageError(str(err)) from err


@subcommand("build", _build_command_arguments)
def _build(args: argparse.Namespace) -> int:
    """Build the scattered-light cube of one sector/camera/CCD from its FFIs."""
    import contextlib

    from .builder.pipeline import build_cube, region_tag
    from .registry import cube_filename

    dask = args.scheduler is not None or args.workers is not None
    config = _config(args, dask)
    region = _build_region(args, config)
    out = Path(args.out)
    in_folder = out.is_dir() or not out.suffix  # as build_cube decides
    folder = out if in_folder else out.parent
    name = cube_filename(args.sector, args.camera, args.ccd, args.pixel_bin)
    if region is not None:
        name = name.removesuffix(".fits") + region_tag(region) + ".fits"
    path = out / name if in_folder else out
    if path.exists() and not args.overwrite:
        raise ScatterLightError(f"{path} exists; pass --overwrite to replace it.")
    _check_folder(folder, "--out", args.out)
    guard = _FolderGuard()
    guard.watch(folder)
    if args.work_dir is not None:
        _check_folder(Path(args.work_dir), "--work-dir")
        guard.watch(Path(args.work_dir))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if region is None:
            source = make_source(args.source, args.sector, args.camera, args.ccd)
        else:
            source = _regional_source(args, region, folder)
        with _dask_client(args) if dask else contextlib.nullcontext() as client:
            build_cube(
                source,
                config,
                out=out,
                work_dir=args.work_dir,
                progress=not args.no_progress,
                overwrite=args.overwrite,
                client=client,
            )
    except BaseException:
        guard.undo()
        raise
    if region is not None and args.source[0] == "tesscube":
        shutil.rmtree(_download_folder(args, region, folder), ignore_errors=True)
    sys.stdout.write(f"{path}\n")
    return 0


def _build_region(args: argparse.Namespace, config):
    """The region a ``build --region``/``--for-tpf`` covers (None: the whole CCD).

    Fills ``args.sector``/``camera``/``ccd`` from a TPF file.
    """
    from .ccd import Region

    if args.region and args.for_tpf:
        msg = "--region and --for-tpf exclude each other: give one."
        raise UsageError(msg)
    if args.for_tpf:
        location = _locate_tpf_file(args.for_tpf)
        for key in ("sector", "camera", "ccd"):
            given, found = getattr(args, key), getattr(location, key)
            if given is not None and given != found:
                msg = f"--{key} {given} contradicts {args.for_tpf}, which is {key} {found}."
                raise UsageError(msg)
            setattr(args, key, found)
        from .ondemand import tpf_build_region

        region = tpf_build_region(location.region, config)
    elif args.region:
        try:
            region = Region(*args.region)
        except ValueError as err:
            raise UsageError(f"--region {' '.join(map(str, args.region))}: {err}") from err
        from .ondemand import tpf_build_region

        region = tpf_build_region(region, config)
    else:
        region = None
    missing = [f"--{k}" for k in ("sector", "camera", "ccd") if getattr(args, k) is None]
    if missing:
        raise UsageError(f"build needs {', '.join(missing)} (or --for-tpf FILE).")
    if region is not None:
        sys.stderr.write(
            f"lk-scatterlight: building sector {args.sector} camera {args.camera} CCD "
            f"{args.ccd}, {region}\n"
        )
    return region


def _locate_tpf_file(path: str):
    """Sector, camera, CCD and pixels of a TPF file named on the command line."""
    import warnings

    from .ondemand import locate_tpf

    if not Path(path).is_file():
        raise ScatterLightError(f"--for-tpf {path}: no such file.")
    try:
        import lightkurve as lk

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lightkurve's notes on odd headers
            tpf = lk.read(path)
    except Exception as err:
        raise ScatterLightError(
            f"--for-tpf {path}: not a TPF lightkurve can read ({err})."
        ) from err
    try:
        if not isinstance(tpf, lk.TessTargetPixelFile):
            raise ScatterLightError(f"--for-tpf {path}: not a TESS target pixel file.")
        return locate_tpf(tpf)
    finally:
        tpf.hdu.close()


def _download_folder(args: argparse.Namespace, region, folder: Path) -> Path:
    from .builder.pipeline import region_tag

    base = Path(args.work_dir) if args.work_dir is not None else folder
    tag = f"s{args.sector:04d}_{args.camera}-{args.ccd}{region_tag(region)}"
    return base / f".lk-scatterlight-download_{tag}"


def _regional_source(args: argparse.Namespace, region, folder: Path):
    """The frames of ``region``: a download of MAST's FFI cube, or cropped local/simulated FFIs."""
    if args.source[0] != "tesscube":
        source = make_source(args.source, args.sector, args.camera, args.ccd)
        return source.crop(region, row_step=args.row_step or 1)
    from .builder.ffi_cube import FFICube, TessCubeRegionSource, download_region, region_bytes
    from .ondemand import choose_row_step

    cube = FFICube(args.sector, args.camera, args.ccd)
    step = args.row_step or choose_row_step(region, cube.nframes, args.max_mb * 1e6)
    sys.stderr.write(
        f"lk-scatterlight: reading {region_bytes(cube.nframes, region, step) / 1e6:.0f} MB of "
        f"{cube.nframes} frames from MAST's FFI cube"
        + (f", every {step} rows" if step > 1 else "")
        + "\n"
    )
    download = _download_folder(args, region, folder)
    download_region(cube, region, download, row_step=step, progress=not args.no_progress)
    return TessCubeRegionSource(download, args.sector, args.camera, args.ccd)


def parse_ranges(text: str) -> list[int]:
    """``"1-5"`` -> [1, 2, 3, 4, 5]; ``"1,3,7-8"`` -> [1, 3, 7, 8] (sorted, unique)."""
    values: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            start = int(first)
            stop = int(last) if last else start
            if stop < start:
                raise ValueError(part)
            values.update(range(start, stop + 1))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected numbers and ranges such as '1-5' or '1,3,7-9', got {text!r}"
        ) from err
    return sorted(values)


def _ranges_within(lo: int, hi: int, what: str, why: str = "") -> Callable[[str], list[int]]:
    """argparse type: `parse_ranges`, every number within ``lo..hi``."""

    def parse(text: str) -> list[int]:
        values = parse_ranges(text)
        outside = [v for v in values if not lo <= v <= hi]
        if outside:
            msg = f"{what} must be within {lo}-{hi}{why}, got {', '.join(map(str, outside))}"
            raise argparse.ArgumentTypeError(msg)
        return values

    parse.__name__ = what
    return parse


def _build_many_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sectors",
        type=_ranges_within(
            1, LATEST_SECTOR, "sectors", " (the sectors whose pointing tesswcs knows)"
        ),
        required=True,
        help="sectors, e.g. '1-5' or '1,3,7-9'",
    )
    cameras = _ranges_within(1, 4, "cameras")
    parser.add_argument("--cameras", type=cameras, default="1-4", help="default 1-4")
    parser.add_argument(
        "--ccds", type=_ranges_within(1, 4, "ccds"), default="1-4", help="default 1-4"
    )
    _build_options(parser)
    _dense_option(parser)
    _cluster_options(parser, required=True)
    parser.add_argument(
        "--concurrent",
        type=_int_at_least(1, "--concurrent"),
        default=2,
        help="builds sharing the cluster at once (default 2)",
    )
    parser.add_argument(
        "--summary",
        help="summary table, ECSV (or CSV for a .csv name); default OUT/build-many-summary.ecsv",
    )


@subcommand("build-many", _build_many_arguments)
def _build_many(args: argparse.Namespace) -> int:
    """Build many sectors/cameras/CCDs on one Dask cluster, skipping finished cubes."""
    import functools

    from .builder.distributed import build_many

    targets = [(s, c, d) for s in args.sectors for c in args.cameras for d in args.ccds]
    config = _config(args, dask=True)
    _check_folder(Path(args.out), "--out")
    guard = _FolderGuard()
    guard.watch(Path(args.out))
    try:
        with _dask_client(args) as client:
            table = build_many(
                targets,
                functools.partial(make_source, args.source),
                client,
                args.out,
                config,
                summary=args.summary,
                concurrent=args.concurrent,
                progress=not args.no_progress,
            )
    except BaseException:
        guard.undo()
        raise
    sys.stdout.write("\n".join(table.pformat(max_lines=-1, max_width=-1)) + "\n")
    failed = int((table["status"] == "failed").sum())
    if failed:
        sys.stderr.write(
            f"lk-scatterlight: error: {failed} of {len(table)} builds failed; see "
            f"{table.meta['summary_path']}\n"
        )
        return 1
    return 0


# ---------------------------------------------------------------------- dataset
def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    _build_arguments(parser)
    parser.add_argument(
        "--ephemeris",
        nargs="+",
        default=["spice"],
        metavar="KIND [PATH]",
        help="'spice' (lkspacecraft's SPICE kernels, downloaded once), 'horizons FILE' (a JPL "
        "Horizons vector table of TESS saved as CSV) or 'horizons' (query it with astroquery); "
        "default spice",
    )
    parser.add_argument(
        "--wcs",
        default="tesswcs",
        metavar="tesswcs|FFI",
        help="pointing: the archival WCS of tesswcs (default) or the WCS of a SPOC FFI file",
    )
    parser.add_argument("--no-compress", action="store_true", help="write an uncompressed .npz")
    parser.add_argument(
        "--plot",
        action="store_true",
        help="also write figures next to the file: the dark frame with its star, bleed and "
        "column masks (PNG) and GIF animations of the cube and of the Earth/Moon angle maps",
    )
    parser.add_argument(
        "--plot-step",
        type=_int_at_least(1, "--plot-step"),
        default=None,
        metavar="K",
        help="animate every K-th plane (default: at most 100 frames per animation)",
    )
    parser.add_argument(
        "--sparse",
        type=_int_at_least(1, "--sparse"),
        default=None,
        metavar="N",
        help="fast preview instead of a dense training set: the scattered light of N bins spread "
        "over the CCD at every good frame, with their geometry (a small .npz)",
    )
    parser.add_argument("--seed", type=int, default=0, help="which bins --sparse picks (default 0)")


@subcommand("dataset", _dataset_arguments)
def _dataset(args: argparse.Namespace) -> int:
    """Build a cube and its Earth/Moon geometry maps into a training set (.npz)."""
    import json

    from .builder import preview
    from .builder.dataset import cadence_numbers, dataset_filename, make_dataset, write_dataset
    from .builder.pipeline import build_cube
    from .geometry import CCDPointing, make_ephemeris, spacecraft_time

    config = _config(args)
    sparse = args.sparse is not None
    if sparse and config.time_bin is not None:
        msg = "--sparse gives one value per frame: drop --time-bin."
        raise UsageError(msg)
    out = Path(args.out)
    folder = out.parent if out.suffix else out
    if out.suffix:
        path = out
    elif sparse:
        path = out / preview.preview_filename(
            args.sector, args.camera, args.ccd, args.pixel_bin, args.sparse
        )
    else:
        path = out / dataset_filename(args.sector, args.camera, args.ccd, args.pixel_bin)
    figures = preview.figure_paths(path, dense=not sparse) if args.plot else {}
    for target in (path, *figures.values()):
        if target.exists() and not args.overwrite:
            raise ScatterLightError(f"{target} exists; pass --overwrite to replace it.")
    _check_folder(folder, "--out", args.out)
    if args.work_dir is not None:
        _check_folder(Path(args.work_dir), "--work-dir")
    if args.wcs == "tesswcs":
        pointing = CCDPointing.from_sector(args.sector, args.camera, args.ccd)
    else:
        pointing = CCDPointing.from_ffi(args.wcs)
    found = (pointing.sector, pointing.camera, pointing.ccd)
    if found != (args.sector, args.camera, args.ccd):
        msg = "The WCS of {} is sector {} camera {} CCD {}, not sector {} camera {} CCD {}.".format(
            args.wcs, *found, args.sector, args.camera, args.ccd
        )
        raise ScatterLightError(msg)
    source = make_source(args.source, args.sector, args.camera, args.ccd)
    time = source.time
    ephemeris = make_ephemeris(args.ephemeris, time_range=(time.min(), time.max()))
    spacecraft_time(time[[0, -1]], pointing, ephemeris)  # fail before the build if not covered
    work_dir = (
        Path(args.work_dir)
        if args.work_dir
        else folder
        / (
            f".lk-scatterlight-work_dataset_s{args.sector:04d}_{args.camera}-{args.ccd}"
            f"_bin{args.pixel_bin}"
        )
    )
    guard = _FolderGuard()
    guard.watch(folder)
    guard.watch(work_dir)
    progress = not args.no_progress
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if sparse:
            data = preview.sparse_preview(
                source, config, args.sparse, ephemeris, pointing, args.seed, progress
            )
            preview.write_preview(data, path, overwrite=args.overwrite)
            dark_names = json.loads(str(data["meta"]))["dark_frames"]
        else:
            cube = build_cube(source, config, work_dir=work_dir, progress=progress)
            data = make_dataset(
                cube, ephemeris, pointing, cadenceno=cadence_numbers(cube, source.frames)
            )
            write_dataset(data, path, overwrite=args.overwrite, compress=not args.no_compress)
            dark_names = cube.meta["dark_frames"]
        written = [path]
        if args.plot:
            static, _ = preview.dark_frame(source, config, dark_names)
            scene = preview.scene_masks(static, config)
            dense = None if sparse else data
            written += preview.write_figures(figures, static, scene, dense, args.plot_step)
    except BaseException:
        guard.undo()
        raise
    sys.stdout.write("".join(f"{p}\n" for p in written))
    return 0


# ---------------------------------------------------------------------- train
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data",
        nargs="+",
        metavar="DATA",
        help="cube training sets (.npz from `lk-scatterlight dataset`) and SPOC light curves "
        "(.fits with SAP_BKG), or folders of them",
    )
    parser.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.npz)")
    parser.add_argument(
        "--ephemeris",
        nargs="+",
        default=None,
        metavar="KIND [PATH...]",
        help="TESS's position (every source needs it): 'horizons FILE_OR_FOLDER...' (JPL "
        "Horizons vector tables; embedded in the model, so predicting works offline) or 'spice'",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--bin-minutes", type=float, default=30.0, help="time bin of light curves (default 30)"
    )
    parser.add_argument(
        "--max-samples",
        type=int,
        default=50_000,
        help="samples drawn from each cube training set (default 50000)",
    )
    parser.add_argument("--iterations", type=int, default=None, help="boosting iterations")
    parser.add_argument(
        "--validate",
        action="store_true",
        help="leave-one-sector-out validation on the light curves, recorded in the model",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


@subcommand("train", _train_arguments)
def _train(args: argparse.Namespace) -> int:
    """Train the learned scattered-light model on training sets and SPOC light curves."""
    from .builder.training import read_ephemerides, train_model

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it.")
    ephemeris = None
    if args.ephemeris:
        kind, paths = args.ephemeris[0].lower(), args.ephemeris[1:]
        if kind == "horizons" and paths:
            ephemeris = read_ephemerides(paths)
        elif kind == "spice" and not paths:
            from .geometry import SpiceEphemeris

            ephemeris = SpiceEphemeris()
        else:
            raise ScatterLightError(
                f"--ephemeris {' '.join(args.ephemeris)!r}: use 'horizons FILE...' or 'spice'."
            )
    params = None if args.iterations is None else {"max_iter": args.iterations}
    model = train_model(
        args.data,
        ephemeris,
        seed=args.seed,
        bin_minutes=args.bin_minutes,
        max_dataset_samples=args.max_samples,
        params=params,
        run_validation=args.validate,
        progress=not args.no_progress,
    )
    model.save(out, overwrite=args.overwrite)
    validation = model.meta.get("validation")
    if validation:
        sys.stdout.write(
            f"leave-one-sector-out: median {validation['median_percent']:.2f} % of the "
            f"background range (per-orbit quadratic {validation['median_quadratic_percent']:.2f} "
            "%)\n"
        )
    sys.stdout.write(f"{out}\n")
    return 0


# ---------------------------------------------------------------------- publish
def _record_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    """The options ``publish`` and ``publish-model`` share: mode, Zenodo record, metadata."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        dest="upload",
        action="store_false",
        default=False,
        help="only check the files and show what would be done (the default)",
    )
    mode.add_argument(
        "--upload", action="store_true", help="upload and publish (token in $ZENODO_TOKEN)"
    )
    parser.add_argument("--record", type=int, help="publish a new version of this record")
    parser.add_argument("--sandbox", action="store_true", help="use sandbox.zenodo.org")
    parser.add_argument(
        "--registry",
        help="registry file to update (default: lk_scatterlight/data/registry.txt of this "
        "source checkout)",
    )
    parser.add_argument("--title", help=f"record title (default: {title!r})")
    parser.add_argument(
        "--creator",
        action="append",
        dest="creators",
        metavar="'FAMILY, GIVEN'",
        help="record creator; repeat for several (default: inherited, or the developers)",
    )
    parser.add_argument("--description", help="record description (HTML allowed)")
    parser.add_argument("--license", default="cc-by-4.0", help="Zenodo license id")
    parser.add_argument(
        "--keyword", action="append", dest="keywords", help="record keyword; repeat for several"
    )
    parser.add_argument("--record-version", help="record version label (default: package's)")


def _record_options(args: argparse.Namespace, keywords) -> dict:
    """The keyword arguments of `publish_cubes` and `publish_model` from `_record_arguments`."""
    return {
        "upload": args.upload,
        "record": args.record,
        "sandbox": args.sandbox,
        "registry": args.registry,
        "title": args.title,
        "creators": args.creators,
        "description": args.description,
        "license": args.license,
        "keywords": args.keywords or keywords,
        "version": args.record_version,
    }


def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="cube files or folders")
    _record_arguments(parser, "... cubes, sector S")
    parser.add_argument(
        "--rename", action="store_true", help="publish misnamed files under their standard names"
    )


@subcommand("publish", _publish_arguments)
def _publish(args: argparse.Namespace) -> int:
    """Publish built cubes on Zenodo and add them to the registry (dry run by default)."""
    from .builder.publish import DEFAULT_KEYWORDS, publish_cubes

    result = publish_cubes(
        args.paths, rename=args.rename, **_record_options(args, DEFAULT_KEYWORDS)
    )
    sys.stdout.write(result.summary() + "\n")
    return 0


def _publish_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="model file (.npz) written by `lk-scatterlight train`")
    parser.add_argument("name", help="name users load it by, e.g. s1-25")
    _record_arguments(parser, "... scattered-light model 'NAME'")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace the registry's entry of another file published under this name",
    )


@subcommand("publish-model", _publish_model_arguments)
def _publish_model(args: argparse.Namespace) -> int:
    """Publish a learned model on Zenodo and add it to the registry (dry run by default)."""
    from .builder.publish import DEFAULT_MODEL_KEYWORDS, publish_model

    result = publish_model(
        args.path,
        args.name,
        replace=args.replace,
        **_record_options(args, DEFAULT_MODEL_KEYWORDS),
    )
    sys.stdout.write(result.summary() + "\n")
    return 0


def _register_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="model file (.npz) written by `lk-scatterlight train`")
    parser.add_argument("name", help="name users load it by, e.g. s1-25")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--record", type=int, help="Zenodo record holding the uploaded file")
    where.add_argument("--url", help="download URL of the uploaded file")
    parser.add_argument("--sandbox", action="store_true", help="the record is on the sandbox")
    parser.add_argument(
        "--registry",
        help="registry file to update (default: lk_scatterlight/data/registry.txt of this "
        "source checkout)",
    )


@subcommand("register-model", _register_model_arguments)
def _register_model(args: argparse.Namespace) -> int:
    """Add an uploaded learned model to the registry (prints the line written)."""
    from .builder.publish import register_model

    line = register_model(
        args.path,
        args.name,
        url=args.url,
        record=args.record,
        sandbox=args.sandbox,
        registry=args.registry,
    )
    sys.stdout.write(f"{line}\n")
    return 0


# ---------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="lk-scatterlight",
        description="Remove TESS scattered light from target pixel files.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, func) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=(func.__doc__ or "").strip().splitlines()[0])
        add_arguments(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    A usage error found by argparse exits (`SystemExit`) with code 2; other
    errors return 1 (2 for options that do not fit together) after one line
    on stderr, and Ctrl-C returns 130. ``--debug`` re-raises instead.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `lk-scatterlight list | head`
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        then = (
            "; run the same command again to resume the build from its last checkpoint"
            if args.command in RESUMABLE
            else ""
        )
        sys.stderr.write(f"lk-scatterlight: interrupted{then}.\n")
        return 130
    except UsageError as err:
        if args.debug:
            raise
        prog = f"lk-scatterlight {args.command}"
        sys.stderr.write(f"{prog}: error: {str(err).rstrip('.')} (see `{prog} --help`)\n")
        return 2
    except (ScatterLightError, OSError) as err:
        if args.debug:
            raise
        sys.stderr.write(f"lk-scatterlight: error: {error_message(err)}\n")
        return 1
    except ModuleNotFoundError as err:
        package = (err.name or "").partition(".")[0]
        if args.debug or package not in _OPTIONAL:
            raise
        sys.stderr.write(
            f"lk-scatterlight: error: `lk-scatterlight {args.command}` needs the optional "
            f"package {package}, which is not installed: {_OPTIONAL[package]}\n"
        )
        return 1


#: Optional packages of the commands that build cubes -> how to install them.
_OPTIONAL = dict.fromkeys(
    ("tesscube", "tesswcs", "lkspacecraft", "distributed", "dask", "aiobotocore", "botocore"),
    "pip install 'lk_scatterlight[builder]'",
) | {"astroquery": "pip install astroquery"}


#: Hints added to an operating-system error, by its type.
_OS_HINTS = {
    PermissionError: "choose a file or folder you can write to",
    NotADirectoryError: "part of the path is a file, not a folder",
    IsADirectoryError: "a folder was given where a file is needed",
}


def error_message(err: BaseException) -> str:
    """One line describing ``err`` for the command line.

    Operating-system errors read ``Permission denied: PATH (hint)``; advice
    the library words for Python (``pass overwrite=True``) names the option.
    """
    text = str(err)
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.strerror}: {err.filename}"
        if err.filename2 is not None:
            text += f" -> {err.filename2}"
        hint = next((h for cls, h in _OS_HINTS.items() if isinstance(err, cls)), None)
        if hint:
            text += f" ({hint})"
    text = text.replace("pass overwrite=True (--overwrite)", "pass --overwrite")
    text = text.replace("pass overwrite=True", "pass --overwrite")
    text = re.sub(  # astropy's advice for a file that is not FITS at all
        r"No SIMPLE card found,.*?ignore_missing_simple=True\.?",
        "it is not a FITS file (it does not start with a FITS header).",
        text,
        flags=re.DOTALL,
    )
    text = text.replace("cannot be read as a FITS file: it is not", "is not")
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
