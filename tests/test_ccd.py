"""Detector facts, validation and regions of the CCD; regional cubes in memory and on disk."""

import numpy as np
import pytest
from astropy.io import fits

from lk_scatterlight import ScatterLightCube
from lk_scatterlight.ccd import (
    LATEST_SECTOR,
    SCIENCE_SLICE,
    Region,
    check_camera_ccd,
    check_pixels,
    check_sector,
    ffi_cadence_seconds,
    to_btjd,
)
from lk_scatterlight.exceptions import CubeFormatError, OutsideCubeError


def test_science_slice_and_cadences():
    ffi = np.zeros((2078, 2136))
    assert ffi[SCIENCE_SLICE].shape == (2048, 2048)
    assert [ffi_cadence_seconds(s) for s in (1, 26, 27, 55, 56, 100)] == [
        1800,
        1800,
        600,
        600,
        200,
        200,
    ]


@pytest.mark.parametrize("bad", [0, -3, LATEST_SECTOR + 1, 2.5, "two", None])
def test_check_sector_rejects(bad):
    with pytest.raises(ValueError, match="sector must be"):
        check_sector(bad)


def test_check_sector_and_ccd_accept():
    assert check_sector("12") == 12
    assert check_camera_ccd(4.0, 1) == (4, 1)
    with pytest.raises(ValueError, match="camera and ccd must each be 1-4"):
        check_camera_ccd(5, 1)


def test_to_btjd():
    from astropy.time import Time

    assert to_btjd(Time(2458325.5, format="jd", scale="tdb")) == pytest.approx(1325.5)
    np.testing.assert_array_equal(to_btjd([1.0, 2.0]), [1.0, 2.0])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 45, 10, 10), "leaves the science area"),
        ((2040, 45, 10, 10), "leaves the science area"),
        ((1, 44, 10, 10), "leaves the science area"),
        ((1, 2090, 1, 5), "leaves the science area"),
        ((1, 45, 0, 5), "at least one pixel"),
    ],
)
def test_region_outside_the_ccd(args, match):
    with pytest.raises(ValueError, match=match):
        Region(*args)


def test_region_geometry():
    region = Region(129, 173, 128, 128)
    assert (region.row_stop, region.column_stop) == (256, 300)
    assert region.science_slice == (slice(128, 256), slice(128, 256))
    assert region.ffi_slice == (slice(128, 256), slice(172, 300))
    assert region.contains([129, 256], [173, 300])
    assert not region.contains([128], [200])
    assert region.covers(Region(130, 180, 5, 5))
    assert not region.covers(Region(120, 180, 20, 5))
    assert Region.full().is_full
    assert not region.is_full
    assert Region.from_header(fits.Header()) is None
    header = fits.Header()
    for key, card in region.to_header().items():
        header[key] = card
    assert Region.from_header(header) == region
    del header["REGCOL2"]
    with pytest.raises(ValueError, match="partial region"):
        Region.from_header(header)


@pytest.mark.parametrize(
    ("tpf", "expected"),
    [
        # open sky: +-32 px and the 64-px grid give 128 x 128
        (Region(700, 1000, 15, 15), Region(641, 941, 128, 128)),
        # straddling a grid line in columns: 192 wide, made square
        (Region(700, 900, 15, 15), Region(641, 813, 192, 192)),
        # corner: clipped, no margin needed at the CCD's edges
        (Region(1, 45, 15, 15), Region(1, 45, 64, 64)),
        (Region(2034, 2078, 15, 15), Region(1985, 2029, 64, 64)),
    ],
)
def test_region_around(tpf, expected):
    grown = tpf.around(32, 64, square=True)
    assert grown == expected
    assert grown.covers(tpf)
    assert (grown.row - 1) % 64 == 0
    assert (grown.column - 45) % 64 == 0


def test_region_shrunk_keeps_ccd_edges():
    assert Region(1, 45, 64, 64).shrunk(24) == Region(1, 45, 40, 40)
    assert Region(641, 813, 192, 192).shrunk(24) == Region(665, 837, 144, 144)
    with pytest.raises(ValueError, match="too small"):
        Region(641, 813, 32, 32).shrunk(24)


EVALUABLE = Region(665, 837, 144, 144)


def regional_cube(region=EVALUABLE):
    centres_r = 641 + 16 * np.arange(12) + 7.5
    centres_c = 813 + 16 * np.arange(12) + 7.5
    flux = np.ones((3, 12, 12))
    return ScatterLightCube.from_arrays(
        1, 1, 1, [1326.0, 1326.1, 1326.2], centres_r, centres_c, flux, 0.1 * flux, region=region
    )


def test_regional_cube_round_trip_and_bounds(tmp_path):
    cube = regional_cube()
    path = cube.write(tmp_path / "regional.fits")
    assert fits.getheader(path)["REGROW1"] == 665
    again = ScatterLightCube.read(path)
    assert again.region == cube.region
    inside = again.evaluate(again.btjd, [700, 701], [900, 901])
    np.testing.assert_allclose(inside.flux.value, 1, rtol=1e-6)
    with pytest.raises(OutsideCubeError, match="outside this regional cube"):
        again.evaluate(again.btjd, [650], [900])
    with pytest.raises(OutsideCubeError, match="outside this regional cube"):
        again.evaluate_sum(again.btjd, [700], [1000])
    compact = cube.compress()
    assert compact.region == cube.region


def test_regional_cube_region_beyond_its_bins():
    with pytest.raises(CubeFormatError, match="reaches beyond the pixels of the bins"):
        regional_cube(Region(600, 837, 100, 100))


def test_check_pixels():
    """Science pixels (half a pixel of slack) pass as float arrays; collateral columns and
    pixels outside a regional cube's region are refused, naming the problem."""
    row, column = check_pixels(5, [44.5, 2092.5])
    assert row.dtype == column.dtype == float
    assert row.shape == (1,)
    with pytest.raises(OutsideCubeError, match="columns 44..44 are outside the science area"):
        check_pixels([5], [44])
    with pytest.raises(OutsideCubeError, match="rows 0..0"):
        check_pixels([0], [100])
    region = Region(row=129, column=173, nrows=128, ncols=128)
    check_pixels([129, 256], [173, 300], region)
    with pytest.raises(OutsideCubeError, match="outside this regional cube"):
        check_pixels([128], [173], region)
