"""The noise share of the bin errors (issue 19): in aperture sums, where a fine-layer block
covers a bin, only the bin error's noise part is added (the layer models the structure).

Small whole-CCD cubes of 64-px bins, so that each bin is exactly one fine-layer
tile (4-px fine bins, 16 per tile side); the layer has blocks at tile (3, 4) in
planes 0 and 2 only.
"""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from cube_helpers import edited, make_cube

from lk_scatterlight import CubeFormatError, ScatterLightCube, interpolate
from lk_scatterlight.binsplit import SplitSums, fine_coverage, noise_taken
from lk_scatterlight.builder import binning
from lk_scatterlight.finelayer import FineLayer

NT, BIN, PB, TILE = 4, 64, 4, 16
SHARE = 0.25  # the noise's share of the bin variance where a block covers the bin
ROW, COL = 32.5 + BIN * 3, 76.5 + BIN * 4  # centre of bin (3, 4): 1-based CCD pixels


def cube_with(split: bool, seed: int = 0, pixel_bin: int = PB) -> ScatterLightCube:
    """``pixel_bin``: the fine bins' size [px]; the tiles stay 64 px."""
    rng = np.random.default_rng(seed)
    flux = 40 + rng.uniform(0, 2, (NT, 32, 32)).astype(np.float32)
    flux_err = rng.uniform(0.05, 0.2, (NT, 32, 32)).astype(np.float32)
    tile = BIN // pixel_bin
    data = rng.normal(0, 1, (2, tile, tile)).astype(np.float32)
    fine = FineLayer.from_blocks(
        pixel_bin, tile, np.array([3, 3]), np.array([4, 4]), np.array([0, 2]), data, [0.03, 0.02]
    )
    noise_share = np.full((32, 32), SHARE, np.float32) if split else None
    return make_cube(
        NT, 32, 32, 0.02, 1500.0, sector=1, bin=BIN, flux=flux, flux_err=flux_err, fine=fine,
        noise_share=noise_share,
    )  # fmt: skip


def variances(cube, rows, cols, mask=None):
    times = cube.btjd  # the planes themselves: no time interpolation
    if mask is None:
        return cube.evaluate(times, rows, cols).flux_err.value.astype(float) ** 2
    return cube.evaluate_sum(times, rows, cols, mask).flux_err.value ** 2


def test_aperture_takes_noise_part_of_covered_bins_only():
    """A one-pixel aperture at the centre of bin (3, 4) takes that bin alone: where the
    fine layer has a block (planes 0, 2) its variance loses the structure part, 0.75 of
    the bin's; elsewhere (planes 1, 3; pixels far from the blocks) nothing changes.
    Single pixels (`evaluate`) keep the whole bin error."""
    full, split = cube_with(False), cube_with(True)
    err2 = full.flux_err.value[:, 3, 4].astype(float) ** 2
    one = np.ones((1, 1), bool)
    drop = variances(full, [ROW], [COL], one) - variances(split, [ROW], [COL], one)
    np.testing.assert_allclose(drop, [0.75 * err2[0], 0, 0.75 * err2[2], 0], rtol=1e-4)
    far = ([ROW + 600], [COL - 100], one)
    np.testing.assert_array_equal(variances(full, *far), variances(split, *far))
    pixels = (np.arange(3) + ROW - 1, np.arange(3) + COL - 1)
    np.testing.assert_array_equal(variances(full, *pixels), variances(split, *pixels))


@pytest.mark.parametrize("compact", [False, True])
def test_pixels_of_a_two_pixel_layer_drop_the_structure_part(compact):
    """A layer of 2-px bins quotes its own error at a pixel in full: single pixels drop
    the structure part of covered bins as a one-pixel aperture does (planes 0 and 2 of
    bin (3, 4) lose 0.75 of its variance), and nothing where no block covers."""
    full, split = cube_with(False, pixel_bin=2), cube_with(True, pixel_bin=2)
    if compact:
        full, split = full.compress(), split.compress()
    one = np.ones((1, 1), bool)
    pixel = variances(split, [ROW], [COL])[:, 0, 0]
    np.testing.assert_allclose(pixel, variances(split, [ROW], [COL], one), rtol=1e-4)
    drop = variances(full, [ROW], [COL])[:, 0, 0] - pixel
    assert np.all(drop[[0, 2]] > 0.5 * variances(full, [ROW], [COL])[[0, 2], 0, 0])
    np.testing.assert_allclose(drop[[1, 3]], 0, atol=1e-9)
    far = ([ROW + 600], [COL - 100])
    np.testing.assert_array_equal(variances(full, *far), variances(split, *far))


def test_sum_drops_structure_part_through_the_summed_weights():
    """A 3 x 3 aperture next to the bin's centre: the covered bin's structure part leaves
    the sum's variance through the aperture's weights on that bin, ``0.75 A**2 err**2``."""
    full, split = cube_with(False), cube_with(True)
    rows, cols = np.arange(3) + ROW - 20.5, np.arange(3) + COL + 10.5
    mask = np.ones((3, 3), bool)
    weight = interpolate.spatial_weights(rows, full.row).T @ mask
    weight = (weight @ interpolate.spatial_weights(cols, full.column))[3, 4]
    err2 = full.flux_err.value[:, 3, 4].astype(float) ** 2
    drop = variances(full, rows, cols, mask) - variances(split, rows, cols, mask)
    expected = 0.75 * weight**2 * err2 * np.array([1, 0, 1, 0])
    np.testing.assert_allclose(drop, expected, rtol=1e-4, atol=1e-12)


def test_compact_cube_drops_the_noise_terms_not_the_truncation():
    """Compressed, the covered bin loses 0.75 of its noise variance; the truncation term
    (signal the compression dropped, not the bin's scatter) stays."""
    full, split = cube_with(False).compress(), cube_with(True).compress()
    bins = cube_with(False)
    bins.fine = None
    bins = bins.compress()
    one = np.ones((1, 1), bool)
    noise = variances(bins, [ROW], [COL], one) - full.compression.truncation_rms**2
    drop = variances(full, [ROW], [COL], one) - variances(split, [ROW], [COL], one)
    np.testing.assert_allclose(drop, 0.75 * noise * np.array([1, 0, 1, 0]), rtol=1e-3)


@pytest.mark.parametrize("compact", [False, True])
def test_file_keeps_split_and_old_files_evaluate_as_before(tmp_path, compact):
    """NOISE_SHARE round-trips; a file without it (older writers) reads with no share and
    evaluates exactly as the cube without one."""
    split = cube_with(True)
    path = split.write(tmp_path / "split.fits", compact=compact)
    back = ScatterLightCube.read(path)
    np.testing.assert_array_equal(back.noise_share, split.noise_share)
    old = ScatterLightCube.read(edited(path, tmp_path / "old.fits", lambda h: h.pop("NOISE_SHARE")))
    assert old.noise_share is None
    plain = ScatterLightCube.read(cube_with(False).write(tmp_path / "plain.fits", compact=compact))
    with fits.open(tmp_path / "plain.fits") as hdul:
        assert "NOISE_SHARE" not in hdul
    rows, cols = np.arange(3) + ROW - 1, np.arange(3) + COL - 1
    for mask in (None, np.ones((3, 3), bool)):
        np.testing.assert_array_equal(
            variances(old, rows, cols, mask), variances(plain, rows, cols, mask)
        )
    assert np.all(variances(back, rows, cols, mask)[0] < variances(old, rows, cols, mask)[0])


def test_noise_share_of_wrong_shape_or_range_is_refused():
    with pytest.raises(CubeFormatError, match="noise_share has shape"):
        make_cube(NT, 32, 32, sector=1, bin=BIN, noise_share=np.ones((31, 32)))
    with pytest.raises(CubeFormatError, match="noise_share must lie in 0..1"):
        make_cube(NT, 32, 32, sector=1, bin=BIN, noise_share=np.full((32, 32), 1.5))


def test_coverage_follows_the_blocks():
    cube = cube_with(True)
    covered = fine_coverage(cube.fine, cube.row, cube.column, slice(0, NT))
    assert covered.sum() == 2
    assert covered[0, 3, 4]
    assert covered[2, 3, 4]
    assert not fine_coverage(cube.fine, np.array([ROW]), np.array([COL]), slice(1, 2)).any()


# ---------------------------------------------------------------------- builder side
def test_pure_noise_is_not_taken_for_structure():
    """Without structure the residual variance only scatters about the noise's: no bin
    (of 256) keeps a structure part, so no fine layer would take any of its error. A
    ridge's bins do keep one."""
    n, b, sigma = 256, 16, 0.5
    rng = np.random.default_rng(5)
    image = rng.normal(0, sigma, (n, n))
    ones, uncertainty = np.ones((n, n), bool), np.full((n, n), sigma)
    fit = binning.bin_plane_fit(image, ones, b, uncertainty=uncertainty)
    assert np.mean(fit.noise < fit.error) > 0.3  # the measured noise part: often below
    assert np.mean(binning.significant_noise(fit) < fit.error) < 0.01  # not significantly
    y = np.mgrid[0:n, 0:n][0]
    ridged = image + 20 * np.exp(-0.5 * ((y % b - 7.5) / 1.5) ** 2)
    fit = binning.bin_plane_fit(ridged, ones, b, uncertainty=uncertainty)
    assert np.all(binning.significant_noise(fit) < 0.2 * fit.error)
    with pytest.raises(ValueError, match="without an uncertainty image"):
        binning.significant_noise(binning.bin_plane_fit(image, ones, b))


def test_split_sums_weigh_frames_by_variance():
    """Three frames of one bin: covered with error 2 (noise 1) and error 1 (noise part
    unknown: all noise), uncovered with error 3 (noise 0). The share is that of the
    covered frames' summed variances, (1 + 1) / (4 + 1); a bin never covered has 1."""
    sums = SplitSums((1, 2))
    error = np.array([[2.0, 2.0], [1.0, 1.0], [3.0, 3.0]]).reshape(3, 1, 2)
    noise = np.array([[1.0, 1.0], [np.nan, np.nan], [0.0, 0.0]]).reshape(3, 1, 2)
    covered = np.array([[True, False], [True, False], [False, False]]).reshape(3, 1, 2)
    sums.add(error, noise, covered)
    np.testing.assert_allclose(sums.share(), [[0.4, 1.0]])


def factored_cube(pixel_bin: int = 2) -> ScatterLightCube:
    """`cube_with` (noise share 0.25) whose layer is one tile factored over planes 0, 1
    and 2 (one basis image, three coefficients) at bin (3, 4)."""
    cube = cube_with(True, pixel_bin=pixel_bin)
    tile = BIN // pixel_bin
    basis = np.random.default_rng(4).normal(0, 1, (1, tile, tile)).astype(np.float32)
    cube.fine = FineLayer(
        pixel_bin=pixel_bin, tile=tile, tile_row=np.array([3, 3, 3]),
        tile_col=np.array([4, 4, 4]), plane=np.array([0, 1, 2]),
        error=np.array([0.03, 0.02, 0.02], np.float32), basis=basis,
        basis_start=np.zeros(3, int), rank=np.ones(3, int),
        coef=np.array([1.0, 0.5, -0.3], np.float32), coef_start=np.arange(3),
    )  # fmt: skip
    return cube


def test_blocks_take_over_the_bins_noise_they_hold():
    """With 2-px fine bins a block also takes over the noise part of the bins it covers,
    as much as it holds (`noise_taken`): a block stored as it is all of it, so a
    one-pixel aperture at bin (3, 4) loses the bin's whole variance in planes 0 and 2;
    a tile factored to one image over 3 planes ``1/3 + 1/8 - 1/24`` of it
    (`NOISE_PATTERNS` = 8 patterns per tile), so it loses ``0.75 + 0.25 * 0.417``.
    With 4-px bins (not measured) only the structure part, 0.75, as before."""
    one = np.ones((1, 1), bool)
    full = cube_with(False, pixel_bin=2)
    err2 = full.flux_err.value[:, 3, 4].astype(float) ** 2
    total = variances(full, [ROW], [COL], one)
    raw = cube_with(True, pixel_bin=2)
    drop = total - variances(raw, [ROW], [COL], one)
    np.testing.assert_allclose(drop, err2 * [1, 0, 1, 0], rtol=1e-4)
    factored = factored_cube()
    np.testing.assert_allclose(noise_taken(factored.fine), 1 / 3 + 1 / 8 - 1 / 24)
    whole = factored_cube()
    whole.noise_share = None  # adds every bin error whole
    drop = variances(whole, [ROW], [COL], one) - variances(factored, [ROW], [COL], one)
    expected = (0.75 + 0.25 * (1 / 3 + 1 / 8 - 1 / 24)) * err2 * [1, 1, 1, 0]
    np.testing.assert_allclose(drop, expected, rtol=1e-4)
    assert np.all(noise_taken(factored_cube(pixel_bin=4).fine) == 0)


def test_noise_taken_is_computed_once_per_layer():
    """`noise_taken` depends on the blocks only: kept on the layer after the first call
    (read-only, so no caller can change it for the next), and a layer made from it with
    other blocks gets its own."""
    fine = factored_cube(pixel_bin=2).fine
    first = noise_taken(fine)
    assert noise_taken(fine) is first
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 0.5
    one_each = dataclasses.replace(fine, basis_start=np.zeros(3, int), rank=np.full(3, 1))
    assert noise_taken(one_each) is not first
    split = dataclasses.replace(fine, basis=np.concatenate([fine.basis] * 3), basis_start=[0, 1, 2])
    np.testing.assert_allclose(noise_taken(split), 1.0)  # each block its own image: all of it
    np.testing.assert_allclose(noise_taken(fine), 1 / 3 + 1 / 8 - 1 / 24)


def test_compact_cube_with_a_two_pixel_layer_drops_its_truncation_under_blocks():
    """The layer carries what the compression loses in its tiles
    (`carry_compression`): with 2-px bins a covered bin drops the truncation term too,
    so a one-pixel aperture at bin (3, 4) quotes the same as with no truncation term."""
    compact = cube_with(True, pixel_bin=2).compress()
    lr = compact._lowrank
    lr.var_comp[-1] = 0.01  # a truncation term of 0.1 e-/s at every bin
    one = np.ones((1, 1), bool)
    with_term = variances(compact, [ROW], [COL], one)
    lr.var_comp[-1] = 0.0
    without = variances(compact, [ROW], [COL], one)
    np.testing.assert_allclose(with_term[[0, 2]], without[[0, 2]], rtol=1e-5)
    assert np.all(with_term[[1, 3]] > without[[1, 3]] + 0.005)
