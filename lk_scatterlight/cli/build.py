"""Subcommands that build cubes: ``build`` (a CCD or a region of it) and ``build-many``."""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from pathlib import Path

from ..ccd import CAMERAS, CCDS, LATEST_SECTOR
from ..exceptions import ScatterLightError
from ._common import (
    UsageError,
    _check_folder,
    _FolderGuard,
    _int_at_least,
    _ranges_within,
    parse_duration,
    pixel_bin,
    sector_number,
    subcommand,
)


# ---------------------------------------------------------------------- build
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
        default=None,
        help="bin size [px] of the fine layer that keeps structure narrower than a bin "
        "(glint ridges, shadow edges) where the frames show it; divides --pixel-bin; "
        "0 for none (default 2, none with --pixel-bin 2 or less)",
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
        "grid of the bins and fine-layer tiles (32 px by default), made square and at least "
        "128 px wide (the on-demand rule)",
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
    from ..builder.pipeline import BuildConfig

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


def _dask_client(args: argparse.Namespace):
    """A Dask client for ``--scheduler``/``--workers``; its dashboard link goes to stderr."""
    import contextlib

    import distributed  # noqa: F401  (sets up its loggers on import)

    from ..builder.distributed import dask_client

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
    from ..builder.source_factory import SourceSpecError
    from ..builder.source_factory import make_source as factory

    try:
        return factory(kind, sector, camera, ccd)
    except SourceSpecError as err:
        raise UsageError(str(err)) from err


@subcommand("build", _build_command_arguments)
def _build(args: argparse.Namespace) -> int:
    """Build the scattered-light cube of one sector/camera/CCD from its FFIs."""
    import contextlib

    from ..builder.pipeline import build_cube, region_tag
    from ..builder.plan import sparse_config
    from ..registry import cube_filename

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
            config = sparse_config(config, source.row_step)  # fine bins that hold a read row
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
    from ..ccd import Region

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
        from ..ondemand import tpf_build_region

        region = tpf_build_region(location.region, config)
    elif args.region:
        try:
            region = Region(*args.region)
        except ValueError as err:
            raise UsageError(f"--region {' '.join(map(str, args.region))}: {err}") from err
        from ..ondemand import tpf_build_region

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

    from ..ondemand import locate_tpf

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
    from ..builder.pipeline import region_tag

    base = Path(args.work_dir) if args.work_dir is not None else folder
    tag = f"s{args.sector:04d}_{args.camera}-{args.ccd}{region_tag(region)}"
    return base / f".lk-scatterlight-download_{tag}"


def _regional_source(args: argparse.Namespace, region, folder: Path):
    """The frames of ``region``: a download of MAST's FFI cube, or cropped local/simulated FFIs."""
    if args.source[0] != "tesscube":
        source = make_source(args.source, args.sector, args.camera, args.ccd)
        return source.crop(region, row_step=args.row_step or 1)
    from ..builder.ffi_cube import FFICube, TessCubeRegionSource, download_region, region_bytes
    from ..ondemand import choose_row_step

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

    from ..builder.distributed import build_many

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
