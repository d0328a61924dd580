"""Which candidate tiles a layer keeps: the ones whose structure persists (`persistent_blocks`).

A structure that stays in place (a baffle's shadow edge) is bright in most
frames and faint in the darkest ones, those the static scene is the median of:
there its tile's statistic sits a little above pure noise (1.1-1.3 for the
structured simulated field's shadow edge, threshold 2), and without a block
the plane's error is the whole edge (0.14-0.29 e-/s, against 0.02-0.04 where
it is kept). A frame cannot tell a faint structure from noise on its own, and a
streaming or Dask build sees each frame alone, so `fine_residual` keeps the
block of every tile above a lower level (`candidate_level`), and the assembly
keeps such a block only if its tile passes the threshold in enough of the
frames (`persistent_blocks`): noise alone rarely passes twice, so noise tiles
stay out. Most candidates are such noise (on the smooth simulated field ~140
tiles of a frame's 4096 with 2-px bins, against 0-2 that pass), so a frame
measures the layer's own errors (misfit, fill) only for the tiles that pass,
and the assembly pools a kept candidate's from the frames where its tile
passed (at least half of them).
"""

from __future__ import annotations

import numpy as np

#: Where the candidates start, as a fraction of the way from pure noise (1) to the
#: threshold: 1.2 for the default threshold of 2. Noise alone scatters a tile's statistic
#: by ~sqrt(2 / tile**2) around 1 (0.09 for 16 x 16 bins), so ~2 % of pure-noise tiles
#: pass it, and each candidate costs a kept tile's block (its smoothing along the
#: structure; not its errors, see the module docstring). On the structured
#: simulated field (``bench_errors.py --quick --fine-bin 2``, compact) the shadow edge went
#: from 4.18x the noise floor to 2.98x at 1.2 and 3.24x at 1.3, for a fine layer of 2.09
#: and 1.88 s CPU per frame (1.20 s without candidates; ``bench_whole_build.py``).
CANDIDATE = 0.2

#: The share of the used frames in which a tile must pass the threshold for its
#: candidate blocks to be kept.
PERSISTENT = 0.5


def candidate_level(threshold: float) -> float:
    """The tile statistic above which `fine_residual` measures a tile (`CANDIDATE`; the
    threshold itself if it is lower)."""
    return min(threshold, 1.0 + CANDIDATE * (threshold - 1.0))


def persistent_blocks(kept: np.ndarray, chi2: np.ndarray, threshold: float) -> np.ndarray:
    """The blocks a layer keeps among the measured ones.

    Parameters
    ----------
    kept : ndarray of bool, shape (nframes, ntiles)
        The tiles each frame measured (its candidates).
    chi2 : ndarray of float, shape (nframes, ntiles)
        Each frame's tile statistic (`FineFrame.chi2`).
    threshold : float
        The tile significance threshold.

    Returns
    -------
    keep : ndarray of bool, shape (nframes, ntiles)
        ``kept`` where the statistic passes ``threshold``, or where the tile
        passes it in at least `PERSISTENT` of the frames.
    """
    passed = kept & (chi2 > threshold)
    persistent = passed.sum(axis=0) >= PERSISTENT * kept.shape[0]
    return passed | (kept & persistent)
