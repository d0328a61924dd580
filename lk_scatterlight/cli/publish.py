"""Subcommands that publish: ``publish``, ``publish-model``, ``register-model``."""

from __future__ import annotations

import argparse
import sys

from ._common import (
    subcommand,
)


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
    from ..builder.publish import DEFAULT_KEYWORDS, publish_cubes

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
    from ..builder.publish import DEFAULT_MODEL_KEYWORDS, publish_model

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
    from ..builder.publish import register_model

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
