"""Read the extensions of a cube file with less of astropy's per-extension overhead.

A compact cube file has about twenty extensions, and astropy's general
machinery costs more than their data: each tile-compressed image 1 to 5 ms of
header handling (`~astropy.io.fits.CompImageHDU` rebuilds an image header from
the table header), each small binary table 1 to 2 ms to turn into a
``FITS_rec``. The cube files' extensions are all of a few simple kinds, which
this module reads straight from the file's bytes:

* `image`: integer images tile-compressed with ``RICE_1`` in one
  ``COMPRESSED_DATA`` column, without scaling or blank values, decoded with
  astropy's own RICE decoder;
* `table`: binary tables of fixed-width numeric and character columns, without
  scaling or a heap.

Anything else (other compression, scaled columns, ...) goes through astropy as
before, so every valid file reads, only more slowly. Open the file with
``fits.open(..., disable_image_compression=True)``: the compressed images then
appear as the binary tables they are stored in, whose headers astropy reads
cheaply.
"""

from __future__ import annotations

import math
from functools import cached_property

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

__all__ = ["image", "table", "TiledImage", "Table"]

#: FITS table column codes read here -> numpy type (big-endian); "A" is characters.
_COLUMN_TYPES = {"B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8", "A": "S"}
_BYTEPIX = {16: 2, 32: 4}  # ZBITPIX -> bytes per value, for the kinds decoded here
#: Keywords whose presence means a kind of compressed image not decoded here.
_UNHANDLED = ("ZBLANK", "ZSCALE", "ZZERO", "BSCALE", "BZERO", "ZQUANTIZ", "ZDITHER0")


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
            decompress_rice_1_c is not None
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

    def _decode(self) -> np.ndarray:
        h = self.header
        bytepix = _BYTEPIX[h["ZBITPIX"]]
        blocksize = h.get("ZVAL1", 32) if h.get("ZNAME1") == "BLOCKSIZE" else 32
        counts = [math.ceil(n / t) for n, t in zip(self._fits_shape, self._tile, strict=True)]
        ntiles = math.prod(counts)
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
        out = np.empty(self.shape, dtype=f"i{bytepix}")
        for n, (nbytes, start) in enumerate(pointers.tolist()):
            first = np.unravel_index(n, counts[::-1])[::-1]  # FITS order: axis 1 fastest
            where = tuple(
                slice(i * t, min((i + 1) * t, size))
                for i, t, size in zip(first, self._tile, self._fits_shape, strict=True)
            )[::-1]
            shape = tuple(s.stop - s.start for s in where)
            begin = heap_start + start
            try:
                values = decompress_rice_1_c(
                    raw[begin : begin + nbytes], blocksize, bytepix, math.prod(shape)
                )
            except (CfitsioException, ValueError) as err:
                raise self._damaged(what=f"tile {n + 1}: {err}") from err
            out[where] = np.frombuffer(values, dtype=out.dtype).reshape(shape)
        return out


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
