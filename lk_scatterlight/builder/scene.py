"""Stage 1 of a build: the static scene (stars plus steady sky) of a sector.

`candidate_frames` spreads ``n_candidates`` good frames over the sector,
`frame_level` ranks them by median level, `select_dark` keeps the ``n_dark``
darkest and `combine_dark` takes their pixel-wise median; `static_scene` does
all of it serially (the Dask build runs the same steps as tasks). The cube is
the light *above* this scene.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .config import BuildConfig

if TYPE_CHECKING:  # pragma: no cover
    from .sources import FFISource


__all__ = [
    "candidate_frames",
    "frame_level",
    "select_dark",
    "combine_dark",
    "static_scene",
]

log = logging.getLogger(__name__)


def candidate_frames(good: np.ndarray, n_candidates: int) -> np.ndarray:
    """Up to ``n_candidates`` good frames spread evenly over the sector (frame indices)."""
    index = np.flatnonzero(good)
    return index[np.unique(np.linspace(0, index.size - 1, n_candidates).astype(int))]


def frame_level(flux: np.ndarray) -> float:
    """Brightness rank of a frame: the median of every 16th pixel [e-/s].

    Of a sparse read (NaN rows), the median of every 16th column of as many of
    its read rows, evenly spaced, as a full read would give (every 16th row
    when every row was read); NaN when no row was read.
    """
    read = np.flatnonzero(np.isfinite(flux[:, ::16]).any(axis=1))
    if read.size == 0:
        return float("nan")
    stride = max(1, round(16 * read.size / flux.shape[0]))
    return float(np.nanmedian(flux[read[::stride], ::16]))


def select_dark(candidates: Sequence[int], levels: Sequence[float], n_dark: int) -> list[int]:
    """The ``n_dark`` darkest candidates (ties: the earlier frame), sorted by index.

    NaN levels rank last.
    """
    order = np.argsort(np.asarray(levels, dtype=float), kind="stable")[:n_dark]
    return sorted(int(np.asarray(candidates)[k]) for k in order)


def combine_dark(fluxes: Sequence[np.ndarray], rows: int = 256) -> np.ndarray:
    """The static scene: pixel-wise median of the dark frames, float32 [e-/s].

    Computed ``rows`` rows at a time, so the working memory is a fraction of
    the frames' (the median of each pixel does not depend on the blocks).
    """
    shape = fluxes[0].shape
    static = np.empty(shape, dtype=np.float32)
    with warnings.catch_warnings():  # rows a sparse read skipped are NaN in every frame
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        for start in range(0, shape[0], rows):
            block = np.stack([flux[start : start + rows] for flux in fluxes])
            static[start : start + rows] = np.nanmedian(block, axis=0)
    return static


def static_scene(
    source: FFISource, good: np.ndarray, config: BuildConfig, progress: bool
) -> tuple[np.ndarray, list[int]]:
    """Median of the darkest of ``n_candidates`` good frames spread over the sector.

    Reads each candidate once and keeps at most ``n_dark + 1`` of them in
    memory (what `select_dark` would pick from all of them).

    Returns
    -------
    static : ndarray of float32, shape (2048, 2048)
        The static scene [e-/s].
    dark : list of int
        Indices of the frames it is the median of.
    """
    from tqdm.auto import tqdm

    candidates = candidate_frames(good, config.n_candidates)
    darkest: list[tuple[float, int, np.ndarray]] = []
    reader = source.iter_read(candidates.tolist(), prefetch=config.prefetch)
    for info, flux, _ in tqdm(
        reader, total=candidates.size, desc="Static scene", disable=not progress, unit="frame"
    ):
        darkest.append((frame_level(flux), info.index, flux))
        keep = np.argsort([item[0] for item in darkest], kind="stable")[: config.n_dark]
        darkest = [darkest[k] for k in keep]  # memory stays at n_dark frames
    return combine_dark([item[2] for item in darkest]), sorted(item[1] for item in darkest)


_static_scene = static_scene  # the name benchmarks and older code use
