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
view of the image, so a 2048 x 2048 frame takes a few BLAS passes.

The uncertainty of ``a`` is the standard error of the fitted intercept,
``sigma_res * sqrt((X^T X)^-1_00)``, with ``sigma_res`` the residual scatter
of the bin's valid pixels in that frame: an empirical estimate that includes
photon noise, read noise and unmodelled structure inside the bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["BinnedFrame", "bin_plane_fit", "curvature_correction", "fill_empty_bins"]


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
    """

    value: np.ndarray
    error: np.ndarray
    npix: np.ndarray
    moments: np.ndarray


def _offsets(pixel_bin: int) -> np.ndarray:
    return np.arange(pixel_bin, dtype=np.float64) - (pixel_bin - 1) / 2


def _bin_sums(values4: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``s[i, j, k, l] = sum over bin (i, j) of values * dy**k * dx**l``.

    ``values4`` is a (nb, b, nb, b) view and ``basis`` (b, m) holds the powers
    of the offsets; both reductions are matrix products.
    """
    partial = values4 @ basis  # over dx: (nb, b, nb, m), float32 BLAS
    partial = np.ascontiguousarray(partial.transpose(0, 2, 3, 1), dtype=np.float64)
    return partial @ basis.astype(np.float64)  # over dy: (nb, nb, m(l), m(k))


def _fit(image4: np.ndarray, weight4: np.ndarray, d: np.ndarray):
    """Weighted least-squares plane per bin of a (nb, b, nb, b) view.

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
    sum_wv2 : ndarray, shape (nb, nb)
        Weighted sum of squared values, for the residual sum of squares.
    """
    basis = np.stack([np.ones_like(d), d, d * d], axis=1).astype(np.float32)  # (b, 3)
    weighted = image4 * weight4
    sw = _bin_sums(weight4, basis)  # [l, k] = sum w dx^l dy^k
    sv = _bin_sums(weighted, basis[:, :2])
    sum_wv2 = _bin_sums(weighted * image4, basis[:, :1])[..., 0, 0]
    n, sx, sy = sw[..., 0, 0], sw[..., 1, 0], sw[..., 0, 1]
    sxx, syy, sxy = sw[..., 2, 0], sw[..., 0, 2], sw[..., 1, 1]
    rhs = np.stack([sv[..., 0, 0], sv[..., 1, 0], sv[..., 0, 1]], -1)  # sum v, v dx, v dy

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
    # Residual sum of squares of the fit: sum w v^2 - coef . rhs.
    return coef, inverse00, n, moments, np.maximum(sum_wv2 - (coef * rhs).sum(-1), 0), plane


def _residual(image4, coef, d):
    a, gx, gy = (coef[..., k].astype(np.float32) for k in range(3))
    d = d.astype(np.float32)
    along_x = a[:, None, :, None] + gx[:, None, :, None] * d[None, None, None, :]
    plane = along_x + gy[:, None, :, None] * d[None, :, None, None]  # full (nb, b, nb, b)
    np.subtract(image4, plane, out=plane)
    return plane


def bin_plane_fit(
    image: np.ndarray,
    valid: np.ndarray,
    pixel_bin: int,
    clip: float = 4.0,
    min_fraction: float = 0.2,
    uncertainty: np.ndarray | None = None,
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
    nb, b = n // pixel_bin, pixel_bin
    d = _offsets(b)
    weight = valid if valid.dtype == np.float32 else valid.astype(np.float32)
    image = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.all():
        weight = weight * finite
        image = np.where(finite, image, 0)
    image4 = image.reshape(nb, b, nb, b)
    weight4 = weight.reshape(nb, b, nb, b)

    first, _, count, _, _, _ = _fit(image4, weight4, d)
    # Clip outliers (cosmic rays, residual star wings), then refit the residuals of
    # the first fit: small numbers, so the sums keep their precision in float32.
    residual = _residual(image4, first, d)
    ones = np.ones((b, 1), dtype=np.float32)
    rss = _bin_sums(residual * residual * weight4, ones)[..., 0, 0]
    sigma = np.sqrt(rss / np.maximum(count - 3, 1))
    threshold = (clip * sigma + 1e-5 * (np.abs(first[..., 0]) + 1)).astype(np.float32)
    weight4 = weight4 * (np.abs(residual) <= threshold[:, None, :, None])
    correction, inverse00, count, moments, rss, _ = _fit(residual, weight4, d)
    coef = first + correction
    sigma2 = rss / np.maximum(count - 3, 1)
    if uncertainty is not None:
        step = 4 if b % 4 == 0 else 1
        sigma4 = np.asarray(uncertainty, dtype=np.float32).reshape(nb, b, nb, b)[:, ::step]
        w4 = weight4[:, ::step]
        var = np.nan_to_num(sigma4 * sigma4) * w4
        mean_var = var.sum(axis=(1, 3), dtype=np.float64) / np.maximum(w4.sum(axis=(1, 3)), 1)
        sigma2 = np.maximum(sigma2, mean_var)

    enough = count >= max(10, min_fraction * b * b)
    value = np.where(enough, coef[..., 0], np.nan)
    error = np.where(enough, np.sqrt(sigma2 * inverse00), np.nan)
    return BinnedFrame(value, error, count.astype(np.int32), moments)


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


def _second_difference(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(a, axis, 0)
    out = np.empty_like(a)
    out[1:-1] = a[2:] - 2 * a[1:-1] + a[:-2]
    out[0], out[-1] = out[1], out[-2]
    return np.moveaxis(out, 0, axis)


def fill_empty_bins(value: np.ndarray, error: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN bins with the mean of their filled neighbours, growing inwards.

    Each pass fills the empty bins that touch at least one filled bin (8
    neighbours) with the mean of those neighbours; their error is the
    neighbours' mean error times two, an honest inflation for a value that was
    not measured.

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
    while empty.any():
        filled = (~empty).astype(float)
        count = ndimage.convolve(filled, kernel, mode="constant")
        total = ndimage.convolve(np.where(empty, 0, value), kernel, mode="constant")
        total_err = ndimage.convolve(np.where(empty, 0, error), kernel, mode="constant")
        grow = empty & (count > 0)
        value[grow] = total[grow] / count[grow]
        error[grow] = 2 * total_err[grow] / count[grow]
        empty &= ~grow
    return value, error
