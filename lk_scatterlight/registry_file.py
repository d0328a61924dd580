"""The cube registry file: where it is, its lines, and merging new lines into it.

The registry lists the published cubes, one line ``name sha256:HASH url`` each
(pooch's registry format; ``#`` starts a comment). This module is the one place
that knows where the file is:

* `registry_file` is the file the downloads read (`lk_scatterlight.registry`):
  the file named by ``LK_SCATTERLIGHT_REGISTRY``, else the one shipped with the
  package (``lk_scatterlight/data/registry.txt``);
* `default_registry` is the file ``lk-scatterlight publish`` writes by default:
  the shipped one, writable in a source checkout.

`registry_line` and `merge_registry` write lines (`lk_scatterlight.builder.publish`,
`lk_scatterlight.demo`); `registry_entry` reads the line of one file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .exceptions import ScatterLightError
from .utils import write_text_atomic

__all__ = [
    "REGISTRY_ENV",
    "SHIPPED",
    "registry_file",
    "default_registry",
    "registry_line",
    "registry_entry",
    "merge_registry",
]

log = logging.getLogger(__name__)

#: Environment variable naming a registry file to use instead of the shipped one.
REGISTRY_ENV = "LK_SCATTERLIGHT_REGISTRY"
#: Where the shipped registry lies inside the package folder.
SHIPPED = ("data", "registry.txt")


def registry_file():
    """The registry file the downloads read: ``LK_SCATTERLIGHT_REGISTRY`` or the shipped one.

    Returns
    -------
    path : `~pathlib.Path` or `importlib.resources.abc.Traversable`

    Raises
    ------
    ScatterLightError
        If ``LK_SCATTERLIGHT_REGISTRY`` names something that is not a file.
    """
    override = os.environ.get(REGISTRY_ENV, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ScatterLightError(
                f"{REGISTRY_ENV} points to {path}, which is not a file; fix the path or unset "
                "the variable to use the registry shipped with lk_scatterlight."
            )
        return path
    shipped = resources.files("lk_scatterlight")
    for part in SHIPPED:
        shipped = shipped / part
    return shipped


def default_registry() -> tuple[Path, bool]:
    """The package's registry file and whether it lies in a source checkout.

    Returns
    -------
    path : `~pathlib.Path`
        ``lk_scatterlight/data/registry.txt`` of the imported package.
    in_checkout : bool
        True if the package is a source checkout (a ``pyproject.toml`` next to
        it), where editing the registry makes sense: it reaches users with the
        next release. An installed copy would be overwritten by the next
        installation.
    """
    package = Path(__file__).resolve().parent
    return package.joinpath(*SHIPPED), (package.parent / "pyproject.toml").is_file()


def registry_line(name: str, sha256: str, url: str) -> str:
    """One registry line, ``name sha256:HASH url`` (pooch's registry format)."""
    return f"{name} sha256:{sha256} {url}"


def registry_entry(path: str | os.PathLike, name: str) -> str | None:
    """The line of a registry file for the file ``name``, or None if it has none.

    Parameters
    ----------
    path : str or path-like
        An existing registry file.
    name : str
        A published file name (the line's first field).

    Returns
    -------
    line : str or None
        The line, without surrounding white space.
    """
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and fields[0] == name:
            return line.strip()
    return None


def merge_registry(path: str | os.PathLike, lines: Sequence[str]) -> Path:
    """Merge registry lines into a registry file, atomically.

    A line for a file name already in the registry replaces it in place;
    other lines are appended. Comments, blank lines and other entries are kept
    as they are. The file is written to a temporary file in the same folder
    and renamed, so it is never left half-written.

    Parameters
    ----------
    path : str or path-like
        Registry file; created if missing.
    lines : sequence of str
        ``name sha256:HASH url`` lines (`registry_line`).

    Returns
    -------
    path : `~pathlib.Path`
    """
    path = Path(path)
    new = {line.split()[0]: line for line in lines}
    if path.exists():
        old = path.read_text(encoding="utf-8").splitlines()
    else:
        old = ["# lk_scatterlight cube registry: <file name> sha256:<SHA256> <download URL>"]
    merged = []
    for line in old:
        fields = line.split()
        if fields and not line.lstrip().startswith("#") and fields[0] in new:
            merged.append(new.pop(fields[0]))
        else:
            merged.append(line)
    merged.extend(new.values())
    write_text_atomic(path, "\n".join(merged) + "\n")
    return path
