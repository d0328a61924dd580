"""Subcommands for users: ``demo``, ``fetch``, ``fetch-model``, ``list``, ``info``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..ccd import CAMERAS, CCDS, LATEST_SECTOR
from ..exceptions import ScatterLightError
from ._common import (
    _cache_arguments,
    _check_folder,
    _FolderGuard,
    pixel_bin,
    sector_number,
    subcommand,
)


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
        "registry -> fetch -> correct a TPF (about 12 s of CPU)"
    )
    from ..demo import run_demo

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
    from ..registry import _build_hint, fetch_cube

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
    from ..registry import fetch_model

    path = fetch_model(args.name, cache_dir=args.cache_dir, progressbar=not args.no_progress)
    sys.stdout.write(f"{path}\n")
    return 0


@subcommand("list", lambda parser: None)
def _list(args: argparse.Namespace) -> int:
    """List the published cubes and learned models."""
    from ..registry import available_cubes, available_models

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

    from ..cube import ScatterLightCube

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

    from ..interpolate import time_segments

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
