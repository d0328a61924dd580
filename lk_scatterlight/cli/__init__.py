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
import re
import sys

from ..exceptions import ScatterLightError
from . import build, learn, publish, use  # (importing them registers the subcommands)
from ._common import RESUMABLE, SUBCOMMANDS, UsageError, _Parser, parse_duration

__all__ = ["error_message", "main", "parse_duration"]

#: The modules of the subcommands, in the order `lk-scatterlight --help` lists them.
_MODULES = (use, build, learn, publish)


# ---------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="lk-scatterlight",
        description="Remove TESS scattered light from target pixel files.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    order = {module.__name__: k for k, module in enumerate(_MODULES)}
    commands = sorted(SUBCOMMANDS.items(), key=lambda item: order[item[1][1].__module__])
    for name, (add_arguments, func) in commands:
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
