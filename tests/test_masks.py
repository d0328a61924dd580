"""`drop_extended` around saturated stars: a ridge band that touches a star's mask is
unmasked, the star's own halo and bleed trail are not, however large they are."""

import numpy as np
import pytest
from scipy import ndimage

from lk_scatterlight.builder.masks import drop_extended, static_source_mask
from lk_scatterlight.simulate import SATURATION
from lk_scatterlight.simulate.render import _bleed, _render_stars

N = 512
Y, X = np.mgrid[:N, :N]


def disc(row, column, radius):
    return (Y - row) ** 2 + (X - column) ** 2 <= radius**2


def band(row, column, offset=0.0, half_width=7):
    """A straight band ``2 * half_width`` px wide, ``offset`` px from (row, column)."""
    return np.abs(0.6 * (Y - row) + 0.8 * (X - column) - offset) < half_width


def star_scene(row, column, core, halo, bleed=0):
    """Static scene and mask of a saturated star: a saturated core of radius ``core``
    with a bleed trail ``bleed`` px up and down its column, the mask's halo a disc of
    radius ``halo`` and the trail grown by 3 px as `static_source_mask` grows it."""
    static = np.full((N, N), 50.0)
    saturated = disc(row, column, core)
    saturated[max(row - bleed, 0) : row + bleed + 1, column] = True
    static[saturated] = 2e5
    trail = ndimage.binary_dilation(saturated, structure=np.ones((7, 7), bool))
    return static, saturated, trail | disc(row, column, halo)


def far_from(saturated, distance):
    return ndimage.distance_transform_edt(~saturated) > distance


def test_band_touching_a_saturated_star_is_unmasked_beyond_its_halo():
    static, saturated, star = star_scene(256, 256, core=3, halo=12)
    ridge = band(256, 256, offset=16)  # its edge overlaps the halo
    kept = drop_extended(star | ridge, static)
    assert kept[star].all()
    assert not kept[ridge & far_from(saturated, 20)].any()
    assert kept.sum() < star.sum() + 400  # the band kept only near the star


@pytest.mark.parametrize("offset", [None, 0.0, 30.0])
def test_large_halo_stays_masked_with_or_without_a_band(offset):
    """A halo of radius 50 px (well past a fixed reach of 15 px), alone, with a band
    through its centre and with one crossing it off centre."""
    static, saturated, star = star_scene(256, 256, core=4, halo=50)
    ridge = np.zeros_like(star) if offset is None else band(256, 256, offset)
    kept = drop_extended(star | ridge, static)
    assert kept[star].all()
    assert not kept[ridge & ~star & far_from(saturated, 60)].any()


def test_long_bleed_trail_and_its_halo_stay_masked():
    """A 400-px bleed trail: a ring at a fixed distance from the saturated pixels is
    mostly trail, yet the halo around the core stays masked; a band crossing the
    trail far from the core is unmasked beside it."""
    static, saturated, star = star_scene(256, 256, core=3, halo=40, bleed=200)
    ridge = np.abs(Y - 420) < 7
    kept = drop_extended(star | ridge, static)
    assert kept[star].all()
    assert not kept[ridge & far_from(saturated, 10)].any()


def test_halo_cut_by_the_array_edge_stays_masked():
    static, saturated, star = star_scene(3, 256, core=3, halo=45)
    ridge = band(3, 256, offset=10)
    kept = drop_extended(star | ridge, static)
    assert kept[star].all()
    assert not kept[ridge & far_from(saturated, 60)].any()


def test_band_wider_than_band_width_stays_with_the_star():
    """Wider than ``band_width`` a band cannot be told from a halo: it stays masked."""
    static, saturated, star = star_scene(256, 256, core=3, halo=12)
    ridge = band(256, 256, offset=10, half_width=12)
    assert drop_extended(star | ridge, static)[ridge].all()
    assert not drop_extended(star | ridge, static, band_width=30)[ridge & ~star].all()


@pytest.mark.parametrize("tmag", [1.0, 2.0, 3.0])
def test_simulated_bright_star_keeps_its_mask_next_to_a_ridge(tmag):
    """The simulator's PSF and bleed, and a ridge in the static scene (~13 px wide at
    30 sigma) across the star's halo and bleed trail: what the fine layer's mask
    (30 sigma) holds of the star alone is kept, the ridge is unmasked away from it."""
    flux = 15000 * 10 ** (-0.4 * (tmag - 10))
    stars = _render_stars(np.array([200.3]), np.array([300.6]), np.array([flux]), (N, N))
    _bleed(stars, SATURATION)
    noise = np.random.default_rng(3).normal(0, 1.0, (N, N))
    across = 0.6 * (Y - 200) + 0.8 * (X - 300) - 12
    static = 50 + stars + noise + 300 * np.exp(-0.5 * (across / 3.0) ** 2)
    mask = static_source_mask(static, nsigma=30, grow=0)
    star = mask & static_source_mask(50 + stars + noise, nsigma=30, grow=0)
    kept = drop_extended(mask, static)
    assert star.sum() > 300  # core, halo and bleed trail
    assert kept[star].all()
    ridge = mask & (np.abs(across) < 5)
    assert ridge.sum() > 3000
    assert not kept[ridge & far_from(static > SATURATION / 2, 12)].any()
