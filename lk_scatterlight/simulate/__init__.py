"""Synthetic TESS scattered light with known truth.

`ScatteredLightField` is an analytic model of the time-variable background of
one CCD over one sector, with the structure real Full Frame Images show:

* an Earth glow strongest near perigee (the start and end of each ~13.7-day
  orbit) that decays over a day or so, with a daily ripple (Earth rotation);
* a glow front that sweeps across the CCD as the Earth angle changes;
* a Moon glow that drifts across the CCD;
* optionally (``structured=True``) fine structure that smooth models blur: a
  narrow glint ridge (~12 px wide) and a sharp baffle shadow edge (~6 px wide).

`make_cube` samples a field on a bin grid as a `ScatterLightCube`, and
`make_tpf` cuts a TESSCut-like or SPOC-like target pixel file (stars + static
sky + scattered light + noise) from the same field, with the injected
scattered light stored in an extra ``SL_TRUTH`` extension. `FFISimulator`
makes full-size SPOC-like calibrated FFIs (stars with saturation and bleed
columns, strap columns, collateral pixels, noise, quality-flagged defects) from
a field, with the injected scattered light available as truth. Everything is
deterministic for a given seed.

The package's modules: `lk_scatterlight.simulate.field` (the field, sector
times, cubes), `lk_scatterlight.simulate.tpf` (target pixel files),
`lk_scatterlight.simulate.ffi` (`FFISimulator`) with
`lk_scatterlight.simulate.render` (stars, bleed, smear) and
`lk_scatterlight.simulate.spoc` (SPOC file names and dates). Their public
names are re-exported here.
"""

from __future__ import annotations

from ..utils import moved_names
from .ffi import DEFECT_FLAGS as DEFECT_FLAGS
from .ffi import FFI_SHAPE, SATURATION, FFISimulator
from .ffi import SCIENCE_SLICES as SCIENCE_SLICES
from .ffi import STRAYLIGHT_FLAG as STRAYLIGHT_FLAG
from .ffi import TMAG_ZEROPOINT_FLUX as TMAG_ZEROPOINT_FLUX
from .field import ORBIT_DAYS as ORBIT_DAYS
from .field import ScatteredLightField, make_cube, sector_times
from .render import PSF_CORE_SIGMA as PSF_CORE_SIGMA
from .render import PSF_WING_FRACTION as PSF_WING_FRACTION
from .render import PSF_WING_SIGMA as PSF_WING_SIGMA
from .render import _bleed as _bleed
from .render import _render_stars as _render_stars
from .spoc import btjd_to_utc, ffi_filename
from .tpf import make_tpf, tpf_from_arrays

# The aliased imports above (``X as X``) are names of the module before its split
# that other modules, tests and benchmarks still import from here, outside `__all__`.

__all__ = [
    "ScatteredLightField",
    "sector_times",
    "make_cube",
    "make_tpf",
    "tpf_from_arrays",
    "FFISimulator",
    "FFI_SHAPE",
    "SATURATION",
    "btjd_to_utc",
    "ffi_filename",
]

#: Private names that moved with the split of this module into a package, and
#: names it only imported: old -> new home.
__getattr__ = moved_names(
    __name__,
    {
        "_SECTOR1_START": "lk_scatterlight.simulate.field._SECTOR1_START",
        "_SECTOR_DAYS": "lk_scatterlight.simulate.field._SECTOR_DAYS",
        "_stars": "lk_scatterlight.simulate.tpf._stars",
        "_TT_MINUS_UTC": "lk_scatterlight.simulate.spoc._TT_MINUS_UTC",
        "_BTJD_EPOCH": "lk_scatterlight.simulate.spoc._BTJD_EPOCH",
        "_barycorr": "lk_scatterlight.simulate.spoc._barycorr",
        "_STAMP_RADII": "lk_scatterlight.simulate.render._STAMP_RADII",
        "_PSF_FLOOR": "lk_scatterlight.simulate.render._PSF_FLOOR",
        "_STAR_MARGIN": "lk_scatterlight.simulate.render._STAR_MARGIN",
        "_pixel_gauss": "lk_scatterlight.simulate.render._pixel_gauss",
        "_spill": "lk_scatterlight.simulate.render._spill",
        "_smear_shift": "lk_scatterlight.simulate.render._smear_shift",
        "_INT_TIME": "lk_scatterlight.simulate.ffi._INT_TIME",
        "_READ_TIME": "lk_scatterlight.simulate.ffi._READ_TIME",
        "_CR_KEEP": "lk_scatterlight.simulate.ffi._CR_KEEP",
        "_DEADC": "lk_scatterlight.simulate.ffi._DEADC",
        "_SMEAR_PAD": "lk_scatterlight.simulate.ffi._SMEAR_PAD",
        "_SCIENCE_ROW_COORDS": "lk_scatterlight.simulate.ffi._SCIENCE_ROW_COORDS",
        "_SCIENCE_COLUMN_COORDS": "lk_scatterlight.simulate.ffi._SCIENCE_COLUMN_COORDS",
        "_LOCK_TYPES": "lk_scatterlight.simulate.ffi._LOCK_TYPES",
        "_restore_simulator": "lk_scatterlight.simulate.ffi._restore_simulator",
        "BTJD_OFFSET": "lk_scatterlight.ccd.BTJD_OFFSET",
        "N_SCIENCE": "lk_scatterlight.ccd.N_SCIENCE",
        "SCIENCE_COLUMNS": "lk_scatterlight.ccd.SCIENCE_COLUMNS",
        "SCIENCE_ROWS": "lk_scatterlight.ccd.SCIENCE_ROWS",
        "SCIENCE_SLICE": "lk_scatterlight.ccd.SCIENCE_SLICE",
        "Region": "lk_scatterlight.ccd.Region",
        "ffi_cadence_seconds": "lk_scatterlight.ccd.ffi_cadence_seconds",
        "ScatterLightCube": "lk_scatterlight.cube.ScatterLightCube",
        "atomic_write": "lk_scatterlight.utils.atomic_write",
        "refuse_overwrite": "lk_scatterlight.utils.refuse_overwrite",
    },
)
