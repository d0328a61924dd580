"""Small cubes, bin centres and file edits shared by the cube tests.

Not a test module; `test_cube.py`, `test_compact.py`, `test_finelayer.py`,
`test_interpolate.py`, `test_binning.py` and `registry_helpers.py` use it.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

from lk_scatterlight import ScatterLightCube

#: Bin size [px] of the small test cubes.
BIN = 16


def centres(n: int, first: float, step: float = BIN) -> np.ndarray:
    """``n`` uniformly spaced bin centres, ``first``, ``first + step``, ..."""
    return first + step * np.arange(n)


def make_cube(
    nt: int = 6,
    nrow: int = 5,
    ncol: int = 4,
    dt: float = 0.02,
    t0: float = 1500.0,
    seed: int = 0,
    *,
    sector: int = 2,
    camera: int = 1,
    ccd: int = 1,
    bin: int = BIN,
    time=None,
    **kwargs,
) -> ScatterLightCube:
    """A small cube of ``nrow`` x ``ncol`` bins of ``bin`` pixels near the CCD corner.

    Bin centres start at row ``(bin + 1) / 2`` and column ``44 + (bin + 1) / 2``
    (8.5 and 52.5 for 16-px bins). The planes are at ``time``, or every ``dt``
    days from ``t0``. ``flux`` and ``flux_err`` default to uniform random values
    (10-20 and 0.1-0.5 e-/s, float32, from ``seed``); other keyword arguments go
    to `ScatterLightCube.from_arrays`.
    """
    if time is None:
        time = t0 + dt * np.arange(nt)
    else:
        nt = len(time)
    if "flux" not in kwargs or "flux_err" not in kwargs:
        rng = np.random.default_rng(seed)
        shape = (nt, nrow, ncol)
        flux = rng.uniform(10, 20, shape).astype(np.float32)
        flux_err = rng.uniform(0.1, 0.5, shape).astype(np.float32)
        kwargs.setdefault("flux", flux)
        kwargs.setdefault("flux_err", flux_err)
    first = (bin + 1) / 2
    return ScatterLightCube.from_arrays(
        sector,
        camera,
        ccd,
        time,
        centres(nrow, first, bin),
        centres(ncol, 44 + first, bin),
        **kwargs,
    )


def copy_of(cube: ScatterLightCube, **changes) -> ScatterLightCube:
    """A dense copy of ``cube`` through `ScatterLightCube.from_arrays`.

    Keeps the planes, their extents and the strap columns and responses; ``changes``
    replace these or add other `~ScatterLightCube.from_arrays` arguments (``npix``
    and ``meta`` are not copied unless passed). A compact cube comes back
    reconstructed.
    """
    arrays = dict(
        time_start=cube.time_start,
        time_stop=cube.time_stop,
        strap_column=cube.strap_column,
        strap_response=cube.strap_response,
    )
    arrays.update(changes)
    return ScatterLightCube.from_arrays(
        cube.sector,
        cube.camera,
        cube.ccd,
        cube.btjd,
        cube.row,
        cube.column,
        arrays.pop("flux", cube.flux),
        arrays.pop("flux_err", cube.flux_err),
        **arrays,
    )


def edited(src: Path, dst: Path, edit: Callable[[fits.HDUList], object]) -> Path:
    """Copy the FITS file ``src`` to ``dst`` after ``edit(hdul)``; returns ``dst``."""
    with fits.open(src) as hdul:
        edit(hdul)
        hdul.writeto(dst)
    return dst


def peak_memory(function: Callable[[], object]) -> tuple[object, int]:
    """``function()`` and the peak of the memory traced while it ran [bytes]."""
    tracemalloc.start()
    try:
        result = function()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak
