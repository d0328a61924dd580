"""The direct readers of fastfits: same arrays as astropy, clear errors on damaged data."""

import numpy as np
import pytest
from astropy.io import fits
from cube_helpers import make_cube

from lk_scatterlight import ScatterLightCube, fastfits
from lk_scatterlight.exceptions import CubeFormatError


def _write(tmp_path, *hdus, name="test.fits"):
    path = tmp_path / name
    fits.HDUList([fits.PrimaryHDU(), *hdus]).writeto(path)
    return path


def _both(path, name, read):
    """``read(hdul, name)`` on the file opened as the cube reader does, and astropy's data."""
    with fits.open(path) as hdul:
        expected = hdul[name].data
        expected = None if expected is None else np.array(expected)
    with fits.open(path, disable_image_compression=True) as hdul:
        return read(hdul, name), expected


@pytest.mark.parametrize(
    ("dtype", "shape", "tile"),
    [
        (np.int16, (37, 5, 6), (16, 5, 6)),  # partial last tile along the slow axis
        (np.int32, (7, 9), (7, 1)),  # one tile per column
        (np.int32, (7, 9), (1, 4)),  # partial tiles along both axes
        (np.int32, (300,), (128,)),
    ],
)
def test_tiled_image_equals_astropy(tmp_path, dtype, shape, tile):
    rng = np.random.default_rng(1)
    data = np.cumsum(rng.integers(-300, 300, shape), axis=-1).astype(dtype)
    hdu = fits.CompImageHDU(data, name="IMG", compression_type="RICE_1", tile_shape=tile)
    image, expected = _both(_write(tmp_path, hdu), "IMG", fastfits.image)
    assert isinstance(image, fastfits.TiledImage)
    assert image.simple
    assert image.shape == shape
    np.testing.assert_array_equal(image.data, expected)
    assert image.data.dtype == dtype


def test_other_compression_goes_through_astropy(tmp_path):
    data = np.arange(60, dtype=np.int32).reshape(6, 10)
    hdu = fits.CompImageHDU(data, name="IMG", compression_type="GZIP_1")
    image, expected = _both(_write(tmp_path, hdu), "IMG", fastfits.image)
    assert not image.simple
    np.testing.assert_array_equal(image.data, expected)


def test_plain_image_is_returned_as_it_is(tmp_path):
    path = _write(tmp_path, fits.ImageHDU(np.ones((2, 3)), name="IMG"))
    with fits.open(path, disable_image_compression=True) as hdul:
        assert fastfits.image(hdul, "IMG") is hdul["IMG"]


def test_table_equals_astropy(tmp_path):
    columns = [
        fits.Column("B", "B", array=np.array([1, 255, 7], np.uint8)),
        fits.Column("I", "I", array=np.array([-3, 4, 5], np.int16)),
        fits.Column("J", "J", unit="d", array=np.array([1, -2, 2**30], np.int32)),
        fits.Column("K", "K", array=np.array([2**40, 0, -1], np.int64)),
        fits.Column("E", "E", array=np.array([0.5, 1e-3, -2], np.float32)),
        fits.Column("D", "D", unit="electron/s", array=np.array([1 / 3, 2.0, np.pi])),
        fits.Column("A", "A12", array=np.array(["key", "a longer one", ""])),
        fits.Column("V", "3E", array=np.arange(9, dtype=np.float32).reshape(3, 3)),
    ]
    path = _write(tmp_path, fits.BinTableHDU.from_columns(columns, name="TAB"))
    with fits.open(path) as hdul:
        expected = hdul["TAB"].data
        with fits.open(path, disable_image_compression=True) as fast:
            table = fastfits.table(fast, "TAB")
        assert table.names == expected.columns.names
        assert len(table) == 3
        for name in table.names:
            np.testing.assert_array_equal(table[name], expected[name])
            assert table[name].dtype.isnative
    assert table.units["J"] == "d"
    assert table.units["D"] == "electron/s"
    assert list(table["A"]) == ["key", "a longer one", ""]


def test_scaled_table_goes_through_astropy(tmp_path):
    """Unsigned 16-bit columns are stored with TZERO: astropy reads those."""
    column = fits.Column("U", "I", bzero=32768, array=np.array([0, 40000, 65535], np.uint16))
    path = _write(tmp_path, fits.BinTableHDU.from_columns([column], name="TAB"))
    with fits.open(path, disable_image_compression=True) as hdul:
        table = fastfits.table(hdul, "TAB")
    np.testing.assert_array_equal(table["U"], [0, 40000, 65535])


def test_image_is_not_a_table(tmp_path):
    path = _write(tmp_path, fits.ImageHDU(np.ones(3), name="IMG"))
    with (
        fits.open(path, disable_image_compression=True) as hdul,
        pytest.raises(CubeFormatError, match="Extension IMG is not a table"),
    ):
        fastfits.table(hdul, "IMG")


@pytest.fixture
def compact_file(tmp_path):
    rng = np.random.default_rng(2)
    series, images = rng.normal(size=(40, 3)), rng.normal(size=(3, 8, 9))
    flux = 50 + np.einsum("ti,irc->trc", series, images) + rng.normal(0, 0.01, (40, 8, 9))
    cube = make_cube(40, 8, 9, flux=flux.astype(np.float32), flux_err=np.full(flux.shape, 0.01))
    return cube.compress().write(tmp_path / "compact.fits")


def _pointers(path, name):
    """Offset in the file of the tile pointers (nbytes, offset) of compressed ``name``."""
    with fits.open(path, disable_image_compression=True) as hdul:
        return hdul[name].fileinfo()["datLoc"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: (p[0] + 10**6, p[1]), "a tile lies outside its data"),
        (lambda p: (4, p[1]), "tile 1: decompression error"),
    ],
)
def test_damaged_compressed_extension(compact_file, tmp_path, change, message):
    """A compressed image whose tile pointer or bytes are wrong: an error naming it."""
    raw = bytearray(compact_file.read_bytes())
    at = _pointers(compact_file, "FLUX_COMP")
    pointer = np.frombuffer(bytes(raw[at : at + 8]), ">i4")
    raw[at : at + 8] = np.array(change(pointer), ">i4").tobytes()
    bad = tmp_path / "bad.fits"
    bad.write_bytes(bytes(raw))
    with pytest.raises(
        CubeFormatError, match=f"compressed extension FLUX_COMP is damaged.*{message}"
    ):
        ScatterLightCube.read(bad)


def test_compact_file_reads_as_through_astropy(compact_file, monkeypatch):
    """The direct decoder and astropy's give the same cube."""
    fast = ScatterLightCube.read(compact_file)
    monkeypatch.setattr(fastfits, "decompress_rice_1_c", None)  # every image via astropy
    slow = ScatterLightCube.read(compact_file)
    np.testing.assert_array_equal(fast.flux, slow.flux)
    np.testing.assert_array_equal(fast.flux_err, slow.flux_err)
    np.testing.assert_array_equal(fast.npix, slow.npix)
