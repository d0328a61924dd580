"""The direct readers of fastfits: same arrays as astropy, clear errors on damaged data."""

import numpy as np
import pytest
from astropy.io import fits
from cube_helpers import edited, make_cube

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


def _compact(nt=40, nrow=8, ncol=9, rank=3):
    """A compact cube of ``rank`` components plus a little noise."""
    rng = np.random.default_rng(2)
    series, images = rng.normal(size=(nt, rank)), rng.normal(size=(rank, nrow, ncol))
    flux = 50 + np.einsum("ti,irc->trc", series, images) + rng.normal(0, 0.01, (nt, nrow, ncol))
    cube = make_cube(
        nt, nrow, ncol, flux=flux.astype(np.float32), flux_err=np.full(flux.shape, 0.01)
    )
    return cube.compress()


@pytest.fixture
def compact_file(tmp_path):
    return _compact().write(tmp_path / "compact.fits")


def _pointers(path, name):
    """Offset in the file of the tile pointers (nbytes, offset) of compressed ``name``."""
    with fits.open(path, disable_image_compression=True) as hdul:
        return hdul[name].fileinfo()["datLoc"]


def _damage(path, tmp_path, name, change):
    """A copy of ``path`` whose first tile pointer of ``name`` is ``change(pointer)``."""
    raw = bytearray(path.read_bytes())
    at = _pointers(path, name)
    pointer = np.frombuffer(bytes(raw[at : at + 8]), ">i4")
    raw[at : at + 8] = np.array(change(pointer), ">i4").tobytes()
    bad = tmp_path / "bad.fits"
    bad.write_bytes(bytes(raw))
    return bad


@pytest.mark.parametrize("name", ["FLUX_COMP", "FLUX_COEF", "ERR_IMAGE"])
def test_tile_outside_its_data(compact_file, tmp_path, name):
    """A tile pointer past the compressed data: reading fails, naming the extension."""
    bad = _damage(compact_file, tmp_path, name, lambda p: (p[0] + 10**6, p[1]))
    with pytest.raises(
        CubeFormatError, match=f"compressed extension {name} is damaged.*a tile lies outside"
    ):
        ScatterLightCube.read(bad)


def test_damaged_tile(compact_file, tmp_path):
    """A tile whose code ends early: an error naming the extension, on reading or, for
    the components (decoded where evaluation needs them), on their first use."""
    message = "compressed extension {} is damaged.*tile 1: decompression error"
    cut = lambda p: (4, p[1])  # noqa: E731
    with pytest.raises(CubeFormatError, match=message.format("FLUX_COEF")):
        ScatterLightCube.read(_damage(compact_file, tmp_path, "FLUX_COEF", cut))
    cube = ScatterLightCube.read(_damage(compact_file, tmp_path, "FLUX_COMP", cut))
    with pytest.raises(CubeFormatError, match=message.format("FLUX_COMP")):
        cube.evaluate(cube.btjd[:3], [10.0], [60.0])


def test_compact_file_reads_as_through_astropy(compact_file, monkeypatch):
    """The direct decoder and astropy's give the same cube."""
    fast = ScatterLightCube.read(compact_file)
    flux, flux_err = fast.flux, fast.flux_err  # decoded now
    monkeypatch.setattr(fastfits, "_decoder_works", lambda: False)  # all via astropy
    slow = ScatterLightCube.read(compact_file)
    np.testing.assert_array_equal(flux, slow.flux)
    np.testing.assert_array_equal(flux_err, slow.flux_err)
    np.testing.assert_array_equal(fast.npix, slow.npix)


def test_decoder_checked_before_use(monkeypatch):
    """astropy's private RICE decoder is used only if it decodes a known tile right: a
    changed or missing one sends every image through astropy's public reader."""
    assert fastfits._decoder_works.__wrapped__()
    for changed in (
        lambda data, blocksize, bytepix, n: bytes(4 * n),  # wrong values
        lambda data, blocksize, n: b"",  # another signature
        None,  # gone
    ):
        monkeypatch.setattr(fastfits, "decompress_rice_1_c", changed)
        assert not fastfits._decoder_works.__wrapped__()


@pytest.fixture
def large(tmp_path):
    """A compact cube of 40 x 36 bins (3 x 3 component tiles) and its file."""
    cube = _compact(nt=30, nrow=40, ncol=36, rank=4)
    return cube, cube.write(tmp_path / "large.fits")


def test_components_in_spatial_tiles(large):
    """FLUX_COMP is written in tiles of all components x 16 x 16 bins."""
    cube, path = large
    with fits.open(path, disable_image_compression=True) as hdul:
        header = hdul["FLUX_COMP"].header
    assert [header[f"ZTILE{i}"] for i in (1, 2, 3)] == [16, 16, cube.rank]


def test_evaluation_decodes_only_the_tiles_it_needs(large, monkeypatch):
    """A TPF's evaluation decodes the component tiles around it, and gives what the
    whole decoded file gives."""
    cube, path = large
    back = ScatterLightCube.read(path)
    tiles = back._lowrank._components.image._tiles
    assert not tiles  # nothing decoded on reading
    rows, columns = 20 + np.arange(10), 60 + np.arange(10)  # within the first 16 x 16 bins
    got = back.evaluate(back.btjd, rows, columns)
    assert sorted(tiles) == [0]
    total = back.evaluate_sum(back.btjd, rows, columns)
    part = back.flux[:, 30:40, 20:36]
    monkeypatch.setattr(fastfits, "_decoder_works", lambda: False)  # all by astropy
    whole = ScatterLightCube.read(path)
    assert isinstance(whole._lowrank.flux_comp, np.ndarray)
    want = whole.evaluate(whole.btjd, rows, columns)
    np.testing.assert_array_equal(got.flux, want.flux)
    np.testing.assert_array_equal(got.flux_err, want.flux_err)
    np.testing.assert_array_equal(total.flux, whole.evaluate_sum(whole.btjd, rows, columns).flux)
    np.testing.assert_array_equal(part, whole.flux[:, 30:40, 20:36])
    memory = cube.evaluate(cube.btjd, rows, columns)  # before rounding on writing
    np.testing.assert_allclose(got.flux, memory.flux, rtol=0, atol=1e-3)


def test_components_in_one_tile_each_still_read(large, tmp_path):
    """Files from before the spatial tiles (one tile per component image) read the same."""
    _, path = large

    def per_component(hdul):
        old = hdul["FLUX_COMP"]
        hdul["FLUX_COMP"] = fits.CompImageHDU(
            old.data, old.header, name="FLUX_COMP", compression_type="RICE_1",
            tile_shape=(1, *old.data.shape[1:]),
        )  # fmt: skip

    old = ScatterLightCube.read(edited(path, tmp_path / "old.fits", per_component))
    new = ScatterLightCube.read(path)
    with fits.open(tmp_path / "old.fits", disable_image_compression=True) as hdul:
        assert hdul["FLUX_COMP"].header["ZTILE3"] == 1
    np.testing.assert_array_equal(old.flux, new.flux)
    times = new.btjd[::3]
    np.testing.assert_array_equal(
        old.evaluate(times, [100.0, 300.5], [200.0]).flux,
        new.evaluate(times, [100.0, 300.5], [200.0]).flux,
    )
