"""Pieces shared by the subcommands: argument types, the subcommand registry, folder checks."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from ..ccd import LATEST_SECTOR, N_SCIENCE, check_sector
from ..exceptions import ScatterLightError

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


# ---------------------------------------------------------------------- subcommands
#: Subcommand name -> (function adding its arguments, function running it).
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {}


def subcommand(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``func(args) -> int`` as subcommand ``name``."""

    def decorator(func: Callable[..., int]) -> Callable[..., int]:
        SUBCOMMANDS[name] = (add_arguments, func)
        return func

    return decorator


def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and ``--no-progress``, for the commands that download."""
    parser.add_argument(
        "--cache-dir",
        help="cache folder (default: $LK_SCATTERLIGHT_CACHE, conf.cache_dir or the OS cache)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# ---------------------------------------------------------------------- folders
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
