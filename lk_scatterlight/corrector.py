"""`ScatterLightCorrector`: subtract a scattered-light cube from a TESS TPF."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from lightkurve import LightCurve, TessTargetPixelFile
from lightkurve.correctors.corrector import Corrector

from .cube import CubeEvaluation, ScatterLightCube
from .exceptions import (
    CubeNotFoundError,
    OutsideCubeError,
    ScatterLightError,
    ScatterLightWarning,
)
from .fusion import Fusion
from .fusion import fuse as fuse_model

__all__ = [
    "ScatterLightCorrector",
    "QUALITY_NO_MODEL",
    "QUALITY_STRONG_SL",
    "detect_background_in_flux",
]

log = logging.getLogger(__name__)

#: QUALITY bit set on cadences where the scattered-light model is unavailable
#: (data gap or outside the cube). Bit 21 (2**20): outside every lightkurve
#: bitmask, so these cadences are never dropped unless asked for.
QUALITY_NO_MODEL = 2**20
#: QUALITY bit set, per target, on cadences where the scattered light at the TPF
#: is strong (median model over the aperture above ``flag_level`` e-/s per
#: pixel) or its uncertainty is large (the model's error of the aperture sum
#: exceeds the aperture's own photometric error). Bit 22 (2**21), outside every
#: lightkurve bitmask: such cadences are kept unless a user drops them.
QUALITY_STRONG_SL = 2**21
#: Default ``flag_level`` [e-/s per pixel].
DEFAULT_FLAG_LEVEL = 100.0
#: The columns `ScatterLightCorrector.correct_tpf` writes (where the model covers a cadence).
_WRITTEN = ("FLUX_ERR", "FLUX_BKG", "FLUX_BKG_ERR")


def _has_background(tpf: TessTargetPixelFile) -> bool:
    """Whether FLUX_BKG holds a background (any finite, non-zero value)."""
    columns = tpf.hdu[1].columns.names
    if "FLUX_BKG" not in columns:
        return False
    bkg = tpf.hdu[1].data["FLUX_BKG"]
    return bool(np.any(np.isfinite(bkg) & (bkg != 0)))


def _native(column) -> np.ndarray:
    """A C-contiguous copy of a table column in native byte order (FITS stores big-endian)."""
    column = np.asarray(column)
    return np.array(column, dtype=column.dtype.newbyteorder("="), order="C")


#: The attributes of a table column besides its name and format that the header keeps
#: (TUNIT, TNULL, TSCAL, TZERO, TDISP, TBCOL, TDIM, the coordinate and time keywords).
_COLUMN_ATTRIBUTES = (
    "unit",
    "null",
    "bscale",
    "bzero",
    "disp",
    "start",
    "dim",
    "coord_type",
    "coord_unit",
    "coord_ref_point",
    "coord_ref_value",
    "coord_inc",
    "time_ref_pos",
)


def _copy_table(hdu: fits.BinTableHDU) -> fits.BinTableHDU:
    """A copy of a binary table HDU that copies its record array once.

    ``hdu.copy()`` also deep-copies the array of every column, i.e. the table a second
    time. Here the columns are rebuilt from the copied array's dtype and given the
    original's attributes, so the header, the column definitions and the byte order
    come out as ``hdu.copy()`` gives them. A table with a column whose values differ from
    its stored bytes (scaled, logical, text, variable-length) uses ``hdu.copy()``.
    """
    raw = hdu.data.view(np.ndarray)
    if any(hdu.data[name].dtype != raw.dtype[name].base for name in raw.dtype.names):
        return hdu.copy()
    data = raw.copy().view(fits.FITS_rec)  # its columns named, typed and shaped by the dtype
    for old, new in zip(hdu.columns, data.columns, strict=True):
        if new.format != old.format:
            return hdu.copy()
        for attribute in _COLUMN_ATTRIBUTES:
            value = getattr(old, attribute)
            if getattr(new, attribute) != value:
                setattr(new, attribute, value)
    return fits.BinTableHDU(data=data, header=hdu.header.copy())


def _good_cadences(tpf: TessTargetPixelFile, name: str) -> np.ndarray:
    """A table column at the TPF's good-quality cadences, as ``tpf.flux`` etc. give it.

    Without their copy (and byte swap) when every cadence is good: a view of the table.
    """
    column = tpf.hdu[1].data[name]
    mask = tpf.quality_mask
    return column if mask.all() else column[mask]


def _finite_or_zero(column) -> np.ndarray:
    """`_native` with NaN and infinities set to 0 (an absent background)."""
    values = _native(column)
    np.copyto(values, 0, where=~np.isfinite(values))
    return values


def detect_background_in_flux(tpf: TessTargetPixelFile) -> tuple[bool, str]:
    """Whether a TPF's FLUX still contains the sky background, and why we think so.

    TESSCut, astrocut and tesscube cutouts keep the background in FLUX and
    leave FLUX_BKG zero. SPOC target pixel files subtract their own background
    estimate (which includes scattered light) and store it in FLUX_BKG.

    Returns
    -------
    in_flux : bool
    reason : str
    """
    header = tpf.get_header()
    if header.get("SLCORR"):
        return False, "its header says lk_scatterlight already corrected it (SLCORR = T)"
    if _has_background(tpf):
        return False, "FLUX_BKG is not zero: the background was already subtracted (SPOC)"
    origin = f"{header.get('CREATOR', '')} {header.get('ORIGIN', '')}".strip()
    return True, f"FLUX_BKG is zero or absent (a cutout{': ' + origin if origin else ''})"


def _resolve_cube(
    cube, tpf: TessTargetPixelFile, location, max_bytes: float, progress: bool = True
) -> ScatterLightCube:
    """Turn the ``cube`` argument into a `ScatterLightCube`.

    A cube or a path is used as it is; ``"published"`` fetches the published
    cube of the TPF's sector/camera/CCD; ``"build"`` builds (or reuses from the
    cache) a regional cube around the TPF from MAST's FFI cube; None does the
    first, and the second when nothing is published.
    """
    if isinstance(cube, ScatterLightCube):
        return cube
    if isinstance(cube, os.PathLike) or (
        isinstance(cube, str) and cube not in ("published", "build")
    ):
        return ScatterLightCube.read(Path(cube))
    if cube is not None and not isinstance(cube, str):
        raise TypeError(
            "cube must be a ScatterLightCube, a path, 'published', 'build' or None, not "
            f"{type(cube).__name__}."
        )
    if isinstance(location, Exception):
        raise location
    from .ondemand import regional_cube

    if cube == "build":
        return regional_cube(location, max_bytes=max_bytes, progress=progress)
    from .registry import load_cube

    try:
        return load_cube(location.sector, location.camera, location.ccd, progressbar=progress)
    except CubeNotFoundError:
        if cube == "published":
            raise
    return regional_cube(location, max_bytes=max_bytes, progress=progress)


def _tpf_sector(tpf: TessTargetPixelFile) -> int | None:
    sector = tpf.get_header().get("SECTOR")
    return int(sector) if isinstance(sector, int | np.integer) else None


def _check_match(tpf, cube: ScatterLightCube) -> None:
    if not isinstance(tpf, TessTargetPixelFile):
        raise ScatterLightError(
            f"Scattered-light cubes model TESS only; got a {type(tpf).__name__}. "
            "Use lightkurve.TessTargetPixelFile data."
        )
    sector = _tpf_sector(tpf)
    if sector is None:
        warnings.warn(
            f"The TPF has no SECTOR keyword (early TESSCut files); assuming the cube's "
            f"sector {cube.sector}.",
            ScatterLightWarning,
            stacklevel=3,
        )
        sector = cube.sector
    found = (sector, tpf.camera, tpf.ccd)
    expected = (cube.sector, cube.camera, cube.ccd)
    if found != expected:
        msg = (
            "The TPF is from sector {} camera {} CCD {} but the cube is for sector {} camera {} "
            "CCD {}; use the cube of the TPF's own sector/camera/CCD.".format(*found, *expected)
        )
        raise ScatterLightError(msg)


class ScatterLightCorrector(Corrector):
    r"""Remove TESS scattered light from a target pixel file with a scattered-light cube.

    The cube models the time-variable background of the TPF's CCD: Earth and
    Moon light scattered into the camera, which in TESS Full Frame Images rises
    to hundreds of e-/s per pixel near perigee. The model at each TPF pixel and
    cadence is interpolated from the cube (`ScatterLightCube.evaluate`) and
    subtracted:

    .. math::

        F'_{t,p} = F_{t,p} - S_{t,p}, \qquad
        \sigma'^2_{t,p} = \sigma^2_{t,p} + \sigma^2_{S,t,p}

    The light curve is the aperture sum of :math:`F'`; its model error is
    propagated exactly through the interpolation weights
    (`ScatterLightCube.evaluate_sum`), since neighbouring pixels share bins.

    What is subtracted depends on the TPF:

    * TESSCut / astrocut / tesscube cutouts keep the background in FLUX: the
      model is subtracted from FLUX and added to FLUX_BKG.
    * SPOC TPFs already had their background (scattered light included)
      subtracted into FLUX_BKG: nothing is subtracted, a `ScatterLightWarning`
      says so, and the model stays available for comparison. With
      ``replace_background=True`` SPOC's time-variable background is replaced
      by the (fused) model: FLUX becomes ``FLUX + FLUX_BKG - B`` with
      ``B = model + median_t(FLUX_BKG - model)`` per pixel, i.e. the model's
      variation on SPOC's level (the cube models the light above the darkest
      frames, not the static sky), and FLUX_BKG becomes ``B``.
    * TPFs written by `correct_tpf` (header ``SLCORR = T``) are never corrected
      again.

    Override the detection with ``background_in_flux``. The cube removes the
    time-variable light above the darkest frames, not the static sky level.

    Cadences the model does not cover (data gaps, outside the cube) are set to
    NaN in the corrected light curve and TPF and flagged with
    `QUALITY_NO_MODEL` in QUALITY; the model is never extrapolated in time.

    Parameters
    ----------
    tpf : `lightkurve.TessTargetPixelFile`
        A TESS TPF on the cube's sector, camera and CCD.
    cube : `ScatterLightCube`, path-like, "published", "build" or None
        The cube or a path to one; ``"published"``: the published cube of the
        TPF's sector/camera/CCD (registry); ``"build"``: a regional cube built
        around the TPF from MAST's FFI cube on AWS, once, then kept in the
        cache (`lk_scatterlight.ondemand.regional_cube`); None (default): the
        published cube if there is one, else the regional cube.
    aperture_mask : array-like, 'pipeline', 'threshold', 'default' or 'all'
        Aperture of the light curve, as in ``tpf.to_lightcurve``.
    background_in_flux : bool, optional
        Whether FLUX still contains the background; detected when None
        (see `detect_background_in_flux`).
    max_bytes : float
        Download budget of a regional cube [bytes] (sparse rows above it).
    flag_level : float
        Median model scattered light over the aperture [e-/s per pixel] above
        which a cadence gets `QUALITY_STRONG_SL`.
    fuse : bool
        Combine the model with the TPF's own faint pixels by their
        uncertainties (`lk_scatterlight.fusion`): a per-cadence level that
        corrects what the model misses at this TPF. On by default; for a SPOC
        TPF the pixels are taken with their background restored (FLUX +
        FLUX_BKG). A TPF with too few background pixels uses the model alone
        (a warning says so). ``fusion`` holds the result.
    replace_background : bool
        For a SPOC TPF (background in FLUX_BKG): replace SPOC's time-variable
        background by the model's (see above) instead of leaving FLUX as it is.
    progress : bool
        Show progress bars while a cube is downloaded or built (tqdm, on stderr).
    model : `~lk_scatterlight.model.ScatterLightModel`, str or path-like, optional
        Use the learned geometry model (``"default"``, the name of a published
        model, a model file or a loaded model) instead of a cube, calibrated on
        the TPF's own background pixels (`~lk_scatterlight.model.ModelBackground`).

    Examples
    --------
    >>> import lightkurve as lk  # doctest: +SKIP
    >>> import lk_scatterlight  # doctest: +SKIP
    >>> tpf = lk.read("tess-s0001-4-3_107.27_-70.0_5x5_astrocut.fits")  # doctest: +SKIP
    >>> corrector = tpf.to_corrector("scatterlight", cube="cube_s0001_4-3.fits")  # doctest: +SKIP
    >>> lc = corrector.correct()  # doctest: +SKIP
    >>> corrector.diagnose()  # doctest: +SKIP
    """

    def __init__(
        self,
        tpf: TessTargetPixelFile,
        cube: ScatterLightCube | str | os.PathLike | None = None,
        aperture_mask="default",
        background_in_flux: bool | None = None,
        max_bytes: float = 200e6,
        flag_level: float = DEFAULT_FLAG_LEVEL,
        fuse: bool = True,
        model=None,
        replace_background: bool = False,
        progress: bool = True,
    ) -> None:
        if not isinstance(tpf, TessTargetPixelFile):
            _check_match(tpf, None)  # raises the "TESS only" error
        from .ondemand import locate_tpf

        self.tpf = tpf
        self.flag_level = float(flag_level)
        try:
            self.location = locate_tpf(tpf)
        except (ScatterLightError, ValueError) as err:
            self.location = None
            location = ScatterLightError(str(err))
        else:
            location = self.location
        if model is not None:  # the learned model, calibrated on this TPF, stands in for a cube
            from .model import ModelBackground

            if cube is not None:
                msg = "Pass either cube= or model=, not both."
                raise ScatterLightError(msg)
            self.cube = ModelBackground(model, tpf)
        else:
            self.cube = _resolve_cube(cube, tpf, location, max_bytes, progress)
        _check_match(tpf, self.cube)
        if tpf.get_header().get("SLCORR") and background_in_flux:
            msg = (
                "This TPF was already corrected by lk_scatterlight (SLCORR = T); "
                "correcting it again would subtract the scattered light twice."
            )
            raise ScatterLightError(msg)
        detected, reason = detect_background_in_flux(tpf)
        self.background_in_flux = detected if background_in_flux is None else background_in_flux
        self.background_reason = reason if background_in_flux is None else "set by the caller"
        #: Whether FLUX_BKG holds a background that was subtracted from FLUX (SPOC): what
        #: the detection found unless the file says lk_scatterlight corrected it.
        self.spoc_background = not tpf.get_header().get("SLCORR") and not detected
        self.replace_background = bool(replace_background)
        if self.replace_background and (self.background_in_flux or not self.spoc_background):
            msg = (
                "replace_background=True replaces a SPOC background (FLUX_BKG), but this TPF "
                f"has none to replace ({reason}); correct it without replace_background."
            )
            raise ScatterLightError(msg)
        self.aperture_mask = tpf._parse_aperture_mask(aperture_mask)
        row, column = tpf.row, tpf.column
        if self.location is not None and "tesswcs" in self.location.how:
            # The TPF's pixel keywords are off the CCD (some TESSCut files): use its
            # position from RA/Dec.
            row, column = self.location.region.row, self.location.region.column
        self.rows = row + np.arange(tpf.shape[1])
        self.columns = column + np.arange(tpf.shape[2])
        self.model: CubeEvaluation | None = None
        self.model_lc: LightCurve | None = None
        self.fuse = bool(fuse) and (self.background_in_flux or self.spoc_background)
        self.fusion: Fusion | None = None  # of the light curve's cadences (`correct`)
        self.fusion_tpf: Fusion | None = None  # of every cadence of the file (`correct_tpf`)
        super().__init__(tpf.to_lightcurve(aperture_mask=self.aperture_mask))

    # ------------------------------------------------------------------ model
    def _evaluate(self) -> CubeEvaluation:
        """The model on the TPF's pixels and good cadences (cached)."""
        if self.model is None:
            model = self.cube.evaluate(self.tpf.time, self.rows, self.columns, bounds="nan")
            if not model.valid.any():
                raise OutsideCubeError(
                    f"None of the TPF's {model.valid.size} cadences (BTJD "
                    f"{self.tpf.time.value.min():.3f}..{self.tpf.time.value.max():.3f}) is "
                    f"covered by the cube ({self.cube!r})."
                )
            self.model = model
        return self.model

    def _fuse(
        self, time, flux, flux_err, valid, model, model_var=None, flux_var=None
    ) -> Fusion | None:
        """Fuse the model with the TPF's faint pixels (None without fusion).

        ``flux`` is the TPF's flux (background in it), ``valid`` the cadences the model
        covers, ``model`` the model and ``model_var`` its quoted variance per pixel;
        ``flux_var`` is ``flux_err**2`` where the caller has it.
        """
        if not self.fuse:
            return None
        step = np.nanmedian(np.diff(time)) if np.size(time) > 1 else np.nan
        window = 1  # a model without time planes (the learned model) resolves every cadence
        if isinstance(self.cube, ScatterLightCube) and np.isfinite(step) and step > 0:
            width = self.cube.plane_width
            window = max(1, int(round(width / step)))
        fusion = fuse_model(
            flux,
            flux_err,
            self.aperture_mask,
            valid=valid,
            window=window,
            model_var=model_var,
            model=model,
            flux_var=flux_var,
        )
        if fusion is None:
            warnings.warn(
                "The TPF has too few background pixels outside the aperture to check the "
                "model against; the scattered-light model is used alone.",
                ScatterLightWarning,
                stacklevel=3,
            )
            self.fuse = False
        return fusion

    # ------------------------------------------------------------------ correct
    def correct(self, cadence_mask=None) -> LightCurve:
        """Subtract the scattered-light model from the aperture light curve.

        Parameters
        ----------
        cadence_mask : array of bool, optional
            Cadences to correct; the others are returned unchanged. Default:
            every cadence the model covers.

        Returns
        -------
        corrected_lc : `lightkurve.LightCurve`
            Same class and units as ``original_lc``; NaN and flagged with
            `QUALITY_NO_MODEL` where the model is unavailable.
        """
        model = self._evaluate()
        total = self.cube.evaluate_sum(
            self.tpf.time, self.rows, self.columns, self.aperture_mask, bounds="nan"
        )
        original = self.original_lc
        unit = original.flux.unit
        model_flux = total.flux.to(unit)
        model_err = total.flux_err.to(unit)
        if self.fuse:
            flux = _good_cadences(self.tpf, "FLUX")
            if self.spoc_background:  # the pixels as observed, background restored
                flux = flux + np.nan_to_num(_good_cadences(self.tpf, "FLUX_BKG"))
            self.fusion = self._fuse(
                _good_cadences(self.tpf, "TIME"),
                flux,
                _good_cadences(self.tpf, "FLUX_ERR"),
                model.valid,
                model.flux.value,
                np.square(model.flux_err.value),
            )
        if self.fusion is not None:
            ap = self.aperture_mask
            model_err = np.sqrt(self.fusion.variance(model_err.value**2, aperture=ap)) * unit
            model_flux = model_flux + self.fusion.aperture_correction(ap) * unit
        self.model_lc = LightCurve(
            time=original.time, flux=model_flux, flux_err=model_err, meta={"LABEL": "SL model"}
        )
        valid = model.valid
        if cadence_mask is None:
            cadence_mask = valid
        cadence_mask = np.asarray(cadence_mask, dtype=bool)
        self.cadence_mask = cadence_mask & valid
        if valid.sum() < valid.size:
            warnings.warn(
                f"{(~valid).sum()} of {valid.size} cadences are not covered by the cube (gap "
                f"or outside BTJD {self.cube.btjd[0]:.3f}..{self.cube.btjd[-1]:.3f}); they are "
                f"NaN and flagged with QUALITY bit {QUALITY_NO_MODEL}.",
                ScatterLightWarning,
                stacklevel=2,
            )
        corrected = original.copy()
        if self.background_in_flux:
            use = cadence_mask & valid
            flux = original.flux.copy()
            err = original.flux_err.copy()
            flux[use] = flux[use] - model_flux[use]
            err[use] = np.hypot(err[use], model_err[use])
            corrected.flux, corrected.flux_err = flux, err
        elif self.replace_background:
            corrected.flux, corrected.flux_err = self._replaced_lc(
                original, model_flux, model_err, cadence_mask & valid
            )
        else:
            warnings.warn(
                f"Not subtracting scattered light: {self.background_reason}. Pass "
                "background_in_flux=True to subtract anyway, or replace_background=True to "
                "replace SPOC's time-variable background by the model's.",
                ScatterLightWarning,
                stacklevel=2,
            )
        corrected.flux[~valid] = np.nan
        corrected.flux_err[~valid] = np.nan
        strong = self._strong(model, total, original.flux_err.to_value(unit))
        corrected["quality"] = (
            np.asarray(original["quality"])
            | np.where(valid, 0, QUALITY_NO_MODEL)
            | np.where(strong, QUALITY_STRONG_SL, 0)
        )
        corrected.meta["SLCORR"] = bool(self.background_in_flux or self.replace_background)
        self.corrected_lc = corrected
        return corrected

    def _strong(self, model: CubeEvaluation, total: CubeEvaluation, aperture_err) -> np.ndarray:
        """Cadences with strong scattered light or a large model error (`QUALITY_STRONG_SL`)."""
        level = np.full(model.valid.size, np.nan)
        level[model.valid] = np.median(model.flux.value[model.valid][:, self.aperture_mask], axis=1)
        with np.errstate(invalid="ignore"):
            strong = level > self.flag_level
            strong |= total.flux_err.value > np.asarray(aperture_err, dtype=float)
        return strong & model.valid

    def _replaced_lc(self, original, model_flux, model_err, use):
        """The light curve with SPOC's background replaced (``replace_background``)."""
        unit = original.flux.unit
        ap = self.aperture_mask
        bkg = np.nansum(self.tpf.flux_bkg.value[:, ap], axis=1) * unit
        bkg_var = np.nansum(self.tpf.flux_bkg_err.value[:, ap] ** 2, axis=1) * unit**2
        # SPOC's level under the model's variation (the model has no static sky).
        level = np.nanmedian((bkg - model_flux)[use].value) * unit
        flux, err = original.flux.copy(), original.flux_err.copy()
        flux[use] = flux[use] + bkg[use] - (model_flux[use] + level)
        raw_var = np.clip(err[use] ** 2 - bkg_var[use], 0, None)  # without SPOC's bkg error
        err[use] = np.sqrt(raw_var + model_err[use] ** 2)
        return flux, err

    def correct_tpf(self) -> TessTargetPixelFile:
        """A copy of the TPF with the scattered-light model subtracted from FLUX.

        FLUX is reduced by the model, FLUX_BKG increased by it, FLUX_ERR and
        FLUX_BKG_ERR get the model error in quadrature. With
        ``replace_background`` (a SPOC TPF), SPOC's background is replaced: FLUX
        becomes ``FLUX + FLUX_BKG - B``, FLUX_BKG becomes ``B`` (the model on
        SPOC's level, see the class docstring), FLUX_ERR loses FLUX_BKG_ERR and
        gains the model's error, and FLUX_BKG_ERR becomes the model's. Every cadence of the
        file is processed (also those the TPF's quality mask hides); cadences
        the model does not cover are NaN in FLUX and flagged with
        `QUALITY_NO_MODEL`. The header records ``SLCORR = T`` and the cube used,
        so the result is never corrected twice.

        Returns
        -------
        tpf : `lightkurve.TessTargetPixelFile`
        """
        if not (self.background_in_flux or self.replace_background):
            raise ScatterLightError(
                f"Nothing to subtract: {self.background_reason}. Pass "
                "background_in_flux=True to the corrector to subtract anyway, or "
                "replace_background=True to replace SPOC's time-variable background."
            )
        hdulist = fits.HDUList(
            [_copy_table(h) if isinstance(h, fits.BinTableHDU) else h.copy() for h in self.tpf.hdu]
        )
        table = hdulist[1].data
        time = np.asarray(table["TIME"], dtype=float)
        finite = np.isfinite(time)
        model = self.cube.evaluate(time[finite], self.rows, self.columns, bounds="nan")
        model_flux = model.flux.to_value(u.electron / u.s)
        model_var = np.square(model.flux_err.to_value(u.electron / u.s))
        flux, flux_err = _native(table["FLUX"]), _native(table["FLUX_ERR"])
        if self.replace_background:  # the pixels as observed: SPOC's background restored
            spoc_bkg = _finite_or_zero(table["FLUX_BKG"])
            flux += spoc_bkg
        finite_rows = slice(None) if finite.all() else finite
        flux_var = np.square(flux_err[finite_rows])  # FLUX_ERR's below; fuse() reads it too
        fusion = None
        if self.fuse:  # on what the model leaves in FLUX
            fusion = self._fuse(
                time[finite_rows],
                flux[finite_rows],
                flux_err[finite_rows],
                model.valid,
                model_flux,  # fuse() reads them before add_to() and variance() change them
                model_var,
                flux_var,
            )
        self.fusion_tpf = fusion
        changed = fusion.changed() if fusion is not None else np.empty(0, dtype=int)
        if changed.size:  # the cadences whose model and errors the fusion changes
            fusion.add_to(model_flux)  # a fresh array
            # In place (cadences the fusion does not change are not touched); quoted_sum,
            # of this model_var, spares searching rows for their largest value.
            fusion.variance(model_var, out=model_var, row_sums=fusion.quoted_sum)
        ok = np.zeros(time.size, dtype=bool)  # the file's cadences the model covers
        ok[finite] = model.valid
        # Whole arrays, not the covered cadences: copies by a boolean mask cost more than
        # the passes themselves. The cadences the model does not cover get a zero model
        # and have their values put back (FLUX becomes NaN).
        uncovered = np.flatnonzero(~ok)
        names = [name for name in _WRITTEN if name in table.columns.names]
        kept = {name: table[name][uncovered].copy() for name in names}
        if self.replace_background:
            # SPOC's level under the model's variation, per pixel (the model has no static
            # sky), over the covered cadences (the model is NaN on the others).
            level = np.nanmedian(spoc_bkg[finite_rows] - model_flux, axis=0)
        missing = np.flatnonzero(~model.valid)
        model_flux[missing], model_var[missing] = 0.0, 0.0
        strong_level = np.zeros(time.size)  # the scattered light itself (`QUALITY_STRONG_SL`)
        strong_level[finite] = np.median(model_flux[:, self.aperture_mask], axis=1)
        rows = finite_rows
        if self.replace_background:
            model_flux += level
            flux_var -= np.square(_finite_or_zero(table["FLUX_BKG_ERR"][rows]))  # SPOC's bkg
            np.maximum(flux_var, 0, out=flux_var)
        table["FLUX"][rows] = flux[rows] - model_flux
        flux_var += model_var
        table["FLUX_ERR"][rows] = np.sqrt(flux_var, out=flux_var)
        if self.replace_background:
            table["FLUX_BKG"][rows] = model_flux
            table["FLUX_BKG_ERR"][rows] = np.sqrt(model_var)
        else:
            if "FLUX_BKG" in table.columns.names:
                table["FLUX_BKG"][rows] = _finite_or_zero(table["FLUX_BKG"][rows]) + model_flux
            if "FLUX_BKG_ERR" in table.columns.names:
                bkg_var = np.square(_finite_or_zero(table["FLUX_BKG_ERR"][rows]))
                bkg_var += model_var
                table["FLUX_BKG_ERR"][rows] = np.sqrt(bkg_var, out=bkg_var)
        for name, values in kept.items():
            table[name][uncovered] = values
        table["FLUX"][uncovered] = np.nan
        table["QUALITY"][~ok] |= QUALITY_NO_MODEL
        table["QUALITY"][ok & (strong_level > self.flag_level)] |= QUALITY_STRONG_SL
        from . import __version__

        header = hdulist[0].header
        header["SLCORR"] = (True, "scattered light subtracted by lk_scatterlight")
        header["SLVER"] = (__version__, "lk_scatterlight version")
        header["SLFUSED"] = (fusion is not None, "model fused with the TPF's faint pixels")
        header["SLREPL"] = (self.replace_background, "SPOC's background replaced by the model")
        header["SLCUBE"] = (
            f"s{self.cube.sector:04d}-{self.cube.camera}-{self.cube.ccd} "
            f"bin{self.cube.pixel_bin:g}",
            "scattered-light cube used",
        )
        return TessTargetPixelFile(hdulist, quality_bitmask=self.tpf.quality_bitmask)

    # ------------------------------------------------------------------ diagnostics
    def _require_correct(self, what: str) -> None:
        if self.model_lc is None:
            raise ScatterLightError(f"Call `correct()` before `{what}()`.")

    def diagnose(self, ax=None):
        """Plot the original, corrected and model light curves of the last `correct()`.

        With fusion (`fusion`), a third panel shows per cadence the local
        estimate of what the model missed (from the TPF's faint pixels) with its
        error, the model's error of the level, and the fused offset that was
        applied, coloured by its weight: which one drove each cadence.

        Parameters
        ----------
        ax : array of two (three with fusion) `matplotlib.axes.Axes`, optional

        Returns
        -------
        axes : array of `matplotlib.axes.Axes`
            Original and corrected light curves; the aperture-summed model; the fusion.
        """
        self._require_correct("diagnose")
        from . import plotting

        return plotting.plot_correction(
            self.original_lc,
            self.corrected_lc,
            self.model_lc,
            ax=ax,
            fusion=self.fusion,
            aperture=self.aperture_mask,
        )

    def diagnose_model(self, frame: int = 0, ax=None):
        """Show the TPF, the model and the residual image at one cadence.

        Parameters
        ----------
        frame : int
            Index of the cadence (in ``tpf.time``).
        ax : array of three `matplotlib.axes.Axes`, optional

        Returns
        -------
        axes : array of three `matplotlib.axes.Axes`
        """
        model = self._evaluate()
        from . import plotting

        return plotting.plot_model_images(
            self.tpf.flux[frame].value,
            model.flux[frame].value,
            time=self.tpf.time.value[frame],
            ax=ax,
        )
