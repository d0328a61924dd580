"""SPOC conventions the synthetic FFIs follow: UTC dates of BTJD times and file names."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

__all__ = ["btjd_to_utc", "ffi_filename"]

_TT_MINUS_UTC = 69.184  # [s] 37 leap seconds + 32.184 s; valid since 2017-01-01
_BTJD_EPOCH = datetime(2014, 12, 8, 12, 0, 0)  # JD 2457000.0 (TT; TDB - TT < 2 ms)


def btjd_to_utc(btjd: float) -> datetime:
    """Convert a BTJD time to a UTC calendar date, as SPOC's DATE-OBS cards do.

    Uses the fixed TT - UTC = 69.184 s valid since 2017-01-01 (no leap second
    since) and neglects TDB - TT (< 2 ms). No barycentric correction is undone:
    pass ``btjd - BARYCORR`` for the spacecraft clock.

    Parameters
    ----------
    btjd : float
        BTJD [d] (BJD - 2457000, TDB).

    Returns
    -------
    utc : `datetime.datetime`
        Naive datetime in UTC.
    """
    return _BTJD_EPOCH + timedelta(days=float(btjd), seconds=-_TT_MINUS_UTC)


def ffi_filename(start_utc: datetime, sector: int, camera: int, ccd: int) -> str:
    """SPOC calibrated-FFI file name.

    Parameters
    ----------
    start_utc : `datetime.datetime`
        Start of the exposure in UTC (the primary header's DATE-OBS).
    sector, camera, ccd : int

    Returns
    -------
    name : str
        ``tess{YYYYDDDHHMMSS}-s{sector:04d}-{camera}-{ccd}-0120-s_ffic.fits``, e.g.
        ``tess2018206192942-s0001-1-4-0120-s_ffic.fits``.
    """
    return f"tess{start_utc:%Y%j%H%M%S}-s{sector:04d}-{camera}-{ccd}-0120-s_ffic.fits"


def _barycorr(btjd: float) -> float:
    """Synthetic barycentric correction [d]: a smooth annual term of SPOC's magnitude."""
    return 0.0057 * np.cos(2 * np.pi * (btjd - 1325.3) / 365.25)
