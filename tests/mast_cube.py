"""Write TESS SPOC FFI files and MAST FFI cubes for tests (test helper, not package code).

MAST serves every SPOC sector/camera/CCD as one FITS "cube" made by
``astrocut.CubeFactory`` (``s3://stpubdata/tess/public/mast/tess-sSSSS-C-D-cube.fits``)
next to the calibrated FFIs themselves
(``s3://stpubdata/tess/public/ffi/sSSSS/YYYY/DDD/C-D/<name>``). `write_mast_cube`
reproduces the cube's byte layout, which ``tesscube`` reads with byte-range
requests and hard-coded offsets:

* HDU 0: a header-only primary HDU: the first FFI's primary header without
  ``CHECKSUM``, plus ``ORIGIN``/``DATE``, ``CAMERA``/``CCD`` (from the FFI's
  image header), ``SECTOR``, the last FFI's ``DATE-END``/``TSTOP`` and
  ``EXTNAME = 'PRIMARY'``. It must fit in one 2880-byte block.
* HDU 1: an image HDU of big-endian float32 with ``NAXIS1 = 2`` (flux, error),
  ``NAXIS2 = nframes``, ``NAXIS3 = 2136`` columns, ``NAXIS4 = 2078`` rows, i.e.
  numpy shape ``(2078, 2136, nframes, 2)``; its header is one block, so the data
  start at byte 5760 (``tesscube.DATA_OFFSET``), each pixel's time series is
  contiguous, and the data are zero-padded to a multiple of 2880 bytes.
* HDU 2: a binary table with one row per FFI (sorted by ``TSTART``): one column
  per card of the template FFI's image header (``XTENSION`` ... ``DQUALITY``,
  ``TSTART``, ``TSTOP``, WCS, ...; strings ``A``, integers and booleans ``J``,
  the rest ``D``) and ``FFI_FILE``; its header repeats each column name as a
  keyword whose value is the card's comment.

The FFIs are three-HDU files: a header-only primary HDU and two
(2078, 2136) float32 images, ``CAMERA.CCD c.d cal`` (flux, e-/s) and
``CAMERA.CCD c.d uncert`` (its 1-sigma error).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits
from astropy.time import Time

__all__ = [
    "FFI_SHAPE",
    "public_bucket",
    "cube_object_key",
    "ffi_bytes",
    "ffi_object_key",
    "make_ffi",
    "write_mast_cube",
]

#: Shape (rows, columns) of a full SPOC FFI, collateral pixels included.
FFI_SHAPE = (2078, 2136)
_BLOCK = 2880
# Image-header cards astrocut keeps as columns but does not repeat as keywords.
_KEYWORDS_IN_USE = {
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "PCOUNT",
    "GCOUNT",
    "TFIELDS",
}


def cube_object_key(sector: int, camera: int, ccd: int) -> str:
    """S3 key of MAST's SPOC FFI cube in the ``stpubdata`` bucket."""
    return f"tess/public/mast/tess-s{sector:04d}-{camera}-{ccd}-cube.fits"


def ffi_object_key(name: str) -> str:
    """S3 key of an FFI file in ``stpubdata``, derived from its name as tesscube does."""
    date, sector, camera, ccd, _, _ = name[4:].split("-")
    return f"tess/public/ffi/{sector}/{date[:4]}/{date[4:7]}/{camera}-{ccd}/{name}"


def _utc(btjd: float) -> Time:
    return Time(btjd + 2457000.0, format="jd", scale="tdb").utc


def make_ffi(
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    sector: int,
    camera: int,
    ccd: int,
    tstart: float,
    tstop: float,
    quality: int = 0,
    ffiindex: int = 1,
    barycorr: float = 0.0,
) -> tuple[str, fits.HDUList]:
    """Build one calibrated SPOC FFI ("ffic") in memory.

    Parameters
    ----------
    flux, flux_err : ndarray, shape (2078, 2136)
        Calibrated flux and its error [e-/s]; stored as float32.
    sector, camera, ccd : int
        Where the frame was taken.
    tstart, tstop : float
        Start and end of the exposure [BTJD days].
    quality : int
        ``DQUALITY`` bits.
    ffiindex : int
        ``FFIINDEX`` (cadence interval number) in the primary header.
    barycorr : float
        ``BARYCORR`` [d] in the image header.

    Returns
    -------
    name : str
        File name, ``tessYYYYDDDHHMMSS-sSSSS-C-D-0120-s_ffic.fits``.
    hdulist : `~astropy.io.fits.HDUList`
        Primary, calibrated image and uncertainty HDUs.
    """
    flux = np.asarray(flux, dtype=np.float32)
    flux_err = np.asarray(flux_err, dtype=np.float32)
    if flux.shape != FFI_SHAPE or flux_err.shape != FFI_SHAPE:
        raise ValueError(f"FFIs are {FFI_SHAPE}, got {flux.shape} and {flux_err.shape}.")
    start, stop = _utc(tstart), _utc(tstop)
    name = f"tess{stop.strftime('%Y%j%H%M%S')}-s{sector:04d}-{camera}-{ccd}-0120-s_ffic.fits"
    telapse = tstop - tstart
    primary = fits.PrimaryHDU()
    primary.header.extend(
        [
            ("NEXTEND", 2, "number of standard extensions"),
            ("EXTNAME", "PRIMARY", "name of extension"),
            ("EXTVER", 1, "extension version number (not format version)"),
            ("SIMDATA", True, "file is based on simulated data"),
            ("ORIGIN", "NASA/Ames", "institution responsible for creating this file"),
            ("DATE", "2026-01-01", "file creation date."),
            ("TSTART", tstart, "observation start time in TJD"),
            ("TSTOP", tstop, "observation stop time in TJD"),
            ("DATE-OBS", start.isot + "Z", "TSTART as UTC calendar date"),
            ("DATE-END", stop.isot + "Z", "TSTOP as UTC calendar date"),
            ("CREATOR", "lk_scatterlight", "pipeline job and program used to produce this"),
            ("PROCVER", "spoc-test", "SW version"),
            ("FILEVER", "1.0", "file format version"),
            ("TIMVERSN", "OGIP/93-003", "OGIP memo number for file format"),
            ("TELESCOP", "TESS", "telescope"),
            ("INSTRUME", "TESS Photometer", "detector type"),
            ("DATA_REL", 1, "data release version number"),
            ("CAMERA", camera, "Camera number"),
            ("CCD", ccd, "CCD chip number"),
            ("FFIINDEX", ffiindex, "number of FFI cadence interval"),
            ("CRMITEN", True, "spacecraft cosmic ray mitigation enabled"),
            ("CRBLKSZ", 10, "[exposures] s/c cosmic ray mitigation block siz"),
            ("CRSPOC", False, "SPOC cosmic ray cleaning enabled"),
            ("CHECKSUM", "0000000000000000", "HDU checksum (placeholder)"),
        ]
    )
    cards = [
        ("INHERIT", True, "inherit the primary header"),
        ("EXTNAME", f"CAMERA.CCD {camera}.{ccd} cal", "extension name"),
        ("EXTVER", 1, "extension version number (not format version)"),
        ("TELESCOP", "TESS", "telescope"),
        ("INSTRUME", "TESS Photometer", "detector type"),
        ("CAMERA", camera, "Camera number"),
        ("CCD", ccd, "CCD chip number"),
        ("RADESYS", "ICRS", "reference frame of celestial coordinates"),
        ("EQUINOX", 2000.0, "equinox of celestial coordinate system"),
        ("TIMEREF", "SOLARSYSTEM", "barycentric correction applied to times"),
        ("TASSIGN", "SPACECRAFT", "where time is assigned"),
        ("TIMESYS", "TDB", "time system is Barycentric Dynamical Time (TDB)"),
        ("BJDREFI", 2457000, "integer part of BTJD reference date"),
        ("BJDREFF", 0.0, "fraction of the day in BTJD reference date"),
        ("TIMEUNIT", "d", "time unit for TELAPSE, TSTART and TSTOP"),
        ("TELAPSE", telapse, "[d] TSTOP - TSTART"),
        ("LIVETIME", telapse * 0.8, "[d] TELAPSE multiplied by DEADC"),
        ("TSTART", tstart, "observation start time in TJD"),
        ("TSTOP", tstop, "observation stop time in TJD"),
        ("DATE-OBS", start.isot + "Z", "TSTART as UTC calendar date"),
        ("DATE-END", stop.isot + "Z", "TSTOP as UTC calendar date"),
        ("DEADC", 0.8, "deadtime correction"),
        ("TIMEPIXR", 0.0, "bin time beginning=0 middle=0.5 end=1"),
        ("TIERRELA", 1.16e-05, "[d] relative time error"),
        ("INT_TIME", 1.6, "[s] photon accumulation time per frame"),
        ("READTIME", 0.4, "[s] readout time per frame"),
        ("FRAMETIM", 2.0, "[s] frame time (INT_TIME + READTIME)"),
        ("NUM_FRM", int(round(telapse * 86400 / 2.0)), "number of frames per time stamp"),
        ("TIMEDEL", telapse, "[d] time resolution of data"),
        ("BACKAPP", True, "background is subtracted"),
        ("DEADAPP", True, "deadtime applied"),
        ("VIGNAPP", True, "vignetting or collimator correction applied"),
        ("GAINA", 5.2, "[electrons/count] CCD output A gain"),
        ("GAINB", 5.2, "[electrons/count] CCD output B gain"),
        ("GAINC", 5.2, "[electrons/count] CCD output C gain"),
        ("GAIND", 5.2, "[electrons/count] CCD output D gain"),
        ("READNOIA", 9.5, "[electrons] read noise CCD output A"),
        ("READNOIB", 9.5, "[electrons] read noise CCD output B"),
        ("READNOIC", 9.5, "[electrons] read noise CCD output C"),
        ("READNOID", 9.5, "[electrons] read noise CCD output D"),
        ("NREADOUT", 48, "number of read per cadence"),
        ("FXDOFF", 209715200, "compression fixed offset"),
        ("MEANBLCA", 6500, "[count] FSW mean black level CCD output A"),
        ("MEANBLCB", 6500, "[count] FSW mean black level CCD output B"),
        ("MEANBLCC", 6500, "[count] FSW mean black level CCD output C"),
        ("MEANBLCD", 6500, "[count] FSW mean black level CCD output D"),
        ("EXPOSURE", telapse * 0.8, "[d] time on source"),
        ("BARYCORR", barycorr, "[d] barycentric time correction"),
        ("DQUALITY", int(quality), "data quality flags"),
        ("WCSAXES", 2, "number of WCS axes"),
        ("CTYPE1", "RA---TAN", "right ascension coordinate type"),
        ("CTYPE2", "DEC--TAN", "declination coordinate type"),
        ("CRPIX1", 1069.0, "[pixel] reference pixel along image axis 1"),
        ("CRPIX2", 1025.0, "[pixel] reference pixel along image axis 2"),
        ("CRVAL1", 30.0, "[deg] right ascension at reference pixel"),
        ("CRVAL2", -50.0, "[deg] declination at reference pixel"),
        ("CUNIT1", "deg", "physical unit in column dimension"),
        ("CUNIT2", "deg", "physical unit in row dimension"),
        ("CD1_1", -0.0058, "transformation matrix"),
        ("CD1_2", 0.0, "transformation matrix"),
        ("CD2_1", 0.0, "transformation matrix"),
        ("CD2_2", 0.0058, "transformation matrix"),
        ("WCSNAMEP", "PHYSICAL", "name of world coordinate system alternate P"),
        ("WCSAXESP", 2, "number of WCS physical axes"),
        ("CTYPE1P", "RAWX", "physical WCS axis 1 type CCD col"),
        ("CUNIT1P", "PIXEL", "physical WCS axis 1 unit"),
        ("CRPIX1P", 1, "reference CCD column"),
        ("CRVAL1P", 1, "value at reference CCD column"),
        ("CDELT1P", 1.0, "physical WCS axis 1 step"),
        ("CTYPE2P", "RAWY", "physical WCS axis 2 type CCD col"),
        ("CUNIT2P", "PIXEL", "physical WCS axis 2 unit"),
        ("CRPIX2P", 1, "reference CCD row"),
        ("CRVAL2P", 1, "value at reference CCD row"),
        ("CDELT2P", 1.0, "physical WCS axis 2 step"),
    ]
    image = fits.ImageHDU(flux)
    image.header.extend(cards)
    uncert = fits.ImageHDU(flux_err)
    uncert.header.extend(cards)
    uncert.header["EXTNAME"] = f"CAMERA.CCD {camera}.{ccd} uncert"
    return name, fits.HDUList([primary, image, uncert])


def _column_format(value: object) -> tuple[str, object]:
    """Column format and null value, typed the way astrocut types them."""
    if isinstance(value, str):
        return f"{max(len(value), 1)}A", ""
    if isinstance(value, int):  # bool too
        return "J", 0
    return "D", np.nan


def write_mast_cube(
    ffis: Sequence[tuple[str, fits.HDUList]],
    fileobj: str | Path | BinaryIO,
    *,
    sector: int,
) -> None:
    """Write a MAST (astrocut ``CubeFactory``) FFI cube of the given FFIs.

    Parameters
    ----------
    ffis : sequence of (str, `~astropy.io.fits.HDUList`)
        FFI file names and contents as made by `make_ffi`; written in ``TSTART`` order.
    fileobj : str, Path or binary file object
        Where to write the cube.
    sector : int
        ``SECTOR`` keyword of the primary header.
    """
    ffis = sorted(ffis, key=lambda item: item[1][1].header["TSTART"])
    if not ffis:
        raise ValueError("A cube needs at least one FFI.")
    first, last = ffis[0][1], ffis[-1][1]
    template = next((h for _, h in ffis if h[1].header.get("WCSAXES") == 2), first)[1].header

    # Primary header: the first FFI's, as CubeFactory._configure_cube amends it.
    header = first[0].header.copy()
    header.remove("CHECKSUM", ignore_missing=True)
    header["ORIGIN"] = "STScI/MAST"
    header["DATE"] = "2026-01-02"
    for key in ("CAMERA", "CCD"):
        header[key] = (first[1].header[key], first[1].header.comments[key])
    header["SECTOR"] = (sector, "Observing sector")
    for key in ("DATE-END", "TSTOP"):
        header[key] = (last[1].header[key], last[1].header.comments[key])
    header["EXTNAME"] = "PRIMARY"
    primary = fits.PrimaryHDU(header=header)

    # Image HDU: (rows, columns, frames, [flux, error]) big-endian float32.
    nrows, ncols = FFI_SHAPE
    cube = np.empty((nrows, ncols, len(ffis), 2), dtype=">f4")
    for i, (_, hdul) in enumerate(ffis):
        cube[:, :, i, 0] = hdul[1].data
        cube[:, :, i, 1] = hdul[2].data
    image = fits.ImageHDU(cube)

    # Info table: one column per template image-header card, plus FFI_FILE.
    columns, comments, seen = [], {}, set()
    for key, value, comment in template.cards:
        if key in seen or key in ("COMMENT", "HISTORY", ""):
            continue
        seen.add(key)
        fmt, null = _column_format(value)
        values = [h[1].header.get(key, null) for _, h in ffis]
        if fmt == "J":
            values = np.asarray(values, dtype=np.int32)
        elif fmt == "D":
            values = np.asarray(values, dtype=np.float64)
        columns.append(fits.Column(name=key, format=fmt, array=values))
        comments[key] = comment
    names = [name for name, _ in ffis]
    columns.append(fits.Column(name="FFI_FILE", format=f"{len(names[0])}A", array=names))
    table = fits.BinTableHDU.from_columns(columns)
    for key, comment in comments.items():
        if key not in _KEYWORDS_IN_USE:
            table.header[key] = comment

    hdulist = fits.HDUList([primary, image, table])
    # tesscube reads the data at a fixed offset of two header blocks.
    for hdu in hdulist[:2]:
        if len(hdu.header.tostring()) != _BLOCK:
            raise ValueError("The cube's primary and image headers must be one FITS block each.")
    hdulist.writeto(fileobj)


def ffi_bytes(hdulist: fits.HDUList) -> bytes:
    """Serialise an FFI `~astropy.io.fits.HDUList` to the bytes of its FITS file."""
    buffer = io.BytesIO()
    hdulist.writeto(buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def public_bucket(bucket: str = "stpubdata") -> Iterator[tuple[str, object]]:
    """A moto S3 server on 127.0.0.1 with an anonymously readable bucket.

    Yields
    ------
    endpoint : str
        ``http://127.0.0.1:PORT``, for ``AWS_ENDPOINT_URL``.
    client : boto3 S3 client
        With test credentials, to upload objects.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    werkzeug = logging.getLogger("werkzeug")  # one INFO line per request otherwise
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=bucket)
        statement = {
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject"],
            "Resource": [f"arn:aws:s3:::{bucket}/*"],
        }
        policy = {"Version": "2012-10-17", "Statement": [statement]}
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        yield endpoint, client
    finally:
        server.stop()
        werkzeug.setLevel(level)
