"""Which frames and pixels may measure the scattered light.

Frames
    `good_frames` drops frames that lightkurve's
    ``TessQualityFlags.DEFAULT_BITMASK`` marks (attitude tweaks, safe mode,
    coarse point, Earth point, Argabrightening, desaturation, manual exclude,
    impulsive outliers, bad calibration): their images are genuinely wrong.
    Frames flagged only as stray light (2048, 4096) are kept: they carry the
    signal being modelled.

Pixels
    `static_source_mask` masks stars and saturation bleed columns found in the
    static scene; `drop_extended` unmasks what is too large to be a star (a
    ridge left in the static scene), keeping saturated stars' halos and bleed
    trails; `column_mask` masks whole columns (straps, bad columns).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..ccd import SCIENCE_COLUMNS

__all__ = [
    "DEFAULT_BITMASK",
    "good_frames",
    "static_source_mask",
    "drop_extended",
    "column_mask",
]

#: lightkurve's TessQualityFlags.DEFAULT_BITMASK (1|2|4|8|16|32|128|512|16384),
#: spelled out so the builder does not depend on lightkurve's internals.
DEFAULT_BITMASK = 1 | 2 | 4 | 8 | 16 | 32 | 128 | 512 | 16384


def good_frames(quality: np.ndarray, bitmask: int = DEFAULT_BITMASK) -> np.ndarray:
    """Frames fit for the build: no bit of ``bitmask`` set.

    Parameters
    ----------
    quality : array of int, shape (nframes,)
        SPOC DQUALITY flags.
    bitmask : int

    Returns
    -------
    keep : ndarray of bool, shape (nframes,)
    """
    return (np.asarray(quality, dtype=np.int64) & bitmask) == 0


def static_source_mask(
    static: np.ndarray,
    nsigma: float = 3.0,
    grow: int = 2,
    saturation: float = 1.0e5,
    bleed_grow: int = 3,
    smooth_scale: int = 32,
) -> np.ndarray:
    """Pixels of stars and saturation bleeds in the static scene.

    A pixel is a source if it exceeds the local sky (a median over
    ``smooth_scale``-pixel blocks, interpolated back) by ``nsigma`` robust
    standard deviations of the sky-subtracted scene; the mask then grows by
    ``grow`` pixels. Pixels above ``saturation`` e-/s and the rest of their
    bleed trail are grown by ``bleed_grow`` pixels sideways and along the
    column, so the halo of saturated stars is masked too.

    Parameters
    ----------
    static : ndarray, shape (n, n)
        Static scene [e-/s]; ``n`` divisible by ``smooth_scale``.
    nsigma, grow, saturation, bleed_grow, smooth_scale
        See above.

    Returns
    -------
    mask : ndarray of bool, shape (n, n)
        True for pixels to exclude.
    """
    n = static.shape[0]
    finite = np.isfinite(static)
    blocks = np.where(finite, static, np.nan).reshape(
        n // smooth_scale, smooth_scale, n // smooth_scale, smooth_scale
    )
    sky = np.nanmedian(blocks, axis=(1, 3))
    sky = np.where(np.isfinite(sky), sky, np.nanmedian(sky))
    zoom = ndimage.zoom(sky, smooth_scale, order=1, mode="nearest", grid_mode=True)
    excess = np.where(finite, static - zoom, 0)
    sample = excess[::4, ::4][finite[::4, ::4]]  # unread rows of a sparse read are not sky
    if sample.size < 100:
        sample = excess[finite]
    mad = np.median(np.abs(sample - np.median(sample)))
    sigma = 1.4826 * mad if mad > 0 else np.std(sample)
    mask = excess > nsigma * sigma
    mask = ndimage.binary_dilation(mask, iterations=grow) if grow else mask
    saturated = np.where(finite, static, 0) > saturation
    if saturated.any():
        structure = np.ones((2 * bleed_grow + 1, 2 * bleed_grow + 1), dtype=bool)
        mask |= ndimage.binary_dilation(saturated, structure=structure)
    return mask | ~finite


def drop_extended(
    mask: np.ndarray,
    static: np.ndarray,
    max_pixels: int = 1500,
    saturation: float = 1.0e5,
    max_extent: int = 48,
    band_width: int = 20,
) -> np.ndarray:
    """Unmask connected regions too large to be an unsaturated star.

    A static scene made from frames that still hold scattered light carries its
    persistent structure (a glint ridge, a shadow edge) above the local sky, and
    a threshold marks it like a star. Stars that cover many pixels are saturated
    (TESS saturates near Tmag 6.8), so a region of ``mask`` larger than
    ``max_pixels``, or longer than ``max_extent`` along rows or columns, without
    a pixel above ``saturation`` is structure, not a source, and is dropped from
    the mask. The extent matters where only part of a structure is seen (a
    regional build): a ridge cut by the region's edges has few pixels but
    still crosses the whole region.

    A ridge that touches a saturated star's mask joins its region. Such a region
    is split into the star's own mask and the rest. The star's own mask is
    every part of the region at least ``band_width + 1`` pixels wide that is
    connected to its saturated pixels (its halo, however large), plus
    everything within ``band_width / 2`` pixels of them (the bleed trail and a
    small halo); it stays masked. A band up to ``band_width`` pixels wide
    running out of the halo is not part of it, and the pieces of the rest that
    are too large for a star are dropped as above. A band wider than
    ``band_width`` cannot be told from a halo and stays masked.

    Parameters
    ----------
    mask : ndarray of bool, shape (n, n)
        Source mask (`static_source_mask`).
    static : ndarray, shape (n, n)
        The static scene it was made from [e-/s].
    max_pixels : int
        Largest unsaturated source [pixels].
    saturation : float
        Saturation level [e-/s].
    max_extent : int
        Longest unsaturated source along rows or columns [pixels].
    band_width : int
        Widest band split off a saturated star's mask [pixels].

    Returns
    -------
    mask : ndarray of bool
        ``mask`` without those regions.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    saturated = np.nan_to_num(static) > saturation
    holds_star = np.bincount(labels[saturated], minlength=n + 1) > 0
    extended = _extended(labels, n, max_pixels, max_extent)
    mask = mask & ~(extended & ~holds_star)[labels]
    for region in np.flatnonzero(extended & holds_star):
        box = _box(labels == region, band_width // 2 + 1)
        inside = labels[box] == region
        rest, m = ndimage.label(inside & ~_star_own(inside, saturated[box] & inside, band_width))
        mask[box] &= ~_extended(rest, m, max_pixels, max_extent)[rest]
    return mask


def _extended(labels: np.ndarray, n: int, max_pixels: int, max_extent: int) -> np.ndarray:
    """Which of the ``n`` labelled regions exceed ``max_pixels`` or ``max_extent``
    (index 0, the background, never does)."""
    size = np.bincount(labels.ravel(), minlength=n + 1)
    extent = np.zeros(n + 1)
    extent[1:] = [max(r.stop - r.start, c.stop - c.start) for r, c in ndimage.find_objects(labels)]
    extended = (size > max_pixels) | (extent > max_extent)
    extended[0] = False
    return extended


def _box(where: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The bounding box of ``where``, ``pad`` pixels wider on each side (within the array)."""
    rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
    return (
        slice(max(rows[0] - pad, 0), rows[-1] + pad + 1),
        slice(max(cols[0] - pad, 0), cols[-1] + pad + 1),
    )


def _star_own(region: np.ndarray, saturated: np.ndarray, band_width: int) -> np.ndarray:
    """The part of a masked ``region`` that belongs to its saturated stars.

    A morphological opening of ``region`` by a disc ``band_width + 1`` pixels
    across keeps its parts wider than ``band_width`` (a star's halo, whatever its
    size) and removes bands narrower than that (a ridge, a bleed trail). The
    opened parts connected to a saturated pixel, joined with the region's pixels
    within ``band_width / 2`` of one, are the stars' own; pixels outside the
    array count as masked, so a halo cut by the array's edge keeps its width.
    (The masked fraction of rings at each distance from the saturated pixels
    cannot tell a halo from a band where a long bleed trail stretches the rings:
    around a 400-px trail a 40-px halo fills only a small part of each.)

    Parameters
    ----------
    region : ndarray of bool, shape (ny, nx)
        One connected masked region, with at least ``band_width / 2 + 1`` unmasked
        pixels around it where it does not touch the array's edge.
    saturated : ndarray of bool, shape (ny, nx)
        Saturated pixels.
    band_width : int
        See `drop_extended` [pixels].

    Returns
    -------
    own : ndarray of bool, shape (ny, nx)
    """
    radius = band_width / 2
    own = np.zeros_like(region)
    near = _box(saturated, band_width // 2 + 1)  # distances are needed only near them
    own[near] = ndimage.distance_transform_edt(~saturated[near]) <= radius
    core = ndimage.distance_transform_edt(region) > radius  # centres of discs that fit
    if core.any():
        near = _box(core, band_width // 2 + 1)
        own[near] |= ndimage.distance_transform_edt(~core[near]) <= radius
    parts, _ = ndimage.label(region & own)
    star = np.zeros(parts.max() + 1, dtype=bool)
    star[parts[saturated & region]] = True
    star[0] = False
    return star[parts]


def column_mask(
    shape: tuple[int, int], columns, first_column: int = SCIENCE_COLUMNS[0]
) -> np.ndarray:
    """Mask of whole columns.

    Parameters
    ----------
    shape : (int, int)
        Shape of the science-region array.
    columns : iterable of int
        1-based CCD columns (counting the collateral columns) to mask.
    first_column : int
        CCD column of array column 0 (45 for the science region).

    Returns
    -------
    mask : ndarray of bool
    """
    mask = np.zeros(shape, dtype=bool)
    index = np.asarray(list(columns), dtype=int) - first_column
    index = index[(index >= 0) & (index < shape[1])]
    mask[:, index] = True
    return mask
