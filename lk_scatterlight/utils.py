"""Small helpers shared by the package's modules."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write"]


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
