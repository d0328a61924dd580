"""The fine layer's FITS extensions: writing them and reading them back.

`to_hdus` writes a `~lk_scatterlight.finelayer.FineLayer` as the ``FINE``,
``FINE_SCALE``, ``FINE_INDEX`` and ``FINE_COEF`` extensions (plus ``FINE_HOLES``
and ``FINE_FILLMAP`` when it has filled bins), rounding the basis images and
coefficients to the steps of `quantum`; `from_hdul` reads them, checking the
layout, from files of every version. The layer's methods of the same names call
these; the class is passed in, so this module does not import it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from .. import fastfits
from ..exceptions import CubeFormatError
from ..lowrank import PRECISION, error_step

if TYPE_CHECKING:
    from .core import FineLayer

__all__ = ["FINE_EXTENSIONS", "FINE_PRECISION", "from_hdul", "quantum", "to_hdus"]

#: Rounding of the fine layer on writing (`FineLayer.quantum`), in units of each
#: block's quoted error: twice the low-rank factors' `PRECISION`. It adds at most
#: 0.5 % to a block's error in quadrature; on the structured field of
#: ``benchmarks/bench_size_fine.py`` it changes the RMS error against the truth by
#: < 0.15 % in every patch class (as 0.05 did) for 10 % less space.
FINE_PRECISION = 2 * PRECISION


#: FITS extensions of a fine layer: the blocks and their index table (all required).
FINE_EXTENSIONS = ("FINE", "FINE_INDEX", "FINE_COEF")
_INT16_SPAN = 32000.0  # largest stored |integer| (int16 holds 32767)
_COMPRESSION_IMAGES = 256  # basis images per compressed FITS tile
_COMPRESSION_VALUES = 2**16  # values per compressed FITS tile of 1-D series
_CORR_UNIT = 1000  # the misfit correlations are stored in thousandths


def _pairs(layer: FineLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (block, basis image, coefficient) triple of the layer, as index arrays."""
    block = np.repeat(np.arange(len(layer)), layer.rank)
    within = np.arange(block.size) - np.repeat(np.cumsum(layer.rank) - layer.rank, layer.rank)
    return block, layer.basis_start[block] + within, layer.coef_start[block] + within


def _image_order(layer: FineLayer, pairs=None) -> np.ndarray:
    """Positions in ``coef`` of the coefficients ordered by basis image, then block.

    A factored tile's coefficients of one image are then a series over its
    planes, smooth in time, which the compression codes as small differences.
    ``pairs``: `_pairs`, if already computed.
    """
    _, image, position = pairs or _pairs(layer)  # in block order: sort stably by image
    if layer.basis.shape[0] <= 2**16:  # 16-bit keys: numpy's radix sort, 5x faster
        image = image.astype(np.uint16)
    return position[np.argsort(image, kind="stable")]


def _coef_image(layer: FineLayer, pairs=None) -> np.ndarray:
    """The basis image each coefficient multiplies (-1 where no block uses it).

    ``pairs``: `_pairs`, if already computed."""
    _, image, position = pairs or _pairs(layer)
    out = np.full(layer.coef.size, -1)
    out[position] = image
    return out


def quantum(layer: FineLayer, precision: float = FINE_PRECISION) -> tuple[np.ndarray, np.ndarray]:
    """`FineLayer.quantum` of ``layer`` (see there)."""
    nb = layer.basis.shape[0]
    block, image, position = _pairs(layer)
    share = precision * np.sqrt(12.0 / 2) * layer.error[block] / np.sqrt(layer.rank[block])

    def largest(allowed, floor):
        bound = np.full(nb, np.inf)
        np.minimum.at(bound, image, allowed)
        return np.where(np.isfinite(bound), np.maximum(bound, floor), floor)

    flat = layer.basis.reshape(nb, -1).astype(np.float64)
    peak = np.abs(flat).max(axis=1, initial=0.0)
    coef = np.abs(layer.coef[position].astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        step = largest(share / coef, peak / _INT16_SPAN)
        step = np.where(step > 0, step, 1.0).astype(np.float32)
        rounded = np.rint(flat / step[:, None]) * step[:, None]
        rms = np.sqrt(np.mean(rounded**2, axis=1))
        top = np.zeros(nb)
        np.maximum.at(top, image, coef)
        coef_step = largest(share / rms[image], top / 2.0**30)
        coef_step = np.where(coef_step > 0, coef_step, 1.0)
    raw = np.ones(nb, dtype=bool)  # images whose coefficients are all 1
    np.logical_and.at(raw, image, layer.coef[position] == 1)
    coef_step[raw] = 2.0 ** np.floor(np.log2(coef_step[raw]))
    return step, coef_step.astype(np.float32)


def to_hdus(
    layer: FineLayer, precision: float | None = FINE_PRECISION
) -> list[fits.hdu.base.ExtensionHDU]:
    """`FineLayer.to_hdus` of ``layer`` (see there)."""
    nb, t = layer.basis.shape[0], layer.tile
    implied = np.array_equal(layer.coef_start, np.cumsum(layer.rank) - layer.rank)
    if precision is None:
        columns = [
            _integer_column("TILE_ROW", layer.tile_row),
            _integer_column("TILE_COL", layer.tile_col),
            _integer_column("PLANE", layer.plane),
            fits.Column("ERROR", "E", unit="electron/s", array=layer.error),
            _integer_column("BASIS", layer.basis_start),
            _integer_column("RANK", layer.rank),
            _integer_column("COEF", layer.coef_start),
        ]
        if layer.has_holes:
            columns += [
                fits.Column("FILLERR", "E", unit="electron/s", array=layer.fill_error),
                _integer_column("HOLES", layer.hole_index),
            ]
        if layer.misfit is not None:
            columns += [
                fits.Column("MISFIT", "E", unit="electron/s", array=layer.misfit),
                fits.Column("CORR_ROW", "E", array=layer.misfit_corr[:, 0]),
                fits.Column("CORR_COL", "E", array=layer.misfit_corr[:, 1]),
            ]
        if layer.long_misfit is not None:
            columns += [
                fits.Column("LMISFIT", "E", unit="electron/s", array=layer.long_misfit),
                fits.Column("LCORR_ROW", "E", array=layer.long_corr[:, 0]),
                fits.Column("LCORR_COL", "E", array=layer.long_corr[:, 1]),
            ]
        index = fits.BinTableHDU.from_columns(columns, name="FINE_INDEX")
    else:
        index = _index_image(layer, implied)
    if precision is None:
        image = fits.ImageHDU(layer.basis, name="FINE")
        coef = fits.ImageHDU(layer.coef, name="FINE_COEF")
        scale = None
    else:
        step, coef_step = quantum(layer, precision)
        image = fits.CompImageHDU(
            np.rint(layer.basis / step[:, None, None]).astype(np.int16),
            name="FINE",
            compression_type="RICE_1",
            tile_shape=(max(1, min(nb, _COMPRESSION_IMAGES)), t, t),
        )
        image.header["FINEPREC"] = (precision, "rounding RMS <= FINEPREC * ERROR per block")
        scale = fits.BinTableHDU.from_columns(
            [
                fits.Column("FINE", "E", unit="electron/s", array=step),
                fits.Column("COEF", "E", array=coef_step),
            ],
            name="FINE_SCALE",
        )
        scale.header["COMMENT"] = "row i: steps of basis image i and of its coefficients"
        owner = _coef_image(layer)
        per_coef = np.where(owner >= 0, coef_step[owner.clip(0)], 1.0)
        stored = np.rint(layer.coef / per_coef).astype(np.int32)
        if implied:  # by basis image, so that RICE codes each series' small steps
            stored = stored[_image_order(layer)]
        coef = fits.CompImageHDU(
            stored,
            name="FINE_COEF",
            compression_type="RICE_1",
            tile_shape=(max(1, min(layer.coef.size, _COMPRESSION_VALUES)),),
        )
        if implied:
            coef.header["COEFORD"] = ("IMAGE", "ordered by basis image, then block")
    image.header["BUNIT"] = (
        "electron/s",
        "per pixel" + (", times FINE_SCALE" if scale else ""),
    )
    image.header["FINEBIN"] = (layer.pixel_bin, "[pixel] fine bin size")
    image.header["FINETILE"] = (layer.tile, "fine bins per tile side")
    image.header["COMMENT"] = "basis images of the residual vs the coarse cube, per tile"
    coef.header["COMMENT"] = "coefficients of the basis images, per block"
    hdus = [image, index, coef] if scale is None else [image, scale, index, coef]
    if layer.has_holes:
        holes = fits.CompImageHDU(
            layer.holes.astype(np.uint8),
            name="FINE_HOLES",
            compression_type="RICE_1",
            tile_shape=(max(1, min(len(layer.holes), _COMPRESSION_IMAGES)), t, t),
        )
        holes.header["COMMENT"] = "depth class (1, 2, ...) of the fine bins that were filled"
        for k, value in enumerate(() if layer.fill_scale is None else layer.fill_scale, 1):
            holes.header[f"FILLVAR{k}"] = (float(value), f"fill variance of depth class {k}")
        hdus.append(holes)
        if layer.fill_map is not None:
            hdus.append(_fill_map_hdu(layer))
    return hdus


def _fill_map_hdu(layer: FineLayer) -> fits.CompImageHDU:
    """``FINE_FILLMAP``: `fill_map`, float32, compressed losslessly (``GZIP_2``)."""
    hdu = fits.CompImageHDU(
        layer.fill_map.astype(np.float32),
        name="FINE_FILLMAP",
        compression_type="GZIP_2",
        quantize_level=0.0,
        tile_shape=(max(1, min(len(layer.fill_map), _COMPRESSION_IMAGES)), layer.tile, layer.tile),
    )
    hdu.header["COMMENT"] = "fill variance of each filled fine bin, in units of FILLERR**2"
    return hdu


def _index_image(layer: FineLayer, implied: bool) -> fits.CompImageHDU:
    """``FINE_INDEX`` as a tile-compressed int32 image, one row per index column.

    Within a tile the columns are constant or step by one plane, so each row,
    compressed as one series of differences (``RICE_1``), takes a few bits per
    block. ``ERROR`` (and ``FILLERR``, ``MISFIT``, ``LMISFIT``) is stored as a
    multiple of ``ERRSTEP`` (`~lk_scatterlight.lowrank.error_step`: the quoted
    errors change by less than 0.2 %), the correlations (``CORR_ROW``,
    ``CORR_COL``, ``LCORR_ROW``, ``LCORR_COL``) in thousandths.
    """
    errors = [layer.error]
    errors += [layer.fill_error] if layer.has_holes else []
    errors += [layer.misfit] if layer.misfit is not None else []
    errors += [layer.long_misfit] if layer.long_misfit is not None else []
    step = error_step(np.concatenate(errors))
    rows = {
        "TILE_ROW": layer.tile_row,
        "TILE_COL": layer.tile_col,
        "PLANE": layer.plane,
        "BASIS": layer.basis_start,
        "RANK": layer.rank,
        "ERROR": np.rint(layer.error / step),
    }
    if not implied:
        rows["COEF"] = layer.coef_start
    if layer.has_holes:
        rows["FILLERR"] = np.rint(layer.fill_error / step)
        rows["HOLES"] = layer.hole_index
    if layer.misfit is not None:
        rows["MISFIT"] = np.rint(layer.misfit / step)
        rows["CORR_ROW"] = np.rint(layer.misfit_corr[:, 0] * _CORR_UNIT)
        rows["CORR_COL"] = np.rint(layer.misfit_corr[:, 1] * _CORR_UNIT)
    if layer.long_misfit is not None:
        rows["LMISFIT"] = np.rint(layer.long_misfit / step)
        rows["LCORR_ROW"] = np.rint(layer.long_corr[:, 0] * _CORR_UNIT)
        rows["LCORR_COL"] = np.rint(layer.long_corr[:, 1] * _CORR_UNIT)
    n = len(layer)
    index = fits.CompImageHDU(
        np.array(list(rows.values()), dtype=np.int32),
        name="FINE_INDEX",
        compression_type="RICE_1",
        tile_shape=(1, max(1, min(n, _COMPRESSION_VALUES))),
    )
    for i, name in enumerate(rows, start=1):  # RNAMEi: 8 characters up to row 999
        index.header[f"RNAME{i}"] = (name, f"row {i}: the block index column {name}")
    index.header["ERRSTEP"] = (step, "[electron/s] ERROR = ERROR row * ERRSTEP")
    return index


def from_hdul(cls: type[FineLayer], hdul, path) -> FineLayer:
    """`FineLayer.from_hdul`: read a layer of class ``cls`` (see there)."""
    fine = fastfits.image(hdul, "FINE")
    header = fine.header
    for key in ("FINEBIN", "FINETILE"):
        if key not in header:
            raise CubeFormatError(f"{path}: FINE extension has no {key} keyword.")
    table = _index_columns(fastfits.image(hdul, "FINE_INDEX"), path)
    wanted = ("TILE_ROW", "TILE_COL", "PLANE", "ERROR", "BASIS", "RANK")
    missing = [c for c in wanted if c not in table]
    if missing:
        raise CubeFormatError(f"{path}: FINE_INDEX has no column(s) {', '.join(missing)}.")
    tile = int(header["FINETILE"])
    basis = fine.data
    basis = np.zeros((0, tile, tile), np.float32) if basis is None else np.array(basis)
    coef_hdu = fastfits.image(hdul, "FINE_COEF")
    coef = coef_hdu.data
    coef = np.zeros(0) if coef is None else np.array(coef).ravel()
    layer = cls(
        pixel_bin=int(header["FINEBIN"]),
        tile=tile,
        tile_row=np.array(table["TILE_ROW"]),
        tile_col=np.array(table["TILE_COL"]),
        plane=np.array(table["PLANE"]),
        error=np.array(table["ERROR"]),
        basis=basis,
        basis_start=np.array(table["BASIS"]),
        rank=np.array(table["RANK"]),
        coef=coef,
        coef_start=np.array(table["COEF"]) if "COEF" in table else None,
        **_holes(hdul, table, tile, path),
        **_misfit(table, path),
    )
    order = coef_hdu.header.get("COEFORD", "BLOCK")
    if order not in ("BLOCK", "IMAGE") or order == "IMAGE" and "COEF" in table:
        raise CubeFormatError(
            f"{path}: FINE_COEF has COEFORD = {order!r}; expected 'IMAGE' (without a "
            "COEF index column) or 'BLOCK'. The file is damaged or from a newer "
            "lk_scatterlight (pip install -U lk_scatterlight)."
        )
    if order == "IMAGE" or "FINE_SCALE" in hdul:
        # The order and the steps are looked up through the index: check it first.
        problems = layer.validate(int(layer.plane.max(initial=0)) + 1)
        if problems:
            raise CubeFormatError(f"{path}: {problems[0]}.")
        pairs = _pairs(layer)
    if order == "IMAGE":
        coef = _block_order(layer, coef, path, pairs)
    if "FINE_SCALE" in hdul:
        return _scaled(layer, coef, fastfits.table(hdul, "FINE_SCALE"), path, pairs)
    if not np.issubdtype(np.asarray(basis).dtype, np.floating):
        raise CubeFormatError(
            f"{path}: FINE holds integers but the file has no FINE_SCALE extension "
            "to scale them; the file is damaged."
        )
    return layer if order == "BLOCK" else dataclasses.replace(layer, coef=coef)


def _index_columns(hdu, path) -> dict[str, np.ndarray]:
    """The columns of ``FINE_INDEX``: a binary table, or an integer image (one row each,
    named by ``RNAMEi``, or ``ROWNAMEi`` in files written before there could be ten
    rows; ``ERROR`` in units of ``ERRSTEP``)."""
    if isinstance(hdu, fits.BinTableHDU):
        table = hdu.data
        names = table.columns.names if table is not None else []
        return {name: np.array(table[name]) for name in names}
    data = hdu.data
    header = hdu.header
    if data is None or data.ndim != 2 or data.dtype.kind not in "iu" or "ERRSTEP" not in header:
        raise CubeFormatError(
            f"{path}: FINE_INDEX must be a table or a 2-D integer image with an ERRSTEP "
            "keyword; the file is damaged."
        )
    names = [
        header.get(f"RNAME{i}", header.get(f"ROWNAME{i}")) for i in range(1, data.shape[0] + 1)
    ]
    columns = {str(name): np.array(row) for name, row in zip(names, data, strict=True) if name}
    for name in ("ERROR", "FILLERR", "MISFIT", "LMISFIT"):
        if name in columns:
            columns[name] = (columns[name] * float(header["ERRSTEP"])).astype(np.float32)
    for name in ("CORR_ROW", "CORR_COL", "LCORR_ROW", "LCORR_COL"):
        if name in columns:
            columns[name] = (columns[name] / _CORR_UNIT).astype(np.float32)
    return columns


def _misfit(table: dict, path) -> dict:
    """``misfit`` and ``misfit_corr`` of a file that has them (else none): the
    ``MISFIT``, ``CORR_ROW`` and ``CORR_COL`` index columns; and ``long_misfit`` and
    ``long_corr`` from ``LMISFIT``, ``LCORR_ROW`` and ``LCORR_COL`` if present."""
    short, long = ("MISFIT", "CORR_ROW", "CORR_COL"), ("LMISFIT", "LCORR_ROW", "LCORR_COL")
    has = {name: name in table for name in (*short, *long)}
    if not any(has.values()):
        return {}
    need = short + long if any(has[name] for name in long) else short
    if not all(has[name] for name in need):
        raise CubeFormatError(
            f"{path}: a fine layer with misfits needs the {', '.join(need)} index columns "
            "together; the file is damaged."
        )
    out = {"misfit": table["MISFIT"]}
    out["misfit_corr"] = np.column_stack([table["CORR_ROW"], table["CORR_COL"]])
    if len(need) > len(short):
        out["long_misfit"] = table["LMISFIT"]
        out["long_corr"] = np.column_stack([table["LCORR_ROW"], table["LCORR_COL"]])
    return out


def _holes(hdul, table: dict, tile: int, path) -> dict:
    """``fill_error``, ``hole_index`` and ``holes`` of a file that has them (else none):
    the ``FINE_HOLES`` extension and the ``FILLERR`` and ``HOLES`` index columns."""
    present = ["FINE_HOLES" in hdul, "FILLERR" in table, "HOLES" in table]
    if not any(present):
        return {}
    if not all(present):
        raise CubeFormatError(
            f"{path}: a fine layer with filled bins needs the FINE_HOLES extension and the "
            "FILLERR and HOLES index columns together; the file is damaged."
        )
    hdu = fastfits.image(hdul, "FINE_HOLES")
    data = hdu.data
    holes = np.zeros((0, tile, tile), np.uint8) if data is None else np.asarray(data)
    if holes.ndim != 3 or holes.shape[1:] != (tile, tile):
        raise CubeFormatError(
            f"{path}: FINE_HOLES must be (nholes, {tile}, {tile}); found {holes.shape}."
        )
    scale = []
    while f"FILLVAR{len(scale) + 1}" in hdu.header:
        scale.append(hdu.header[f"FILLVAR{len(scale) + 1}"])
    try:
        scale = np.array(scale, dtype=np.float32) if scale else None
    except (TypeError, ValueError):
        msg = f"{path}: the FILLVARn keywords of FINE_HOLES must be numbers; the file is damaged."
        raise CubeFormatError(msg) from None
    fill_map = None
    if "FINE_FILLMAP" in hdul:
        fill_map = np.asarray(fastfits.image(hdul, "FINE_FILLMAP").data, dtype=np.float32)
        if fill_map.shape != holes.shape:
            raise CubeFormatError(
                f"{path}: FINE_FILLMAP must have the shape of FINE_HOLES, {holes.shape}; "
                f"found {fill_map.shape}. The file is damaged."
            )
    return {
        "fill_error": table["FILLERR"],
        "hole_index": table["HOLES"],
        "holes": holes,
        "fill_scale": scale,
        "fill_map": fill_map,
    }


def _block_order(layer: FineLayer, coef: np.ndarray, path, pairs) -> np.ndarray:
    """The stored coefficients ``coef`` of ``layer`` (a valid index, whose `_pairs` are
    ``pairs``), read in basis-image order (``COEFORD = 'IMAGE'``), put back in block order."""
    if int(layer.rank.sum()) != coef.size:
        raise CubeFormatError(
            f"{path}: FINE_COEF holds {coef.size} coefficients but the blocks' RANK add up "
            f"to {int(layer.rank.sum())}; the file is damaged."
        )
    out = np.empty_like(coef)
    out[_image_order(layer, pairs)] = coef
    return out


def _scaled(layer: FineLayer, coef: np.ndarray, table: fastfits.Table, path, pairs) -> FineLayer:
    """``layer`` (a valid index, whose `_pairs` are ``pairs``) read as stored integers,
    times the steps of the ``FINE_SCALE`` table.

    ``coef`` holds the stored coefficients as read, in block order (int32:
    ``layer.coef`` is float32 and may have rounded them).
    """
    nb = layer.basis.shape[0]
    if any(c not in table.names for c in ("FINE", "COEF")) or len(table) != nb:
        raise CubeFormatError(
            f"{path}: FINE_SCALE must be a table with columns FINE and COEF and one row "
            f"per basis image in FINE ({nb}); the file is damaged."
        )
    step = np.asarray(table["FINE"], dtype=np.float32)
    owner = _coef_image(layer, pairs)
    coef_step = np.asarray(table["COEF"], dtype=np.float64)
    per_coef = np.where(owner >= 0, coef_step[owner.clip(0)] if nb else 1.0, 1.0)
    return dataclasses.replace(layer, basis=layer.basis * step[:, None, None], coef=coef * per_coef)


def _integer_column(name: str, values: np.ndarray) -> fits.Column:
    """A FITS table column of ``values`` in the narrowest integer type that holds them."""
    values = np.asarray(values)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for code, dtype in (("B", np.uint8), ("I", np.int16), ("J", np.int32), ("K", np.int64)):
        info = np.iinfo(dtype)
        if code == "K" or info.min <= low and high <= info.max:
            return fits.Column(name, code, array=values.astype(dtype))
    raise AssertionError  # pragma: no cover  (int64 holds every index)
