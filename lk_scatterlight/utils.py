"""Small helpers shared by the package's modules."""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["refuse_overwrite", "atomic_write", "write_text_atomic", "moved_names"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file through a temporary name, so it is never seen half-written.

    Yields a temporary path in the same folder as ``path`` (ending in the same
    suffix, so writers that infer the format from the name still work). When
    the block ends without an exception the temporary file is renamed to
    ``path`` (atomic on POSIX); otherwise it is removed and ``path`` is left as
    it was.

    Parameters
    ----------
    path : str or path-like
        The final file.

    Yields
    ------
    tmp : `~pathlib.Path`
        Where to write.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent
    )
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def refuse_overwrite(path: str | os.PathLike, overwrite: bool) -> None:
    """Raise `FileExistsError` if ``path`` exists and ``overwrite`` is False.

    The message names the keyword; the command line rewrites it to its flag.
    """
    if not overwrite and Path(path).exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through `atomic_write`, creating its folder.

    An existing file keeps its permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else None
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)  # keep the permissions of the file being replaced


def moved_names(module: str, moved: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that still finds names moved to another module.

    Each old name resolves to its new home, with a `DeprecationWarning` naming it.

    Parameters
    ----------
    module : str
        The module the names left (its ``__name__``).
    moved : dict of str to str
        Old name -> dotted path of the new one, e.g. ``"lk_scatterlight.lowrank.Planes"``.

    Returns
    -------
    getattr : callable
        Assign it to ``__getattr__`` in ``module``.
    """

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            msg = f"module {module!r} has no attribute {name!r}"
            raise AttributeError(msg)
        msg = f"{module}.{name} is deprecated; use {target}."
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        home, _, new = target.rpartition(".")
        return getattr(importlib.import_module(home), new)

    return __getattr__
