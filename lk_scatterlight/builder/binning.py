"""Fast NaN-aware block statistics: one robust local plane fit per pixel bin.

A bin's plain mean (or median) is biased where the field has a gradient and
masked pixels (stars, straps) sit on one side of the bin: the valid pixels'
centroid is not the bin centre. `bin_plane_fit` instead fits, in every bin,

.. math:: v(dx, dy) = a + g_x\\,dx + g_y\\,dy

to the valid pixels by least squares, with offsets ``dx, dy`` from the bin
centre, so ``a`` is the value *at the nominal centre* whatever the mask. One
clipping pass drops pixels more than ``clip`` residual standard deviations
from the first fit (cosmic rays, residual star wings) before refitting.

The curvature of the field biases ``a`` by ``(f_xx <dx^2> + f_yy <dy^2>) / 2``
(the plane absorbs only the linear part); `curvature_correction` removes that
bias using second differences of the binned grid itself.

All sums are computed as matrix products on a ``(nbins, bin, nbins, bin)``
view of the image, so a 2048 x 2048 frame takes a few BLAS passes. The sums
of the weights alone (``sum w dx^l dy^k``) depend only on the mask: `mask_sums`
makes them once for a build, and the clipped refit subtracts the few clipped
pixels from them instead of summing the whole mask again. The image is fitted
in strips of bin rows, so the temporaries stay small and in cache.

The uncertainty of ``a`` is the standard error of the fitted intercept,
``sigma_res * sqrt((X^T X)^-1_00)``, with ``sigma_res`` the residual scatter
of the bin's valid pixels in that frame: an empirical estimate that includes
photon noise, read noise and unmodelled structure inside the bin.

The frames are static-subtracted, and the static scene's own noise is in
every frame's residuals, but it is the same in every frame: it shifts a bin
by a constant, which the cube cannot see and does not model, so it is not
part of a frame's error. Given the static scene's residual image
(`static_residual`), its share of the residual variance is measured per bin
as minus the covariance of the two residuals and removed. Without it the
errors are about 1.2-1.4 times too large (the static is a median of a few
frames as noisy as the frame).

`curvature_correction` sharpens the binned grid a little, which amplifies
the bins' noise by 10-20 %; `curvature_error` propagates that into the errors.

Where the field has structure inside a bin (a glint ridge, a shadow edge, a
bleed's wings), the residual scatter is mostly that structure, not noise
(issue 19: about 70 % of a bin's error variance at the ridge and bleed bins
of the structured simulation, 25 % at its shadow edge, under 10 % in open
sky). Given the uncertainty image, `BinnedFrame` also keeps the noise-only
part of the error (``noise``, the uncertainty image's share): the structure
part does not add like noise in an aperture (`significant_noise`,
`lk_scatterlight.binsplit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse

__all__ = [
    "BinnedFrame",
    "MaskSums",
    "bin_plane_fit",
    "curvature_correction",
    "curvature_error",
    "fill_empty_bins",
    "mask_sums",
    "significant_noise",
    "static_residual",
]


@dataclass
class BinnedFrame:
    """Binned values of one frame.

    Attributes
    ----------
    value : ndarray, shape (nb, nb)
        Plane-fit value at each bin centre; NaN where the bin had too few pixels.
    error : ndarray, shape (nb, nb)
        1-sigma standard error of ``value``.
    npix : ndarray of int, shape (nb, nb)
        Valid pixels used (after clipping).
    moments : ndarray, shape (2, nb, nb)
        Mean squared row and column offsets of those pixels [px^2], for
        `curvature_correction`.
    noise : ndarray, shape (nb, nb), or None
        The part of ``error`` that the uncertainty image accounts for (1-sigma,
        never above ``error``; NaN where ``value`` is); None without one. The
        rest, ``sqrt(error**2 - noise**2)``, is structure inside the bin.
    """

    value: np.ndarray
    error: np.ndarray
    npix: np.ndarray
    moments: np.ndarray
    noise: np.ndarray | None = None


def significant_noise(binned: BinnedFrame, nsigma: float = 3.0) -> np.ndarray:
    """A bin error's noise part, leaving a structure part only where one is measured.

    In a bin of pure noise the residual variance still scatters about the
    uncertainty image's, by ``sqrt(2 / (npix - 3))`` of it (a chi-square with
    ``npix - 3`` degrees of freedom). Only an excess above ``nsigma`` times that
    is taken as structure; below it the whole error is noise, so that noise
    never passes for structure a fine layer would model (issue 19).

    Parameters
    ----------
    binned : `BinnedFrame`
        From `bin_plane_fit` with an uncertainty image.
    nsigma : float
        Significance of the excess variance that counts as structure.

    Returns
    -------
    noise : ndarray, shape (nb, nb)
        ``binned.noise`` where the bin holds significant structure, else
        ``binned.error`` [e-/s] (NaN where ``binned.value`` is).

    Raises
    ------
    ValueError
        If ``binned`` has no noise part (no uncertainty image).
    """
    if binned.noise is None:
        msg = "bin_plane_fit was run without an uncertainty image: there is no noise part"
        raise ValueError(msg)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = (binned.error / binned.noise) ** 2 - 1
    scatter = np.sqrt(2 / np.maximum(binned.npix - 3, 1))
    return np.where(excess > nsigma * scatter, binned.noise, binned.error)  # NaN: False


def _offsets(pixel_bin: int) -> np.ndarray:
    return np.arange(pixel_bin, dtype=np.float64) - (pixel_bin - 1) / 2


def _basis(pixel_bin: int) -> np.ndarray:
    """Powers 0, 1, 2 of the offsets from the bin centre, float32 (pixel_bin, 3)."""
    d = _offsets(pixel_bin)
    return np.stack([np.ones_like(d), d, d * d], axis=1).astype(np.float32)


def _floor_step(pixel_bin: int) -> int:
    """Row step of the error floor's subsample of the uncertainty image."""
    return 4 if pixel_bin % 4 == 0 else 1


def _bin_sums(values4: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``s[i, j, l, k] = sum over bin (i, j) of values * dx**l * dy**k``.

    ``values4`` is a (nbr, b, nb, b) view and ``basis`` (b, m) holds the powers
    of the offsets; both reductions are matrix products: over ``dx`` in float32
    BLAS, then over ``dy`` in float64.
    """
    nbr, b, nb, _ = values4.shape
    m = basis.shape[1]
    partial = (values4 @ basis).reshape(nbr, b, nb * m).astype(np.float64)  # [i, ky, (j, l)]
    total = basis.T.astype(np.float64) @ partial  # [i, k, (j, l)]
    return total.reshape(nbr, m, nb, m).transpose(0, 2, 3, 1)


@dataclass(frozen=True)
class MaskSums:
    """Sums over a fixed weight mask, shared by every frame binned with it.

    The first plane fit of every frame uses the same weights, so their sums
    (``sum w dx^l dy^k``) are computed once per build (`mask_sums`); the
    clipped fit then only subtracts the few clipped pixels.

    Attributes
    ----------
    pixel_bin : int
        Bin size [px].
    shape : tuple of int
        Shape of the weight image.
    sums : ndarray of float64, shape (nb, nb, 3, 3)
        ``sums[i, j, l, k]`` = sum over bin (i, j) of ``w * dx**l * dy**k``, with
        ``dx, dy`` the column and row offsets from the bin centre.
    floor_weight : ndarray of float64, shape (nb, nb)
        Sum of the weights on the rows the error floor samples.
    binary : bool
        Every weight is 0 or 1 (the clipped pixels are then found with one
        comparison of the weighted squared residuals).
    """

    pixel_bin: int
    shape: tuple[int, int]
    sums: np.ndarray
    floor_weight: np.ndarray
    binary: bool

    @property
    def nbytes(self) -> int:
        """Memory held by the sums [bytes]."""
        return int(self.sums.nbytes + self.floor_weight.nbytes)


def mask_sums(valid: np.ndarray, pixel_bin: int) -> MaskSums:
    """The sums of a weight mask that every frame's plane fit reuses (`MaskSums`).

    Parameters
    ----------
    valid : ndarray of bool or float32, shape (n, n)
        The weights given to `bin_plane_fit`.
    pixel_bin : int
        Bin size [px]; must divide ``n``.

    Returns
    -------
    sums : `MaskSums`
    """
    n = valid.shape[0]
    if valid.shape != (n, n) or n % pixel_bin:
        raise ValueError(
            f"mask {valid.shape} must be square with a side divisible by pixel_bin={pixel_bin}."
        )
    nb, b = n // pixel_bin, pixel_bin
    weight = valid if valid.dtype == np.float32 else valid.astype(np.float32)
    weight4 = weight.reshape(nb, b, nb, b)
    return MaskSums(
        pixel_bin=b,
        shape=(n, n),
        sums=_bin_sums(weight4, _basis(b)),
        floor_weight=_floor_weight(weight4),
        binary=bool(np.all((weight == 0) | (weight == 1))),
    )


def static_residual(
    static: np.ndarray, valid: np.ndarray, pixel_bin: int, sums: MaskSums | None = None
) -> np.ndarray:
    """The static scene less its plane fit in every bin, on the pixels the fits use.

    `bin_plane_fit` compares a frame's residuals with these to measure how much
    of their scatter is the static scene's own noise (see the module docstring).

    Parameters
    ----------
    static : ndarray, shape (n, n)
        The static scene subtracted from the frames [e-/s]; NaN pixels count as masked.
    valid : ndarray of bool or float32, shape (n, n)
        The weights given to `bin_plane_fit`.
    pixel_bin : int
        Bin size [px]; must divide ``n``.
    sums : `MaskSums`, optional
        ``mask_sums(valid, pixel_bin)``, if already made.

    Returns
    -------
    residual : ndarray of float32, shape (n, n)
        ``static`` minus its weighted least-squares plane in each bin [e-/s]; 0
        where the weight is 0 or ``static`` is not finite.
    """
    n = static.shape[0]
    if static.shape != (n, n) or valid.shape != static.shape or n % pixel_bin:
        raise ValueError(
            f"static scene {static.shape} and mask {valid.shape} must be square with a side "
            f"divisible by pixel_bin={pixel_bin}."
        )
    nb, b = n // pixel_bin, pixel_bin
    weight = valid if valid.dtype == np.float32 else valid.astype(np.float32)
    finite = np.isfinite(static)
    if not finite.all():
        weight, sums = weight * finite, None
    if sums is None:
        sums = mask_sums(weight, b)
    image4 = np.where(finite, static, 0).astype(np.float32).reshape(nb, b, nb, b)
    weight4 = weight.reshape(nb, b, nb, b)
    coef = _solve(sums.sums, _rhs(_bin_sums(image4 * weight4, _basis(b)[:, :2])))[0]
    residual = _residual(image4, coef, _offsets(b), out=np.empty_like(image4))
    residual[weight4 == 0] = 0
    return residual.reshape(n, n)


def _solve(sw: np.ndarray, rhs: np.ndarray, sum_wv2: np.ndarray | None = None):
    """Weighted least-squares plane per bin from its sums, in closed form.

    Parameters
    ----------
    sw : ndarray, shape (nb, nb, 3, 3)
        ``sum w dx^l dy^k`` per bin (`_bin_sums` of the weights).
    rhs : ndarray, shape (nb, nb, 3)
        ``sum w v``, ``sum w v dx``, ``sum w v dy`` per bin.
    sum_wv2 : ndarray, shape (nb, nb), optional
        ``sum w v^2`` per bin, for the residual sum of squares.

    Returns
    -------
    coef : ndarray, shape (nb, nb, 3)
        (a, gx, gy): value at the bin centre and gradients along columns, rows.
    inverse00 : ndarray, shape (nb, nb)
        ``(X^T W X)^-1`` element (0, 0): the variance of ``a`` per unit pixel variance.
    n : ndarray, shape (nb, nb)
        Sum of weights (valid pixels).
    moments : ndarray, shape (2, nb, nb)
        Mean squared row and column offsets of the valid pixels [px^2].
    rss : ndarray, shape (nb, nb) or None
        Residual sum of squares (None without ``sum_wv2``).
    """
    n, sx, sy = sw[..., 0, 0], sw[..., 1, 0], sw[..., 0, 1]
    sxx, syy, sxy = sw[..., 2, 0], sw[..., 0, 2], sw[..., 1, 1]
    ok = n >= 3
    safe_n = np.where(ok, n, 1)
    # Centred second moments: a gradient needs pixels spread over rows and columns.
    cxx = sxx / safe_n - (sx / safe_n) ** 2
    cyy = syy / safe_n - (sy / safe_n) ** 2
    cxy = sxy / safe_n - (sx / safe_n) * (sy / safe_n)
    det_c = cxx * cyy - cxy**2
    plane = ok & (cxx >= 0.5) & (cyy >= 0.5) & (det_c >= 1e-3 * cxx * cyy)
    # Closed-form solution of the 3x3 normal equations via the centred moments:
    # gradients from the centred system, then a = mean - g . centroid.
    mx, my = sx / safe_n, sy / safe_n
    mv = rhs[..., 0] / safe_n
    cxv = rhs[..., 1] / safe_n - mx * mv
    cyv = rhs[..., 2] / safe_n - my * mv
    safe_det = np.where(plane, det_c, 1)
    gx = np.where(plane, (cyy * cxv - cxy * cyv) / safe_det, 0)
    gy = np.where(plane, (cxx * cyv - cxy * cxv) / safe_det, 0)
    a = mv - gx * mx - gy * my
    # Var(a) / sigma^2 = 1/n + m^T C^-1 m / n for a plane, 1/n for a constant.
    quad = (cyy * mx**2 - 2 * cxy * mx * my + cxx * my**2) / safe_det
    inverse00 = (1 + np.where(plane, quad, 0)) / safe_n
    coef = np.stack([a, gx, gy], -1)
    coef[~ok] = 0
    moments = np.stack([syy, sxx]) / safe_n
    if sum_wv2 is None:
        return coef, inverse00, n, moments, None
    # Residual sum of squares of the fit: sum w v^2 - coef . rhs.
    return coef, inverse00, n, moments, np.maximum(sum_wv2 - (coef * rhs).sum(-1), 0)


def _rhs(sv: np.ndarray) -> np.ndarray:
    """``sum w v``, ``sum w v dx``, ``sum w v dy`` from `_bin_sums` with two powers."""
    return np.stack([sv[..., 0, 0], sv[..., 1, 0], sv[..., 0, 1]], -1)


def _residual(image4: np.ndarray, coef: np.ndarray, d: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``image4`` minus each bin's plane, written to ``out`` (nbr, b, nb, b) float32.

    The plane is ``(a + gx dx) + gy dy`` in float32; every pass runs along whole
    image rows (broadcasting over the short bin axis would be several times slower).
    """
    nbr, b, nb, _ = image4.shape
    a, gx, gy = (coef[..., k].astype(np.float32) for k in range(3))
    d = d.astype(np.float32)
    along_x = (a[..., None] + gx[..., None] * d).reshape(nbr, 1, nb * b)
    rows = out.reshape(nbr, b, nb * b)
    np.multiply(np.repeat(gy, b, axis=1)[:, None, :], d[None, :, None], out=rows)  # gy dy
    np.add(along_x, rows, out=rows)  # the plane
    return np.subtract(image4, out, out=out)


def _clipped_pixels(
    residual4: np.ndarray,
    weight4: np.ndarray,
    weighted_r2: np.ndarray,
    threshold: np.ndarray,
    binary: bool,
) -> np.ndarray:
    """Flat indices of the weighted pixels with ``|residual| > threshold`` of their bin.

    Candidates come from one comparison of squared residuals with squared
    thresholds (a superset whatever the rounding); the exact test runs on them only.
    """
    nbr, b, nb, _ = residual4.shape
    width = nb * b
    # Each bin's threshold repeated along its image row: the comparison then runs
    # along whole rows (broadcasting over the short bin axis is several times slower).
    thr2 = np.repeat(np.square(threshold), b, axis=1)[:, None, :]
    if binary:  # weighted_r2 is residual**2 on weighted pixels, 0 elsewhere
        candidates = np.flatnonzero(weighted_r2.reshape(nbr, b, width) >= thr2)
    else:
        rows = residual4.reshape(nbr, b, width)
        candidates = np.flatnonzero((rows * rows >= thr2) & (weight4.reshape(nbr, b, width) != 0))
    row, col = np.divmod(candidates, width)
    bin_thr = threshold[row // b, col // b]
    return candidates[np.abs(residual4.reshape(-1)[candidates]) > bin_thr]


def _pixel_sums(
    index: np.ndarray, weight4: np.ndarray, factor4: np.ndarray | None = None
) -> np.ndarray:
    """`_bin_sums` of the weights (times ``factor4``, if given) with the (b, 3) powers, of
    the pixels at flat ``index`` only."""
    nbr, b, nb, _ = weight4.shape
    row, col = np.divmod(index, nb * b)
    bins = (row // b) * nb + col // b
    dy, dx = _offsets(b)[row % b], _offsets(b)[col % b]
    w = weight4.reshape(-1)[index].astype(np.float64)
    if factor4 is not None:
        w *= factor4.reshape(-1)[index]
    out = np.empty((nbr * nb, 3, 3))
    for k in range(3):  # power of dy
        for m in range(3):  # power of dx
            term = w * dx**m * dy**k
            out[:, m, k] = np.bincount(bins, weights=term, minlength=nbr * nb)
    return out.reshape(nbr, nb, 3, 3)


def bin_plane_fit(
    image: np.ndarray,
    valid: np.ndarray,
    pixel_bin: int,
    clip: float = 4.0,
    min_fraction: float = 0.2,
    uncertainty: np.ndarray | None = None,
    sums: MaskSums | None = None,
    static: np.ndarray | None = None,
) -> BinnedFrame:
    """Robust local plane fit in square bins.

    Parameters
    ----------
    image : ndarray, shape (n, n)
        Static-subtracted frame [e-/s]; ``n`` a multiple of ``pixel_bin``.
        NaN pixels are ignored.
    valid : ndarray of bool or float32, shape (n, n)
        Pixels that may be used (False / 0 for stars, straps, bad columns). A
        float32 array of 0/1 weights, made once per build, saves a conversion
        per frame.
    pixel_bin : int
        Bin size [px].
    clip : float
        Residual clipping threshold in standard deviations.
    min_fraction : float
        Bins with fewer valid pixels than this fraction of ``pixel_bin**2``
        (and never fewer than 10) are returned as NaN.
    uncertainty : ndarray, shape (n, n), optional
        Per-pixel 1-sigma uncertainty of ``image`` [e-/s], e.g. the FFI
        uncertainty image. The error of a bin is then never below what these
        imply for its intercept: the residual scatter alone reads zero where a
        frame equals the static scene (a dark frame that was the median). The
        bin's mean variance is taken from every 4th row, plenty for a floor.
    sums : `MaskSums`, optional
        ``mask_sums(valid, pixel_bin)``, made once for many frames with the same
        ``valid``: saves a pass over the mask per frame. It must belong to this
        very ``valid`` (only its shape and bin size are checked).
    static : ndarray of float32, shape (n, n), optional
        ``static_residual(static_scene, valid, pixel_bin)`` of the static scene
        that was subtracted from ``image``. The error then leaves out the static
        scene's own noise, which is the same in every frame (see the module
        docstring); without it the error includes it.

    Returns
    -------
    binned : `BinnedFrame`
    """
    n = image.shape[0]
    if image.shape != (n, n) or n % pixel_bin or valid.shape != image.shape:
        raise ValueError(
            f"image {image.shape} and mask {valid.shape} must be square with a side divisible "
            f"by pixel_bin={pixel_bin}."
        )
    if sums is not None and (sums.shape != image.shape or sums.pixel_bin != pixel_bin):
        raise ValueError(
            f"mask sums for {sums.shape} and pixel_bin={sums.pixel_bin} do not fit "
            f"image {image.shape} and pixel_bin={pixel_bin}."
        )
    if static is not None and static.shape != image.shape:
        raise ValueError(
            f"static residual {static.shape} does not fit image {image.shape}; make it with "
            "static_residual(static_scene, valid, pixel_bin)."
        )
    nb, b = n // pixel_bin, pixel_bin
    weight = valid if valid.dtype == np.float32 else valid.astype(np.float32)
    if sums is None:
        sums = mask_sums(weight, b)
    image4 = np.asarray(image, dtype=np.float32).reshape(nb, b, nb, b)
    weight4 = weight.reshape(nb, b, nb, b)
    sigma4 = static4 = None
    if uncertainty is not None:
        sigma4 = np.asarray(uncertainty, dtype=np.float32).reshape(nb, b, nb, b)
    if static is not None:
        static4 = np.asarray(static, dtype=np.float32).reshape(nb, b, nb, b)
    value, error = np.empty((nb, nb)), np.empty((nb, nb))
    count, moments = np.empty((nb, nb), dtype=np.int32), np.empty((2, nb, nb))
    noise = None if sigma4 is None else np.empty((nb, nb))
    # Bins are independent: fit strips of bin rows, so the temporaries stay small
    # (in cache, and reused rather than freshly mapped for every frame).
    height = max(1, _STRIP_PIXELS // (b * n))
    for top in range(0, nb, height):
        rows = slice(top, top + height)
        strip = _fit_strip(
            image4[rows],
            weight4[rows],
            sums.sums[rows],
            sums.floor_weight[rows],
            sums.binary,
            clip,
            None if sigma4 is None else sigma4[rows],
            None if static4 is None else static4[rows],
        )
        coef, sigma2, inverse00, count[rows], moments[:, rows], floor = strip
        enough = count[rows] >= max(10, min_fraction * b * b)
        value[rows] = np.where(enough, coef[..., 0], np.nan)
        error[rows] = np.where(enough, np.sqrt(sigma2 * inverse00), np.nan)
        if noise is not None:
            noise[rows] = np.where(enough, np.sqrt(floor * inverse00), np.nan)
    return BinnedFrame(value, error, count, moments, noise)


_STRIP_PIXELS = 1 << 19
"""Pixels per strip of `bin_plane_fit` (2 MB per float32 temporary)."""


def _fit_strip(
    image4: np.ndarray,
    weight4: np.ndarray,
    sw: np.ndarray,
    floor_weight: np.ndarray,
    binary: bool,
    clip: float,
    sigma4: np.ndarray | None,
    static4: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two plane fits of `bin_plane_fit` on a strip of bin rows.

    Parameters
    ----------
    image4, weight4 : ndarray of float32, shape (nbr, b, nb, b)
        The strip's pixels and weights.
    sw, floor_weight : ndarray
        The strip's rows of the `MaskSums` of ``weight4``.
    binary : bool
        Every weight is 0 or 1.
    clip : float
        Residual clipping threshold [sigma].
    sigma4 : ndarray of float32, shape (nbr, b, nb, b), or None
        Per-pixel uncertainties for the error floor.
    static4 : ndarray of float32, shape (nbr, b, nb, b), or None
        The static scene's residual (`static_residual`), whose noise share of
        the residual variance is removed.

    Returns
    -------
    coef : ndarray, shape (nbr, nb, 3)
        Plane coefficients (first fit plus the refit's correction).
    sigma2 : ndarray, shape (nbr, nb)
        Residual variance per pixel (less the static scene's share), floored by
        the uncertainties.
    inverse00, count : ndarray, shape (nbr, nb)
        As returned by `_solve` for the refit.
    moments : ndarray, shape (2, nbr, nb)
    floor : ndarray, shape (nbr, nb), or None
        Mean squared uncertainty of the fitted pixels (None without ``sigma4``).
    """
    b = image4.shape[1]
    d = _offsets(b)
    basis = _basis(b)
    work = np.multiply(image4, weight4)
    sv = _bin_sums(work, basis[:, :2])
    static_sums = None  # sum w * static residual * (1, dx, dy): zero for the mask's weights
    if not np.isfinite(sv).all():
        # Non-finite pixels (NaN, inf) leave this frame's weights: new mask sums.
        finite = np.isfinite(image4)
        weight4 = weight4 * finite
        image4 = np.where(finite, image4, 0)
        np.multiply(image4, weight4, out=work)
        sv = _bin_sums(work, basis[:, :2])
        sw = _bin_sums(weight4, basis)
        floor_weight = _floor_weight(weight4)
        if static4 is not None:
            static_sums = _rhs(_bin_sums(static4 * weight4, basis[:, :2]))

    first, _, count, _, _ = _solve(sw, _rhs(sv))
    # Clip outliers (cosmic rays, residual star wings), then refit the residuals of
    # the first fit: small numbers, so the sums keep their precision in float32.
    residual = _residual(image4, first, d, out=work)
    if binary:  # (w r)**2 = w r**2 for 0/1 weights: weight the residuals once
        residual *= weight4
        weighted_r2 = np.multiply(residual, residual)
    else:
        weighted_r2 = np.multiply(residual, residual)
        weighted_r2 *= weight4
    ones = np.ones((b, 1), dtype=np.float32)
    rss = _bin_sums(weighted_r2, ones)[..., 0, 0]
    sigma = np.sqrt(rss / np.maximum(count - 3, 1))
    threshold = (clip * sigma + 1e-5 * (np.abs(first[..., 0]) + 1)).astype(np.float32)
    clipped = _clipped_pixels(residual, weight4, weighted_r2, threshold, binary)
    # The refit's weights are the mask's without the clipped pixels: its sums are
    # the mask sums minus theirs, and the residual sums skip them.
    sw = sw - _pixel_sums(clipped, weight4)
    weighted_r2.reshape(-1)[clipped] = 0
    if not binary:
        residual *= weight4
    residual.reshape(-1)[clipped] = 0  # now w * residual with the refit's weights
    rhs = _rhs(_bin_sums(residual, basis[:, :2]))
    correction, inverse00, count, moments, rss = _solve(
        sw, rhs, _bin_sums(weighted_r2, ones)[..., 0, 0]
    )
    sigma2 = rss / np.maximum(count - 3, 1)
    if static4 is not None:
        own = _rhs(_pixel_sums(clipped, weight4, static4))  # the clipped pixels' share
        own = -own if static_sums is None else static_sums - own
        cross = _bin_sums(np.multiply(residual, static4, out=weighted_r2), ones)[..., 0, 0]
        # The refit's residual is the first one less the correction plane.
        cross -= (correction * own).sum(-1)
        # Minus the covariance with the static's residual is the static noise's variance; a
        # median of frames as noisy as this one, it is at most half the residual variance.
        sigma2 -= np.clip(-cross / np.maximum(count - 3, 1), 0, 0.5 * sigma2)
    floor = None
    if sigma4 is not None:
        floor = _floor_variance(sigma4, weight4, clipped, floor_weight)
        sigma2 = np.maximum(sigma2, floor)
    return first + correction, sigma2, inverse00, count, moments, floor


def _floor_weight(weight4: np.ndarray) -> np.ndarray:
    """Sum of the weights per bin on the rows the error floor samples."""
    return weight4[:, :: _floor_step(weight4.shape[1])].sum(axis=(1, 3), dtype=np.float64)


def _floor_variance(
    sigma4: np.ndarray, weight4: np.ndarray, clipped: np.ndarray, floor_weight: np.ndarray
) -> np.ndarray:
    """Mean squared uncertainty of each bin's fitted pixels, on a subsample of rows.

    Parameters
    ----------
    sigma4 : ndarray of float32, shape (nbr, b, nb, b)
        Per-pixel 1-sigma uncertainty [e-/s]; NaN counts as 0.
    weight4 : ndarray of float32, shape (nbr, b, nb, b)
        The first fit's weights.
    clipped : ndarray of int
        Flat indices of the pixels the refit dropped.
    floor_weight : ndarray, shape (nbr, nb)
        `_floor_weight` of ``weight4``.

    Returns
    -------
    mean_var : ndarray, shape (nbr, nb)
    """
    nbr, b, nb, _ = weight4.shape
    step = _floor_step(b)
    sigma4, w4 = sigma4[:, ::step], weight4[:, ::step]
    var = sigma4 * sigma4
    var *= w4
    # Clipped pixels on the sampled rows, as flat indices of the (nbr, b // step, nb, b) sample.
    row, col = np.divmod(clipped, nb * b)
    sampled = row % step == 0
    index = (row[sampled] // step) * (nb * b) + col[sampled]
    var.reshape(-1)[index] = 0
    total = (var @ np.ones((b, 1), dtype=np.float32))[..., 0].sum(axis=1, dtype=np.float64)
    if not np.isfinite(total).all():  # NaN or inf uncertainties: count NaN as 0
        var = np.nan_to_num(sigma4 * sigma4) * w4
        var.reshape(-1)[index] = 0
        total = var.sum(axis=(1, 3), dtype=np.float64)
    weight = floor_weight - np.bincount(
        (row[sampled] // b) * nb + col[sampled] // b,
        weights=w4.reshape(-1)[index],
        minlength=nbr * nb,
    ).reshape(nbr, nb)
    return total / np.maximum(weight, 1)


def curvature_correction(value: np.ndarray, moments: np.ndarray, pixel_bin: int) -> np.ndarray:
    """Remove the bias of plane-fit values caused by the field's curvature.

    A plane fitted to ``f`` over pixels with mean squared offsets ``<dy^2>``,
    ``<dx^2>`` returns ``f + (f_yy <dy^2> + f_xx <dx^2>) / 2`` at the centre. The
    second derivatives are taken from second differences of the binned grid
    (one-sided at the edges), which is accurate for fields smooth on the bin
    scale.

    Parameters
    ----------
    value : ndarray, shape (nb, nb)
        Filled (no NaN) bin values [e-/s].
    moments : ndarray, shape (2, nb, nb)
        ``<dy^2>``, ``<dx^2>`` per bin [px^2].
    pixel_bin : int

    Returns
    -------
    corrected : ndarray, shape (nb, nb)
    """
    if min(value.shape) < 3:
        return value
    f_yy = _second_difference(value, axis=0) / pixel_bin**2
    f_xx = _second_difference(value, axis=1) / pixel_bin**2
    return value - 0.5 * (f_yy * moments[0] + f_xx * moments[1])


def curvature_error(error: np.ndarray, moments: np.ndarray, pixel_bin: int) -> np.ndarray:
    """The errors of `curvature_correction`'s values, from those of the values it corrects.

    The correction subtracts ``c (v[i-1] - 2 v[i] + v[i+1])`` along each axis,
    with ``c = <d^2> / (2 pixel_bin**2)`` (about 0.04 for a full bin; at the
    edges the second difference is the neighbour's), so a bin's value takes
    ``1 + 2 c_row + 2 c_col`` of its own noise and ``-c`` of each neighbour's:
    about 17 % more noise for full interior bins, treating the bins as
    independent.

    Parameters
    ----------
    error : ndarray, shape (nb, nb)
        1-sigma errors of the values given to `curvature_correction` [e-/s]; no NaN.
    moments : ndarray, shape (2, nb, nb)
        ``<dy^2>``, ``<dx^2>`` per bin [px^2].
    pixel_bin : int

    Returns
    -------
    error : ndarray, shape (nb, nb)
    """
    if min(error.shape) < 3:
        return error
    var = np.square(np.asarray(error, dtype=np.float64))
    own = np.ones_like(var)  # coefficient of the bin's own value
    others = np.zeros_like(var)  # variance from its neighbours
    for axis in (0, 1):
        c = np.moveaxis(0.5 * moments[axis] / pixel_bin**2, axis, 0)
        v, o, s = (np.moveaxis(a, axis, 0) for a in (var, own, others))
        o[1:-1] += 2 * c[1:-1]  # stencil (1, -2, 1) centred on the bin
        s[1:-1] += c[1:-1] ** 2 * (v[:-2] + v[2:])
        for edge, first, second in ((0, 1, 2), (-1, -2, -3)):  # the neighbour's stencil
            o[edge] -= c[edge]
            s[edge] += c[edge] ** 2 * (4 * v[first] + v[second])
    return np.sqrt(own**2 * var + others)


def _second_difference(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(a, axis, 0)
    out = np.empty_like(a)
    out[1:-1] = a[2:] - 2 * a[1:-1] + a[:-2]
    out[0], out[-1] = out[1], out[-2]
    return np.moveaxis(out, 0, axis)


def fill_empty_bins(value: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN bins with the mean of their filled neighbours, growing inwards.

    Each pass fills the empty bins that touch at least one filled bin (8
    neighbours) with the mean of those neighbours. Every filled value is then a
    weighted sum of measured bins, and its error is that sum's, with the
    measured bins independent (neighbours filled earlier share their sources).
    The error of the interpolation itself (the field's curvature across the
    hole) is not included.

    Returns
    -------
    value, error : ndarray, shape (nb, nb)
        Copies without NaN.

    Raises
    ------
    ValueError
        If every bin is empty.
    """
    value, error = value.copy(), error.copy()
    empty = ~np.isfinite(value)
    if empty.all():
        msg = "every bin is empty: no valid pixels in this frame"
        raise ValueError(msg)
    kernel = np.ones((3, 3))
    # Row k: bin k's value as weights on the measured bins (identity for those).
    combination = sparse.diags((~empty).ravel().astype(float), format="csr")
    while empty.any():
        filled = (~empty).astype(float)
        count = ndimage.convolve(filled, kernel, mode="constant")
        total = ndimage.convolve(np.where(empty, 0, value), kernel, mode="constant")
        grow = empty & (count > 0)
        value[grow] = total[grow] / count[grow]
        combination = _averaged(combination, grow, ~empty, count) + combination
        empty &= ~grow
    variance = combination.multiply(combination) @ np.nan_to_num(error.ravel() ** 2)
    error = np.where(np.isfinite(error), error, 0)  # measured bins keep theirs
    filled_bins = combination.diagonal() != 1
    error.ravel()[filled_bins] = np.sqrt(variance[filled_bins])
    return value, error


def _averaged(combination, grow: np.ndarray, filled: np.ndarray, count: np.ndarray):
    """Rows of the bins in ``grow``: the mean of their filled neighbours' rows."""
    ny, nx = grow.shape
    rows, cols = np.nonzero(grow)
    target, source = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r, c = rows + dy, cols + dx
            inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
            inside[inside] &= filled[r[inside], c[inside]]
            target.append(rows[inside] * nx + cols[inside])
            source.append(r[inside] * nx + c[inside])
    target, source = np.concatenate(target), np.concatenate(source)
    weights = 1 / count.ravel()[target]
    mean = sparse.csr_matrix((weights, (target, source)), shape=(grow.size, grow.size))
    return mean @ combination
