"""Read the extensions of a cube file with less of astropy's per-extension overhead.

A compact cube file has about twenty extensions, and astropy's general
machinery costs more than their data: each tile-compressed image 1 to 5 ms of
header handling (`~astropy.io.fits.CompImageHDU` rebuilds an image header from
the table header), each small binary table 1 to 2 ms to turn into a
``FITS_rec``. The cube files' extensions are all of a few simple kinds, which
this module reads straight from the file's bytes:

* `image`: integer images tile-compressed with ``RICE_1`` in one
  ``COMPRESSED_DATA`` column, without scaling or blank values, decoded with
  astropy's own RICE decoder (a private function, used only after it decoded a known
  tile right), whole or only the tiles a region touches
  (`TiledImage.section`; `ScaledImage` decodes a compact cube's components
  so, as evaluation needs them);
* `table`: binary tables of fixed-width numeric and character columns, without
  scaling or a heap.

Anything else (other compression, scaled columns, ...) goes through astropy as
before, so every valid file reads, only more slowly. Open the file with
``fits.open(..., disable_image_compression=True)``: the compressed images then
appear as the binary tables they are stored in, whose headers astropy reads
cheaply.
"""

from __future__ import annotations

import itertools
import math
from functools import cache, cached_property

import numpy as np
from astropy.io import fits

from .exceptions import CubeFormatError

try:  # astropy's RICE decoder (private module, present since astropy 5.3)
    from astropy.io.fits.hdu.compressed._compression import (
        CfitsioException,
        decompress_rice_1_c,
    )
except ImportError:  # pragma: no cover  (then every image goes through CompImageHDU)
    decompress_rice_1_c = None

__all__ = ["image", "table", "TiledImage", "ScaledImage", "Table"]

#: FITS table column codes read here -> numpy type (big-endian); "A" is characters.
_COLUMN_TYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "A": "S"}
_BYTEPIX = {16: 2, 32: 4}  # ZBITPIX -> bytes per value, for the kinds decoded here
#: Keywords whose presence means a kind of compressed image not decoded here.
_UNHANDLED = ("ZBLANK", "ZSCALE", "ZZERO", "BSCALE", "BZERO", "ZQUANTIZ", "ZDITHER0")


#: A RICE_1 tile of 24 int32 values ``(k * k * 37) % 1001 - 500``, k = 0..23, as astropy
#: writes it (block size 32): what `_decoder_works` decodes.
_RICE_SAMPLE = bytes.fromhex(
    "fffffe0c5401255bdb9206534546f09bd975253eff2ba5e03a4324ee126178b74792538a84"
)


@cache
def _decoder_works() -> bool:
    """Whether astropy's private RICE decoder is there and decodes as this module expects.

    Checked once per process on a known tile, so an astropy whose private function
    changed sends every image through `~astropy.io.fits.CompImageHDU` (slower) instead
    of reading wrong values.
    """
    if decompress_rice_1_c is None:
        return False
    k = np.arange(24, dtype=np.int32)
    try:
        values = np.frombuffer(decompress_rice_1_c(_RICE_SAMPLE, 32, 4, k.size), dtype="i4")
    except Exception:  # noqa: BLE001  (any failure: astropy's public path)
        return False
    return bool(np.array_equal(values, (k * k * 37) % 1001 - 500))


def image(hdul: fits.HDUList, name: str):
    """Extension ``name`` of ``hdul`` as an image HDU: ``.name``, ``.header``, ``.shape``
    (numpy order) and ``.data``.

    A tile-compressed image seen as a binary table (the file opened with
    ``disable_image_compression=True``) becomes a `TiledImage`; any other HDU,
    compressed images opened the usual way among them, is returned as it is.
    """
    hdu = hdul[name]
    if isinstance(hdu, fits.BinTableHDU) and hdu.header.get("ZIMAGE") is True:
        return TiledImage(hdu)
    return hdu


class TiledImage:
    """A tile-compressed image of an open file, decoded when ``data`` is first read.

    Parameters
    ----------
    table : `~astropy.io.fits.BinTableHDU`
        The compressed image as stored, from a file opened with
        ``disable_image_compression=True``.
    """

    def __init__(self, table: fits.BinTableHDU):
        info = table.fileinfo()
        self.name = table.name
        self.header = table.header
        self._path = info["file"].name
        self._offset = int(info["datLoc"])
        h = self.header
        naxis = h.get("ZNAXIS", 0)
        if not isinstance(naxis, int) or naxis < 0:
            raise CubeFormatError(
                f"{self._path}: extension {self.name} has ZNAXIS = {naxis!r}; the file is damaged."
            )
        try:
            fits_shape = [int(h[f"ZNAXIS{i}"]) for i in range(1, naxis + 1)]
            # Without ZTILEn cards the tiles are whole rows (the convention's default).
            self._tile = [int(h.get(f"ZTILE{i}", 1)) for i in range(1, naxis + 1)]
            if naxis and "ZTILE1" not in h:
                self._tile[0] = fits_shape[0]
        except (KeyError, TypeError, ValueError) as err:
            raise CubeFormatError(
                f"{self._path}: extension {self.name} lacks a valid ZNAXISn or ZTILEn card "
                f"({err}); the file is damaged."
            ) from err
        self._fits_shape = fits_shape
        self.shape = tuple(reversed(fits_shape))

    @property
    def simple(self) -> bool:
        """Whether this image is of the kind decoded here (else astropy decodes it)."""
        h = self.header
        return (
            _decoder_works()
            and h.get("ZCMPTYPE") == "RICE_1"
            and h.get("ZBITPIX") in _BYTEPIX
            and h.get("TFIELDS") == 1
            and h.get("TTYPE1") == "COMPRESSED_DATA"
            and str(h.get("TFORM1", "")).startswith("1PB")
            and h.get("NAXIS1") == 8
            and not any(key in h for key in _UNHANDLED)
            and all(t > 0 for t in self._tile)
        )

    @cached_property
    def data(self) -> np.ndarray | None:
        """The image, as the integers stored (int16 or int32); None if it is empty."""
        if not self._fits_shape or 0 in self._fits_shape:
            return None
        if not self.simple:
            with fits.open(self._path, memmap=False, lazy_load_hdus=True) as hdul:
                return np.array(hdul[self.name].data)
        return self._decode()

    def _damaged(self, what: str) -> CubeFormatError:
        return CubeFormatError(
            f"{self._path}: compressed extension {self.name} is damaged ({what}); "
            "fetch or write the file again."
        )

    @cached_property
    def _heap(self) -> tuple[bytes, np.ndarray, int]:
        """The bytes of the table (read once), each tile's (nbytes, start) in them, and
        the values per block of the code; checked against the image's shape."""
        h = self.header
        ntiles = math.prod(self._counts)
        rows = int(h.get("NAXIS2", -1))
        heap_start = int(h.get("THEAP", 8 * max(rows, 0)))
        heap_size = int(h.get("PCOUNT", 0))
        if rows != ntiles:
            raise self._damaged(what=f"{rows} compressed tiles where its shape needs {ntiles}")
        with open(self._path, "rb") as f:
            f.seek(self._offset)
            raw = f.read(heap_start + heap_size)
        if len(raw) < heap_start + heap_size:
            raise self._damaged(what="the file ends inside it")
        pointers = np.frombuffer(raw, ">i4", count=2 * ntiles).reshape(ntiles, 2)
        if pointers.min(initial=0) < 0 or (pointers.sum(axis=1) > heap_size).any():
            raise self._damaged(what="a tile lies outside its data")
        pointers = pointers + np.array([0, heap_start])
        blocksize = h.get("ZVAL1", 32) if h.get("ZNAME1") == "BLOCKSIZE" else 32
        return raw, pointers, blocksize

    @property
    def _counts(self) -> list[int]:
        """Tiles along each FITS axis."""
        return [math.ceil(n / t) for n, t in zip(self._fits_shape, self._tile, strict=True)]

    def _decode(self) -> np.ndarray:
        return self.section(tuple(slice(0, n) for n in self.shape), keep=False)

    def section(self, box: tuple[slice, ...], keep: bool = True) -> np.ndarray:
        """The stored integers in ``box`` (numpy-order slices, step 1, within the image),
        decoding only the tiles it touches (kept for later calls if ``keep``)."""
        raw, pointers, blocksize = self._heap
        bytepix = _BYTEPIX[self.header["ZBITPIX"]]
        fits_box = [(b.start, b.stop) for b in reversed(box)]
        out = np.empty([b - a for a, b in reversed(fits_box)], dtype=f"i{bytepix}")
        counts = self._counts
        ranges = [
            range(a // t, (b - 1) // t + 1) if b > a else range(0)
            for (a, b), t in zip(fits_box, self._tile, strict=True)
        ]
        strides = np.cumprod([1, *counts[:-1]])
        for index in itertools.product(*ranges):
            n = int(np.dot(index, strides))
            tile = self._tiles.get(n)
            if tile is None:
                tile = self._decode_tile(n, index, raw, pointers[n], blocksize, bytepix)
                if keep:
                    self._tiles[n] = tile
            # The tile's and the box's overlap, in FITS order, then numpy order.
            lows = [i * t for i, t in zip(index, self._tile, strict=True)]
            part = [
                (max(a, lo), min(b, lo + t))
                for (a, b), lo, t in zip(fits_box, lows, self._tile, strict=True)
            ]
            src = tuple(slice(p - lo, q - lo) for (p, q), lo in zip(part, lows, strict=True))
            dst = tuple(slice(p - a, q - a) for (p, q), (a, _) in zip(part, fits_box, strict=True))
            out[dst[::-1]] = tile[src[::-1]]
        return out

    @cached_property
    def _tiles(self) -> dict[int, np.ndarray]:
        return {}

    def _decode_tile(self, n, index, raw, pointer, blocksize, bytepix) -> np.ndarray:
        """Tile ``n`` (at tile ``index`` along the FITS axes), as a numpy-order array."""
        shape = [
            min(t, size - i * t)
            for i, t, size in zip(index, self._tile, self._fits_shape, strict=True)
        ][::-1]
        nbytes, begin = (int(v) for v in pointer)
        try:
            values = decompress_rice_1_c(
                raw[begin : begin + nbytes], blocksize, bytepix, math.prod(shape)
            )
        except (CfitsioException, ValueError) as err:
            raise self._damaged(what=f"tile {n + 1}: {err}") from err
        return np.frombuffer(values, dtype=f"i{bytepix}").reshape(shape)


class ScaledImage:
    """A 3-D `TiledImage` of integers times a step per plane, as float32, decoded by
    region when indexed with slices and integers (so evaluating a few pixels decodes
    only the tiles around them), whole by `numpy.asarray`.

    Parameters
    ----------
    image : `TiledImage`
        A simple one (`TiledImage.simple`), shape (nplane, nrow, ncol).
    step : array of float, shape (nplane,)
        Finite step of each plane.
    """

    def __init__(self, image: TiledImage, step: np.ndarray):
        self.image, self.step = image, np.asarray(step, dtype=np.float32)
        self.shape, self.ndim, self.dtype = image.shape, 3, np.dtype(np.float32)
        image._heap  # read the bytes now and check where the tiles lie  # noqa: B018

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        box, squeeze = _basic_box(key, self.shape)
        if box is None:
            return np.asarray(self)[key]
        values = self.image.section(box)
        out = np.multiply(values, self.step[box[0], None, None], dtype=np.float32)
        return out[squeeze]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.image.section(tuple(slice(0, n) for n in self.shape), keep=False)
        return np.multiply(whole, self.step[:, None, None], dtype=dtype or np.float32)


def _basic_box(key, shape) -> tuple[tuple[slice, ...] | None, tuple]:
    """``key`` (integers, slices with step 1) as a box of slices within ``shape`` and the
    index that then drops the integer axes; (None, ()) for any other key."""
    key = key if isinstance(key, tuple) else (key,)
    if len(key) > len(shape):
        return None, ()
    key = key + (slice(None),) * (len(shape) - len(key))
    box, squeeze = [], []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, int | np.integer) and -n <= k < n:
            k = int(k) % n
            box.append(slice(k, k + 1))
            squeeze.append(0)
        elif isinstance(k, slice) and k.step in (None, 1):
            start, stop, _ = k.indices(n)
            box.append(slice(start, max(start, stop)))
            squeeze.append(slice(None))
        else:
            return None, ()
    return tuple(box), tuple(squeeze)


class Table:
    """The columns of a binary table by name (``names``, ``len``, ``[name]``, ``units``).

    Character columns are `str`, without trailing blanks, as astropy gives them.
    """

    def __init__(self, columns: dict[str, np.ndarray], units: dict[str, str], nrows: int):
        self.names = list(columns)
        self.units = units
        self._columns = columns
        self._nrows = nrows

    def __len__(self) -> int:
        return self._nrows

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]


def table(hdul, name: str) -> Table:
    """Binary table ``name`` of ``hdul`` (an `~astropy.io.fits.HDUList` or a dict of
    its HDUs by name), read directly when simple (see the module docstring)."""
    hdu = hdul[name]
    h = hdu.header
    if not isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
        raise CubeFormatError(f"Extension {name} is not a table; the file is damaged.")
    nfields = h.get("TFIELDS", 0)
    units = {h.get(f"TTYPE{i}"): str(h.get(f"TUNIT{i}", "")) for i in range(1, nfields + 1)}
    dtype = _row_dtype(h) if isinstance(hdu, fits.BinTableHDU) else None
    if dtype is None:  # astropy reads it
        data = hdu.data
        names = data.columns.names if data is not None else []
        columns = {n: np.array(data[n]) for n in names}
        return Table(columns, units, 0 if data is None else len(data))
    nrows = int(h["NAXIS2"])
    with open(hdu.fileinfo()["file"].name, "rb") as f:
        f.seek(int(hdu.fileinfo()["datLoc"]))
        raw = f.read(dtype.itemsize * nrows)
    if len(raw) < dtype.itemsize * nrows:
        raise CubeFormatError(
            f"{hdu.fileinfo()['file'].name}: table {hdu.name} ends past the end of the file; "
            "the file is truncated."
        )
    rows = np.frombuffer(raw, dtype, count=nrows)
    columns = {}
    for n in dtype.names:
        values = rows[n]
        if values.dtype.kind == "S":
            values = np.char.rstrip(np.char.decode(values, "ascii", "replace"))
        columns[n] = np.array(values, dtype=values.dtype.newbyteorder("="))
    return Table(columns, units, nrows)


def _row_dtype(header: fits.Header) -> np.dtype | None:
    """The numpy type of one row of a simple binary table (see the module
    docstring), or None if the table is not simple."""
    h = header
    nfields = h.get("TFIELDS", 0)
    if h.get("PCOUNT", 0) or not isinstance(nfields, int) or "THEAP" in h:
        return None
    fields = []
    for i in range(1, nfields + 1):
        name, form = h.get(f"TTYPE{i}"), str(h.get(f"TFORM{i}", "")).strip()
        if not name or any(f"{key}{i}" in h for key in ("TSCAL", "TZERO", "TDIM")):
            return None
        digits = form[:-1]
        code = form[-1:]
        if code not in _COLUMN_TYPES or not (digits == "" or digits.isdigit()):
            return None
        repeat = int(digits or 1)
        if code == "A":
            fields.append((name, f"S{repeat}"))
        elif repeat == 1:
            fields.append((name, _COLUMN_TYPES[code]))
        else:
            fields.append((name, _COLUMN_TYPES[code], (repeat,)))
    try:
        dtype = np.dtype(fields)
    except (TypeError, ValueError):  # repeated names, ...
        return None
    return dtype if dtype.itemsize == h.get("NAXIS1") else None
