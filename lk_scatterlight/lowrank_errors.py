"""The error model of a compact cube: what ``flux_err`` a truncated SVD quotes.

A compact cube (`lk_scatterlight.lowrank`) stores ``flux_err**2`` as a few
products of a time series and an image (``docs/format.rst``, encoding
``LOWRANK``), made here from the dense cube's errors and the kept factors:

1. `rank1_error_model`: the dense ``flux_err`` as ``scale[t] * image[r, c]``,
   its leading singular pair (each bin no fine-layer block covers keeping its
   mean square over the planes exactly).
2. `noise_projection`: how much of that noise the kept temporal and spatial
   components carry into the reconstruction, ``G[t] image**2 + G'[t] H[r, c]``
   (``ERR_TIME``, ``ERR_SPACE``): the error of the reconstruction, not of the
   dense cube.
3. `truncation_image`: per bin, the signal the truncation dropped,
   ``T[r, c]`` (``ERR_TRUNC``), where it is significant against the noise.

So ``flux_err**2 = G[t] image**2 + G'[t] H + T**2``; see
`lk_scatterlight.cube.ScatterLightCube.compress` and ``docs/format.rst`` for
how the terms are measured and how evaluation combines them.
`~lk_scatterlight.lowrank.compress_planes` calls these in turn; like it, they
work on arrays and streamed planes, not on cubes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .lowrank import Planes

__all__ = [
    "rank1_error_model",
    "noise_projection",
    "truncation_image",
    "TRUNCATION_WINDOW",
    "TRUNCATION_NSIGMA",
]


def rank1_error_model(
    err: Planes, exact: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``err (ntime, npix) ~ scale[t] image[p]``: the leading singular pair (power iteration).

    Each iteration is one pass over the planes: ``scale = err @ image / |image|**2``
    block by block, accumulating ``scale @ err``. The bins ``exact`` (bool,
    ``(npix,)``; default all) then keep their mean square over the planes exactly,
    ``image**2 = mean(err**2)``: the leading pair follows the bins of largest error,
    and where those come and go with structure (a glint ridge sweeping through)
    its profile is theirs, and every other bin's noise came out ~8 % too small (the
    structured simulated field; compact cubes under-quoted open sky). Bins a fine
    layer covers keep the pair's image: their error is mostly the structure the
    layer takes over (`~lk_scatterlight.binsplit`), in the planes where the
    profile has it.

    Parameters
    ----------
    err : `~lk_scatterlight.lowrank.Planes`
        The dense cube's errors [e-/s].
    exact : ndarray of bool, shape (npix,), optional
        Bins that keep their mean square; default all.

    Returns
    -------
    scale : ndarray, shape (ntime,)
        RMS 1.
    image : ndarray, shape (npix,)
        [e-/s].
    rms, worst : float
        RMS and largest relative deviation of ``scale x image`` from ``err`` over
        the entries with non-zero error.
    """
    nt, npix = err.ntime, err.npix
    image = np.zeros(npix)
    mean2 = np.zeros(npix)
    for _, e in err.blocks():
        image += e.sum(axis=0, dtype=float) / nt
        mean2 += np.einsum("ij,ij->j", e, e, dtype=float) / nt
    if not np.any(image):
        return np.zeros(nt), np.zeros(npix), 0.0, 0.0
    for _ in range(30):  # a non-negative, nearly rank-1 matrix: a few steps suffice
        image32, norm2 = image.astype(np.float32), image @ image
        new, scale2 = np.zeros(npix), 0.0
        for _, e in err.blocks():
            scale = (e @ image32).astype(float) / norm2
            new += (scale.astype(np.float32) @ e).astype(float)
            scale2 += scale @ scale
        new /= scale2
        done = np.allclose(new, image, rtol=1e-6, atol=0)
        image = new
        if done:
            break
    image32, norm2 = image.astype(np.float32), image @ image
    scale = np.empty(nt)
    for part, e in err.blocks():
        scale[part] = (e @ image32).astype(float) / norm2
    norm = np.sqrt(np.mean(scale**2))
    scale, image = scale / norm, image * norm
    exact = np.ones(npix, bool) if exact is None else np.asarray(exact, bool).ravel()
    image[exact] = np.sqrt(mean2[exact])  # scale has RMS 1
    # The deviations of scale x image in one more pass.
    sum2, count, worst = 0.0, 0, 0.0
    for part, e in err.blocks():
        e = e.astype(float)
        use = e > 0
        rel = np.abs(scale[part, None] * image[None] - e)[use] / e[use]
        if rel.size:
            sum2, count, worst = sum2 + rel @ rel, count + rel.size, max(worst, rel.max())
    return scale, image, float(np.sqrt(sum2 / max(count, 1))), float(worst)


def noise_projection(
    temporal: np.ndarray, components: np.ndarray, scale: np.ndarray, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """How much of the dense cube's noise a truncated SVD keeps, per plane and bin.

    The reconstruction is ``R = P_T X + (I - P_T) X P_S`` to first order in
    the noise, with ``P_T`` the projector on the constant and the ``k`` kept
    temporal singular vectors (``ntime x ntime``) and ``P_S`` on the ``k``
    spatial components (``npix x npix``). Noise ``E`` with independent entries
    of variance ``(scale[t] image[b])**2`` therefore leaves in ``R``

    ``var[t, b] = G[t] image[b]**2 + G'[t] H[b]``

    with ``G[t] = sum_t' P_T[t, t']**2 scale[t']**2``,
    ``G'[t] = sum_t' (I - P_T)[t, t']**2 scale[t']**2`` and
    ``H[b] = sum_b' P_S[b, b']**2 image[b']**2`` (their cross term vanishes for
    a constant ``scale`` and is dropped). The first term is the noise the
    temporal components carry (smooth in time: they are), the second the
    spatial components' share of the rest (independent from plane to plane).
    Each costs ``O(k**2)`` per plane or bin.

    Parameters
    ----------
    temporal : ndarray, shape (ntime, k)
        Orthonormal temporal singular vectors (orthogonal to the constant).
    components : ndarray, shape (k, npix)
        Orthonormal spatial components.
    scale, image : ndarray, shapes (ntime,), (npix,)
        Rank-1 model of the dense cube's errors.

    Returns
    -------
    err_time : ndarray, shape (ntime, 2)
        ``G`` and ``G'``.
    err_space : ndarray, shape (npix,)
        ``sqrt(H)`` [e-/s].
    """
    nt = temporal.shape[0]
    q = np.column_stack([np.full(nt, 1 / np.sqrt(nt)), temporal])  # basis of P_T
    s2 = np.asarray(scale, dtype=float) ** 2
    g = np.einsum("ti,ij,tj->t", q, (q * s2[:, None]).T @ q, q)
    leverage = np.einsum("ti,ti->t", q, q)  # P_T[t, t]
    g_rest = np.clip(s2 * (1 - 2 * leverage) + g, 0, None)
    e2 = np.asarray(image, dtype=float) ** 2
    v = np.asarray(components, dtype=float)
    h = np.einsum("ib,ij,jb->b", v, (v * e2) @ v.T, v)
    return np.column_stack([g, g_rest]), np.sqrt(np.clip(h, 0, None))


#: Bins per side of the neighbourhood over which `truncation_image` averages its estimate.
TRUNCATION_WINDOW = 3
#: Significance (standard deviations of its noise) below which `truncation_image` takes a
#: neighbourhood's excess for noise: 0 there.
TRUNCATION_NSIGMA = 4.0


def truncation_image(
    residual_bin: np.ndarray,
    noise_bin: np.ndarray,
    err_time: np.ndarray,
    image: np.ndarray,
    err_space: np.ndarray,
    shape2d: tuple[int, int],
    ntime: int,
    exclude: np.ndarray | None = None,
    window: int = TRUNCATION_WINDOW,
) -> np.ndarray:
    """Per bin, the RMS of the signal the truncation dropped [e-/s], shape ``shape2d``.

    The compact minus the dense flux holds, besides the dropped signal, the dense
    noise the factors do not keep: of a bin's noise variance (mean over the
    planes, ``noise_bin``) the factors keep on average ``mean(G) image**2 +
    mean(G') H`` of the rank-1 model's ``image**2`` (`noise_projection`), and the
    rest is in the difference. What the difference holds beyond that noise,
    averaged over ``window`` x ``window`` bins (a bin's own estimate scatters by a
    third of its noise variance over ~20 planes), is the dropped signal's mean
    square where it exceeds `TRUNCATION_NSIGMA` times its chance scatter, else 0.
    The truncation leaves its error where the components miss structure (a
    strap's response, a sharp edge), not spread over the CCD.

    Parameters
    ----------
    residual_bin, noise_bin : ndarray, shape (npix,)
        Mean square over the planes of compact minus dense flux, and of the dense
        error [(e-/s)^2].
    err_time : ndarray, shape (ntime, 2)
        ``G`` and ``G'`` (`noise_projection`).
    image, err_space : ndarray, shape (npix,)
        The rank-1 error image and ``sqrt(H)`` [e-/s].
    shape2d : (int, int)
        Bins per row and column.
    ntime : int
        Planes the mean squares are over.
    exclude : ndarray of bool, shape ``shape2d``, optional
        Bins left out (0, and not in their neighbours' averages): where a fine
        layer carries the compression's loss
        (`~lk_scatterlight.compactfine.carry_compression`).
    window : int
        Side of the averaging neighbourhood [bins].

    Returns
    -------
    err_trunc : ndarray of float32, shape ``shape2d``
    """
    from scipy import ndimage  # here, not at import: reading a cube needs no scipy.ndimage

    image2 = np.asarray(image, dtype=float) ** 2
    kept = np.mean(err_time[:, 0]) * image2 + np.mean(err_time[:, 1]) * np.square(err_space)
    removed = 1 - np.divide(kept, image2, out=np.zeros_like(kept), where=image2 > 0)
    noise = (noise_bin * np.clip(removed, 0, 1)).reshape(shape2d)
    use = np.ones(shape2d) if exclude is None else (~np.asarray(exclude, bool)).astype(float)

    def window_sum(values):
        return ndimage.uniform_filter(values * use, window, mode="nearest") * window**2

    count = window_sum(np.ones(shape2d))
    safe = np.maximum(count, 1)
    excess = window_sum(residual_bin.reshape(shape2d) - noise) / safe
    # A mean of ntime squared noise values scatters by sqrt(2 / ntime) of it; the window
    # averages ``count`` such bins.
    scatter = window_sum(noise) / safe * np.sqrt(2 / ntime / safe)
    significant = (excess > TRUNCATION_NSIGMA * scatter) & (count > 0.5) & (use > 0)
    return np.sqrt(np.where(significant, excess, 0.0)).astype(np.float32)
