"""Subcommands for machine learning: ``dataset`` (training sets) and ``train`` (a model)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..exceptions import ScatterLightError
from ._common import (
    UsageError,
    _check_folder,
    _FolderGuard,
    _int_at_least,
    subcommand,
)
from .build import _build_arguments, _config, make_source


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
    """Build a cube and its Earth/Moon geometry maps into a training set (.npz).

    The set stores the binned planes only, so no fine layer is built unless
    ``--fine-bin`` asks for one.
    """
    import json

    from ..builder import preview
    from ..builder.dataset import cadence_numbers, dataset_filename, make_dataset, write_dataset
    from ..builder.pipeline import build_cube
    from ..geometry import CCDPointing, make_ephemeris, spacecraft_time

    config = _config(args)
    if args.fine_bin is None:  # the training set keeps the binned planes, not the fine layer
        config = dataclasses.replace(config, fine_bin=0)
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
    parser.add_argument(
        "--no-network",
        action="store_true",
        help="gradient-boosted trees only, without the small network averaged with them "
        "(faster to train; less accurate, see docs/model.rst)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


@subcommand("train", _train_arguments)
def _train(args: argparse.Namespace) -> int:
    """Train the learned scattered-light model on training sets and SPOC light curves."""
    from ..builder.training import read_ephemerides, train_model

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it.")
    ephemeris = None
    if args.ephemeris:
        kind, paths = args.ephemeris[0].lower(), args.ephemeris[1:]
        if kind == "horizons" and paths:
            ephemeris = read_ephemerides(paths)
        elif kind == "spice" and not paths:
            from ..geometry import SpiceEphemeris

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
        network=not args.no_network,
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
