"""Synthetic TESS target pixel files (TESSCut-like or SPOC-like) with the injected truth."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from ..ccd import BTJD_OFFSET
from .field import ScatteredLightField, sector_times

__all__ = ["make_tpf", "tpf_from_arrays"]


def _stars(shape, rng, n_field, target_flux):
    """Star images: a target at the centre plus random field stars, Gaussian PSF."""
    nr, nc = shape
    rows = np.concatenate([[(nr - 1) / 2], rng.uniform(-1, nr, n_field)])
    cols = np.concatenate([[(nc - 1) / 2], rng.uniform(-1, nc, n_field)])
    tmag = rng.uniform(11, 16, n_field)
    flux = np.concatenate([[target_flux], 15000 * 10 ** (-0.4 * (tmag - 10))])
    yy, xx = np.mgrid[0:nr, 0:nc]
    sigma = 0.9
    image = np.zeros(shape)
    for r, c, f in zip(rows, cols, flux, strict=True):
        image += (
            f * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
        )
    return image


def make_tpf(
    field: ScatteredLightField,
    row: int,
    column: int,
    shape: tuple[int, int] = (11, 11),
    sector: int = 1,
    camera: int = 1,
    ccd: int = 1,
    time: np.ndarray | None = None,
    kind: str = "tesscut",
    sky: float = 30.0,
    target_flux: float = 15000.0,
    n_field_stars: int = 6,
    seed: int = 0,
    static: np.ndarray | None = None,
    quality: np.ndarray | None = None,
):
    """Cut a synthetic TESS target pixel file from a scattered-light field.

    Parameters
    ----------
    field : `ScatteredLightField` or callable
        ``field(time, rows, columns) -> (ntime, nrow, ncol)`` scattered light [e-/s].
    row, column : int
        1-based CCD position of the lower-left pixel (``tpf.row``, ``tpf.column``).
    shape : (int, int)
        (nrow, ncol) of the cutout.
    sector, camera, ccd : int
    time : array of float, optional
        Cadence mid-times [BTJD]; default the sector's FFI times.
    kind : {"tesscut", "spoc"}
        ``"tesscut"``: background left in FLUX and FLUX_BKG zero, as TESSCut and
        tesscube cutouts. ``"spoc"``: SPOC-like, background (sky + scattered
        light) already subtracted from FLUX and stored in FLUX_BKG.
    sky : float
        Static sky level [e-/s per pixel].
    target_flux : float
        Total flux of the central star [e-/s].
    n_field_stars : int
    seed : int
    static : ndarray, shape ``shape``, optional
        Static scene (stars + sky) [e-/s] to use instead of synthetic stars and
        ``sky``, e.g. a cut of `FFISimulator.static_scene` so the TPF shows the
        same stars as the simulated FFIs.
    quality : array of int, shape (ntime,), optional
        QUALITY flags of the cadences (default 0).

    Returns
    -------
    tpf : `lightkurve.TessTargetPixelFile`
        With the injected scattered light in extension ``SL_TRUTH``,
        shape (ntime, nrow, ncol) [e-/s].
    """

    if kind not in ("tesscut", "spoc"):
        raise ValueError(f"kind must be 'tesscut' or 'spoc', not {kind!r}.")
    rng = np.random.default_rng(seed)
    time = sector_times(sector) if time is None else np.asarray(time, dtype=float)
    nr, nc = shape
    truth = field(time, row + np.arange(nr), column + np.arange(nc))
    if static is None:
        static = _stars(shape, rng, n_field_stars, target_flux) + sky
    elif np.shape(static) != tuple(shape):
        raise ValueError(f"static has shape {np.shape(static)}, expected {tuple(shape)}.")
    exposure = 0.8 * 0.99 * np.median(np.diff(time)) * 86400  # [s] after cosmic-ray mitigation
    total = static[None] + truth
    read_var = (exposure / 2) * 10.0**2  # 2-s frames, 10 e- read noise each
    flux_err = np.sqrt(np.clip(total, 0, None) * exposure + read_var) / exposure
    flux = total + rng.normal(size=total.shape) * flux_err
    background = None
    if kind == "spoc":
        background = sky + truth
        flux = flux - background
    return tpf_from_arrays(
        time, flux, flux_err, row, column, sector, camera, ccd, background, quality, truth
    )


def tpf_from_arrays(
    time: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    row: int,
    column: int,
    sector: int = 1,
    camera: int = 1,
    ccd: int = 1,
    background: np.ndarray | None = None,
    quality: np.ndarray | None = None,
    truth: np.ndarray | None = None,
):
    """A TESS target pixel file with these pixels, in the layout of SPOC and TESSCut files.

    Parameters
    ----------
    time : array of float, shape (ntime,)
        Cadence mid-times [BTJD].
    flux, flux_err : ndarray, shape (ntime, nrow, ncol)
        FLUX and FLUX_ERR [e-/s].
    row, column : int
        1-based CCD position of the lower-left pixel.
    sector, camera, ccd : int
    background : ndarray, shape (ntime, nrow, ncol), optional
        FLUX_BKG, a background already subtracted from ``flux`` (a SPOC-like
        file); None: zero, the background is in FLUX (a TESSCut-like cutout).
    quality : array of int, shape (ntime,), optional
        QUALITY flags (default 0).
    truth : ndarray, shape (ntime, nrow, ncol), optional
        Injected scattered light, stored in extension ``SL_TRUTH``.

    Returns
    -------
    tpf : `lightkurve.TessTargetPixelFile`
    """
    import lightkurve as lk

    time = np.asarray(time, dtype=float)
    ncad, nr, nc = np.shape(flux)
    if background is None:
        background = np.zeros_like(flux)
        creator, origin = "astrocut", "STScI/MAST"
    else:
        creator, origin = "20617 TargetPixelExporterPipelineModule", "NASA/Ames"

    primary = fits.PrimaryHDU()
    for key, value in {
        "ORIGIN": origin,
        "CREATOR": creator,
        "TELESCOP": "TESS",
        "INSTRUME": "TESS Photometer",
        "OBJECT": "Synthetic target",
        "TICID": 0,
        "SECTOR": sector,
        "CAMERA": camera,
        "CCD": ccd,
        "RA_OBJ": 0.0,
        "DEC_OBJ": 0.0,
        "SIMDATA": True,
    }.items():
        primary.header[key] = value
    npx = f"{nr * nc}E"
    dim = f"({nc},{nr})"
    zeros = np.zeros((ncad, nr, nc), dtype=np.float32)
    columns = [
        fits.Column("TIME", "D", unit="BJD - 2457000, days", array=time),
        fits.Column("TIMECORR", "E", unit="d", array=np.zeros(ncad)),
        fits.Column("CADENCENO", "J", array=np.arange(ncad)),
        fits.Column("FLUX", npx, unit="e-/s", dim=dim, array=flux.astype(np.float32)),
        fits.Column("FLUX_ERR", npx, unit="e-/s", dim=dim, array=flux_err.astype(np.float32)),
        fits.Column("FLUX_BKG", npx, unit="e-/s", dim=dim, array=background.astype(np.float32)),
        fits.Column("FLUX_BKG_ERR", npx, unit="e-/s", dim=dim, array=zeros),
        fits.Column("QUALITY", "J", array=np.zeros(ncad, np.int32) if quality is None else quality),
        fits.Column("POS_CORR1", "E", unit="pixel", array=np.zeros(ncad)),
        fits.Column("POS_CORR2", "E", unit="pixel", array=np.zeros(ncad)),
    ]
    pixels = fits.BinTableHDU.from_columns(columns, name="PIXELS")
    step = np.median(np.diff(time))
    for key, value in {
        "1CRV5P": column,
        "2CRV5P": row,
        "1CRV4P": column,
        "2CRV4P": row,
        "TIMEREF": "SOLARSYSTEM",
        "TIMESYS": "TDB",
        "BJDREFI": int(BTJD_OFFSET),
        "BJDREFF": 0.0,
        "TIMEUNIT": "d",
        "TSTART": time[0] - step / 2,
        "TSTOP": time[-1] + step / 2,
        "TIMEDEL": step,
    }.items():
        pixels.header[key] = value
    hdulist = fits.HDUList(
        [primary, pixels, fits.ImageHDU(np.ones((nr, nc), dtype=np.int32), name="APERTURE")]
    )
    if truth is not None:
        truth_hdu = fits.ImageHDU(np.asarray(truth, dtype=np.float32), name="SL_TRUTH")
        truth_hdu.header["BUNIT"] = "electron/s"
        truth_hdu.header["COMMENT"] = "scattered light injected into this synthetic TPF"
        hdulist.append(truth_hdu)
    return lk.TessTargetPixelFile(hdulist)
