"""`FFISimulator`: full-size SPOC-like calibrated FFIs with known scattered light."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.io import fits

from .. import ccd as _ccd
from ..ccd import (
    BTJD_OFFSET,
    N_SCIENCE,
    SCIENCE_COLUMNS,
    SCIENCE_ROWS,
    SCIENCE_SLICE,
    Region,
    ffi_cadence_seconds,
)
from ..utils import atomic_write, refuse_overwrite
from .field import _SECTOR1_START, _SECTOR_DAYS, ScatteredLightField, sector_times
from .render import _STAR_MARGIN, _bleed, _render_stars, _smear_shift
from .spoc import _barycorr, btjd_to_utc, ffi_filename

__all__ = [
    "FFISimulator",
    "FFI_SHAPE",
    "SCIENCE_SLICES",
    "SATURATION",
    "DEFECT_FLAGS",
    "STRAYLIGHT_FLAG",
    "TMAG_ZEROPOINT_FLUX",
]

log = logging.getLogger(__name__)

#: Shape (rows, columns) of a full SPOC FFI image, collateral pixels included.
FFI_SHAPE = _ccd.FFI_SHAPE
#: 0-based (row, column) slices of the science pixels in a full FFI array.
SCIENCE_SLICES = SCIENCE_SLICE
#: Saturation (full-well) level of the simulated CCD [e-/s per pixel]. A chosen value of
#: the order of the TESS full well (a few 1e5 e- per 2-s frame); charge above it bleeds
#: up and down the column.
SATURATION = 1.5e5
#: Defect kinds of `FFISimulator` and the SPOC DQUALITY bit each one sets:
#: momentum dump (Desat, 32), coarse point (CoarsePoint, 4), Argabrightening glint (16).
DEFECT_FLAGS = {"desat": 32, "coarse": 4, "glint": 16}
#: SPOC DQUALITY bit for scattered light from the Earth or Moon (Straylight).
STRAYLIGHT_FLAG = 2048
#: TESS magnitude zero point: a Tmag 10 star gives 15000 e-/s.
TMAG_ZEROPOINT_FLUX = 15000.0

_INT_TIME, _READ_TIME = 1.98, 0.02  # [s] photon integration and readout per 2-s frame
_CR_KEEP = 0.8  # on-board cosmic-ray mitigation keeps 8 of every 10 frames
_DEADC = _CR_KEEP * _INT_TIME / (_INT_TIME + _READ_TIME)  # 0.792, as in SPOC headers
_SMEAR_PAD = 4  # [px] margin around a region when smearing its stars (shifts <= 2 px)
_SCIENCE_ROW_COORDS = np.arange(SCIENCE_ROWS[0], SCIENCE_ROWS[1] + 1, dtype=float)  # 1-based
_SCIENCE_COLUMN_COORDS = np.arange(SCIENCE_COLUMNS[0], SCIENCE_COLUMNS[1] + 1, dtype=float)


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


def _restore_simulator(cls: type, state: dict, locks: list[str]) -> FFISimulator:
    """Unpickle an `FFISimulator` (see ``FFISimulator.__reduce__``) with new locks."""
    simulator = cls.__new__(cls)
    simulator.__dict__.update(state)
    for name in locks:
        setattr(simulator, name, threading.Lock())
    return simulator


class FFISimulator:
    """Synthetic TESS calibrated Full Frame Images with known scattered light.

    Each frame is a full 2078 x 2136 SPOC-like calibrated image [e-/s] of one
    sector/camera/CCD: the science pixels (0-based array rows 0:2048, columns
    44:2092; 1-based CCD rows 1..2048, columns 45..2092) hold

    ``stars + sky * strap + SL(t) * strap + noise``

    where

    * **stars**: ``n_stars`` stars with TESS magnitudes 6..17 whose number rises
      x3 per magnitude, flux ``15000 * 10**(-0.4 * (Tmag - 10))`` e-/s, plus
      ``n_saturated`` stars of Tmag 2.5..4.5. The PSF is a pixel-integrated sum of
      two Gaussians (core sigma 0.9 px, wing sigma 3 px with 20 % of the flux).
      Charge above `SATURATION` (1.5e5 e-/s) bleeds up and down the column,
      conserving charge; those pixels stay at the saturation level in every frame.
    * **sky**: a static level ``sky`` [e-/s].
    * **SL(t)**: the scattered light of ``field`` (`ScatteredLightField`)
      evaluated exactly at every pixel centre.
    * **strap**: the CCD strap columns (`lk_scatterlight.straps`,
      TESS Instrument Handbook Table A.3) respond more to diffuse light: each
      strap (two adjacent columns) gets a factor drawn uniformly from
      ``strap_factor`` (default 1.03..1.05), deterministic with ``seed``.
      Stars are not affected.
    * **noise**: Gaussian approximation of Poisson noise plus read noise
      (``NREADOUT`` reads per cadence, ``read_noise`` e- per read for the four
      outputs A-D); ``flux_err`` is the matching 1-sigma.

    The collateral pixels hold plausible small calibrated levels, never the
    scattered light: leading/trailing virtual columns, buffer and virtual rows
    ``collateral_level`` [e-/s] plus read noise; smear rows add the frame
    transfer smear (column mean of the science image x READTIME / INT_TIME).

    Quality flags (SPOC DQUALITY bits) and real defects:

    * ``Desat`` (32), momentum dumps: stars smeared by ~2 px along a line;
    * ``CoarsePoint`` (4): stars shifted by ~1-2 px and smeared;
    * ``Argabrightening`` (16): a diffuse glint (a broad 2-D Gaussian of
      ``glint_amplitude`` e-/s) on top of the scattered light; it is *not* part
      of `truth` (see `glint`), a builder should reject these frames;
    * ``Straylight`` (2048): frames where the Earth glow exceeds
      ``straylight_fraction`` of its perigee peak. These images are fine.

    The default times are `sector_times` (FFI cadence of the sector's era, with
    the orbit gap in the middle). Construction is cheap; the static scene is
    rendered on first use (~0.5 s), after which a frame takes ~0.15-0.2 s
    (~0.4-0.6 s for the smeared Desat/CoarsePoint frames). `frame` is
    thread-safe.

    Parameters
    ----------
    field : `ScatteredLightField`, optional
        The scattered light; default ``ScatteredLightField(seed=seed)``.
    sector, camera, ccd : int
    n_frames : int, optional
        Use this many frames spread evenly over the sector's `sector_times`
        (both orbits). Default: all of them. Exclusive with ``time``.
    time : array of float, shape (ntime,), optional
        Frame mid-times, BTJD [d], strictly increasing. Exclusive with ``n_frames``.
    seed : int
        Seeds the stars, strap factors, defects and noise. Frame ``i`` is the
        same whatever order frames are generated in.
    sky : float
        Static sky level [e-/s per pixel].
    n_stars, n_saturated : int
        Number of field stars (Tmag 6..17) and of saturated bright stars.
    strap_factor : (float, float)
        Range of the strap response factors.
    read_noise : sequence of 4 float
        Read noise of outputs A, B, C, D [e- per read].
    defects : dict of int to str, optional
        Frame index -> ``"desat"``, ``"coarse"`` or ``"glint"``. Default: a
        momentum dump every ``dump_interval`` days (at least one), one
        coarse-point frame near the middle and one glint at three quarters of
        the series (when there are frames to spare). Pass ``{}`` for none.
    dump_interval : float
        Days between momentum dumps for the default ``defects``.
    straylight_fraction : float
        Flag Straylight (2048) where ``field.earth_amplitude(t)`` exceeds this
        fraction of ``field.earth_peak``.
    glint_amplitude : float
        Peak of an Argabrightening glint [e-/s].
    collateral_level : float
        Calibrated level of the collateral pixels [e-/s].

    Attributes
    ----------
    time, tstart, tstop : ndarray of float, shape (ntime,)
        Mid, start and stop of each frame, BTJD [d].
    quality : ndarray of int32, shape (ntime,)
        SPOC DQUALITY bits.
    cadenceno : ndarray of int, shape (ntime,)
        Frame number counted from the sector start.
    cadence, exposure : float
        Frame length and effective exposure (after dead time and cosmic-ray
        mitigation) [s].
    strap_response : dict of int to float
        1-based CCD column -> response factor of each strap column.
    column_response : ndarray of float32, shape (2048,)
        Response of each science column (1 off the straps).
    stars : dict of str to ndarray
        ``row``, ``column`` (1-based CCD coordinates of the centres), ``tmag``
        and ``flux`` [e-/s] of every star.
    defects : dict of int to str

    Examples
    --------
    >>> from lk_scatterlight.simulate import FFISimulator, ScatteredLightField
    >>> sim = FFISimulator(ScatteredLightField(structured=True), n_frames=8, seed=1)
    >>> flux, flux_err = sim.frame(0)  # full 2078 x 2136 frame [e-/s]
    >>> truth = sim.truth(0)  # scattered light on the science pixels, (2048, 2048)
    >>> paths = sim.write_ffis("ffis")  # doctest: +SKIP
    """

    def __init__(
        self,
        field: ScatteredLightField | None = None,
        sector: int = 1,
        camera: int = 1,
        ccd: int = 1,
        n_frames: int | None = None,
        time: np.ndarray | None = None,
        seed: int = 0,
        *,
        sky: float = 30.0,
        n_stars: int = 40000,
        n_saturated: int = 3,
        strap_factor: tuple[float, float] = (1.03, 1.05),
        read_noise: tuple[float, float, float, float] = (10.0, 7.5, 7.3, 9.2),
        defects: dict[int, str] | None = None,
        dump_interval: float = 3.125,
        straylight_fraction: float = 0.5,
        glint_amplitude: float = 50.0,
        collateral_level: float = 0.5,
    ):
        from ..straps import strap_groups

        self.field = ScatteredLightField(seed=seed) if field is None else field
        self.sector, self.camera, self.ccd = int(sector), int(camera), int(ccd)
        self.seed = int(seed)
        self.sky = float(sky)
        self.glint_amplitude = float(glint_amplitude)
        self.collateral_level = float(collateral_level)
        self.saturation = SATURATION
        if n_frames is not None and time is not None:
            msg = "Give at most one of n_frames and time, not both."
            raise ValueError(msg)
        all_times = sector_times(self.sector)
        if time is not None:
            time = np.atleast_1d(np.asarray(time, dtype=float))
            if time.size == 0 or np.any(np.diff(time) <= 0):
                msg = "time must be a non-empty, strictly increasing BTJD array."
                raise ValueError(msg)
        elif n_frames is not None:
            if not 1 <= n_frames <= all_times.size:
                msg = f"n_frames must be 1..{all_times.size} for sector {sector}, got {n_frames}."
                raise ValueError(msg)
            picks = np.rint(np.linspace(0, all_times.size - 1, n_frames)).astype(np.intp)
            time = all_times[np.unique(picks)]
        else:
            time = all_times
        self.time = time
        self.cadence = ffi_cadence_seconds(self.sector)
        half = self.cadence / 86400 / 2
        self.tstart, self.tstop = self.time - half, self.time + half
        sector_start = _SECTOR1_START + (self.sector - 1) * _SECTOR_DAYS
        self.cadenceno = np.rint((self.time - sector_start) * 86400 / self.cadence - 0.5)
        self.cadenceno = self.cadenceno.astype(np.int64)
        self.num_frames = int(round(self.cadence / (_INT_TIME + _READ_TIME)))
        self.n_reads = int(round(self.num_frames * _CR_KEEP))
        self.exposure = self.cadence * _DEADC  # [s]
        self.read_noise = tuple(float(r) for r in read_noise)
        if len(self.read_noise) != 4:
            msg = "read_noise needs four values, for outputs A, B, C and D."
            raise ValueError(msg)

        rng = np.random.default_rng([self.seed, 0])
        # Straps: one factor per physical strap (two adjacent columns).
        self.strap_response: dict[int, float] = {}
        for group in strap_groups():
            factor = float(rng.uniform(*strap_factor))
            self.strap_response.update({column: factor for column in group})
        self.column_response = np.ones(N_SCIENCE, dtype=np.float32)
        for column, factor in self.strap_response.items():
            self.column_response[column - SCIENCE_COLUMNS[0]] = factor
        # Stars: Tmag pdf proportional to 3**Tmag on 6..17, plus a few saturated ones.
        u = rng.random(int(n_stars))
        tmag = 6.0 + np.log1p(u * (3.0**11 - 1)) / np.log(3.0)
        bright = rng.uniform(2.5, 4.5, int(n_saturated))
        lo, hi = -_STAR_MARGIN, N_SCIENCE + _STAR_MARGIN
        r0 = np.concatenate([rng.uniform(lo, hi, tmag.size), rng.uniform(100, 1948, bright.size)])
        c0 = np.concatenate([rng.uniform(lo, hi, tmag.size), rng.uniform(100, 1948, bright.size)])
        tmag = np.concatenate([tmag, bright])
        self.stars = {
            "row": r0 + SCIENCE_ROWS[0],
            "column": c0 + SCIENCE_COLUMNS[0],
            "tmag": tmag,
            "flux": TMAG_ZEROPOINT_FLUX * 10 ** (-0.4 * (tmag - 10)),
        }
        # Read noise per full-frame column (outputs A-D): 11 leading columns,
        # 512 science columns and 11 trailing virtual columns each.
        output = np.empty(FFI_SHAPE[1], dtype=np.intp)
        first, stop = SCIENCE_SLICE[1].start, SCIENCE_SLICE[1].stop
        output[:first] = np.arange(first) // 11
        output[first:stop] = np.arange(N_SCIENCE) // (N_SCIENCE // 4)
        output[stop:] = np.arange(FFI_SHAPE[1] - stop) // 11
        # Read-noise variance of a pixel [(e-/s)^2] per full-frame column.
        self._read_var = (
            self.n_reads * np.asarray(self.read_noise)[output] ** 2
        ) / self.exposure**2
        self._read_var = self._read_var.astype(np.float32)

        self.defects = self._default_defects(dump_interval) if defects is None else dict(defects)
        for index, kind in self.defects.items():
            if kind not in DEFECT_FLAGS:
                msg = (
                    f"Unknown defect {kind!r} for frame {index}; use one of {sorted(DEFECT_FLAGS)}."
                )
                raise ValueError(msg)
            if not 0 <= index < self.time.size:
                raise ValueError(f"Defect frame index {index} is outside 0..{self.time.size - 1}.")
        self.quality = np.zeros(self.time.size, dtype=np.int32)
        for index, kind in self.defects.items():
            self.quality[index] |= DEFECT_FLAGS[kind]
        earth = self.field.earth_amplitude(self.time)
        self.quality[earth > straylight_fraction * self.field.earth_peak] |= STRAYLIGHT_FLAG

        self._scene_lock = threading.Lock()
        self._static: np.ndarray | None = None
        self._saturated: tuple[np.ndarray, np.ndarray] | None = None
        self._sky_row = (self.sky * self.column_response).astype(np.float32)

    def __reduce__(self) -> tuple:
        """Pickle without the locks and the rendered scene (~20 MB, re-rendered on use).

        Dask sends the simulator to its workers this way.
        """
        state = dict(self.__dict__)
        locks = [name for name, value in state.items() if isinstance(value, _LOCK_TYPES)]
        for name in locks:
            del state[name]
        for name in ("_static", "_saturated"):  # caches: cheaper to re-render than to send
            if name in state:
                state[name] = None
        return _restore_simulator, (type(self), state, locks)

    # ------------------------------------------------------------------ setup helpers
    def _default_defects(self, dump_interval: float) -> dict[int, str]:
        n = self.time.size
        defects: dict[int, str] = {}
        # A dump lands in the frame whose exposure contains it (if that frame is simulated).
        for t in np.arange(self.time[0] + dump_interval, self.time[-1], dump_interval):
            inside = np.nonzero((self.tstart <= t) & (t < self.tstop))[0]
            if inside.size:
                defects[int(inside[0])] = "desat"
        if not defects and n >= 3:
            defects[n // 4] = "desat"
        for start, kind in ((n // 2, "coarse"), ((3 * n) // 4, "glint")):
            free = [i for i in range(start, n) if i not in defects]
            if free:
                defects[free[0]] = kind
        return defects

    def _ensure_scene(self) -> None:
        """Render the static scene (stars + sky, saturated and bled) once, thread-safely."""
        with self._scene_lock:
            if self._static is not None:
                return
            stars = self.stars
            image = _render_stars(
                stars["row"] - SCIENCE_ROWS[0],
                stars["column"] - SCIENCE_COLUMNS[0],
                stars["flux"],
                (N_SCIENCE, N_SCIENCE),
            )
            image += self._sky_row[None, :]
            self._saturated = _bleed(image, SATURATION)
            self._static = image.astype(np.float32)
            log.debug(
                "rendered %d stars; %d saturated pixels",
                stars["flux"].size,
                self._saturated[0].size,
            )

    def _check_index(self, index: int) -> int:
        if not -self.time.size <= index < self.time.size:
            raise IndexError(f"frame index {index} is outside 0..{self.time.size - 1}.")
        return int(index) % self.time.size

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return self.time.size

    def __repr__(self) -> str:
        return (
            f"FFISimulator(sector={self.sector}, camera={self.camera}, ccd={self.ccd}, "
            f"nframes={self.time.size}, seed={self.seed}, structured={self.field.structured})"
        )

    def static_scene(self) -> np.ndarray:
        """Stars plus strap-weighted sky, saturated and bled, without scattered light or noise.

        Returns
        -------
        image : ndarray of float32, shape (2048, 2048)
            Science pixels [e-/s] (CCD rows 1..2048, columns 45..2092). A copy.
        """
        self._ensure_scene()
        return self._static.copy()

    def saturated_mask(self) -> np.ndarray:
        """Pixels at the saturation level (saturated cores and bleed trails).

        Returns
        -------
        mask : ndarray of bool, shape (2048, 2048)
            Over the science pixels.
        """
        self._ensure_scene()
        mask = np.zeros((N_SCIENCE, N_SCIENCE), dtype=bool)
        mask[self._saturated] = True
        return mask

    def truth(self, index: int) -> np.ndarray:
        """The injected scattered light of a frame, strap response included.

        Parameters
        ----------
        index : int
            Frame index.

        Returns
        -------
        flux : ndarray of float32, shape (2048, 2048)
            ``field(time, row, column) * column_response`` [e-/s per pixel] on the
            science pixels (CCD rows 1..2048, columns 45..2092). Excludes the
            static sky and any Argabrightening `glint`.
        """
        return self._truth(self._check_index(index), Region.full())

    def _truth(self, index: int, region: Region) -> np.ndarray:
        rows, cols = region.science_slice
        with np.errstate(over="ignore"):  # the structured shadow's logistic overflows harmlessly
            sl = self.field(
                self.time[index : index + 1],
                _SCIENCE_ROW_COORDS[rows],
                _SCIENCE_COLUMN_COORDS[cols],
            )[0]
        return (sl * self.column_response[cols]).astype(np.float32)

    def glint(self, index: int) -> np.ndarray | None:
        """The Argabrightening glint of a frame, if it has one.

        Returns
        -------
        flux : ndarray of float32, shape (2048, 2048), or None
            Extra diffuse light [e-/s] on the science pixels, None for frames
            without a glint.
        """
        index = self._check_index(index)
        if self.defects.get(index) != "glint":
            return None
        rng = np.random.default_rng([self.seed, 2, index])
        centre, sigma = rng.uniform(300, 1750, 2), rng.uniform(400, 700)
        gy = np.exp(-0.5 * ((np.arange(N_SCIENCE) - centre[0]) / sigma) ** 2)
        gx = np.exp(-0.5 * ((np.arange(N_SCIENCE) - centre[1]) / sigma) ** 2)
        return (self.glint_amplitude * np.outer(gy, gx) * self.column_response).astype(np.float32)

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Generate one full calibrated FFI.

        Parameters
        ----------
        index : int
            Frame index (0..ntime-1).

        Returns
        -------
        flux, flux_err : ndarray of float32, shape (2078, 2136)
            Calibrated image and its 1-sigma uncertainty [e-/s], collateral
            included; the science pixels are ``[0:2048, 44:2092]``.
        """
        index = self._check_index(index)
        scene = self._scene(index, Region.full())
        rng = np.random.default_rng([self.seed, 3, index])
        noise = rng.standard_normal(FFI_SHAPE, dtype=np.float32)
        rows, cols = SCIENCE_SLICES
        # Collateral: calibrated level + read noise everywhere, then the science pixels.
        err = np.broadcast_to(np.sqrt(self._read_var), FFI_SHAPE).copy()
        flux = noise * err
        flux += np.float32(self.collateral_level)
        smear = scene.mean(axis=0) * np.float32(_READ_TIME / _INT_TIME)
        flux[2058:2068, cols] += smear[None, :]  # smear rows (1-based rows 2059-2068)
        flux[rows, cols], err[rows, cols] = self._add_noise(scene, noise[rows, cols], cols)
        return flux, err

    def science(self, index: int, region: Region | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generate the science pixels of one frame, or of a region of them only.

        A region costs in proportion to its area (a 128 x 128 px region about
        1/250 of a frame), which makes regional builds of simulated data cheap.
        Stars, sky, scattered light, defects and saturation are those of
        `frame`; the noise is drawn for the region alone, so it has the same
        statistics as `frame`'s but not the same values.

        Parameters
        ----------
        index : int
            Frame index (0..ntime-1).
        region : `~lk_scatterlight.ccd.Region`, optional
            Science pixels to generate (1-based CCD rows and columns); default all.

        Returns
        -------
        flux, flux_err : ndarray of float32, shape (region.nrows, region.ncols)
            Calibrated flux and its 1-sigma uncertainty [e-/s].
        """
        index = self._check_index(index)
        region = Region.full() if region is None else region
        scene = self._scene(index, region)
        rng = np.random.default_rng([self.seed, 4, index, region.row, region.column])
        noise = rng.standard_normal(scene.shape, dtype=np.float32)
        return self._add_noise(scene, noise, region.ffi_slice[1])

    def _scene(self, index: int, region: Region) -> np.ndarray:
        """Noise-free science pixels of a region of frame ``index`` [e-/s], float32."""
        self._ensure_scene()
        rows, cols = region.science_slice
        kind = self.defects.get(index)
        sl = self._truth(index, region)
        if kind in ("desat", "coarse"):
            rng = np.random.default_rng([self.seed, 1, index])
            angle = rng.uniform(0, 2 * np.pi)
            direction = np.array([np.sin(angle), np.cos(angle)])
            if kind == "desat":  # a ~2 px smear along a line through the nominal position
                start, stop = -1.0 * direction, 1.0 * direction
            else:  # coarse pointing: offset by ~1.5 px and smeared by ~1 px
                offset = 1.5 * np.array([np.cos(angle), -np.sin(angle)])
                start, stop = offset - 0.5 * direction, offset + 0.5 * direction
            # Smear the region grown by the largest shift (2 px), so stars just
            # outside it move in as they do in a full frame.
            r0, c0 = max(rows.start - _SMEAR_PAD, 0), max(cols.start - _SMEAR_PAD, 0)
            grown = slice(r0, rows.stop + _SMEAR_PAD), slice(c0, cols.stop + _SMEAR_PAD)
            stars = self._static[grown] - self._sky_row[None, grown[1]]
            smeared = _smear_shift(stars, start, stop, nstep=5)
            scene = smeared[rows.start - r0 :, cols.start - c0 :][: region.nrows, : region.ncols]
            scene += self._sky_row[None, cols]
            scene += sl
            np.minimum(scene, SATURATION, out=scene)
        else:
            scene = sl
            scene += self._static[rows, cols]
            sat_rows, sat_cols = self._saturated
            inside = (sat_rows >= rows.start) & (sat_rows < rows.stop)
            inside &= (sat_cols >= cols.start) & (sat_cols < cols.stop)
            scene[sat_rows[inside] - rows.start, sat_cols[inside] - cols.start] = SATURATION
        glint = self.glint(index)
        if glint is not None:
            scene += glint[rows, cols]
        return scene

    def _add_noise(
        self, scene: np.ndarray, noise: np.ndarray, ffi_cols: slice
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flux and 1-sigma error of science pixels: photon and read noise on ``scene``.

        ``noise`` holds standard normal draws of the same shape; ``ffi_cols`` is
        the pixels' slice of the full FFI columns (for the read noise of their output).
        """
        err = np.maximum(scene, 0.0, dtype=np.float32)
        err *= np.float32(1.0 / self.exposure)
        err += self._read_var[None, ffi_cols]
        np.sqrt(err, out=err)
        flux = err * noise
        flux += scene
        return flux, err

    def filename(self, index: int) -> str:
        """SPOC-style file name of a frame (start time from the spacecraft clock, UTC)."""
        index = self._check_index(index)
        start = btjd_to_utc(self.tstart[index] - _barycorr(self.tstart[index]))
        return ffi_filename(start, self.sector, self.camera, self.ccd)

    def _headers(self, index: int) -> tuple[fits.Header, fits.Header]:
        """SPOC-like primary and image-extension headers of a frame."""
        from lk_scatterlight import __version__

        tstart, tstop = float(self.tstart[index]), float(self.tstop[index])
        barycorr = float(_barycorr(tstart))
        kind = self.defects.get(index, "none")
        iso = "%Y-%m-%dT%H:%M:%S.%f"
        primary = fits.Header()
        for key, value, comment in (
            ("NEXTEND", 2, "number of standard extensions"),
            ("EXTNAME", "PRIMARY", "name of extension"),
            ("SIMDATA", True, "file is based on simulated data"),
            ("ORIGIN", "lk_scatterlight", "institution responsible for creating this file"),
            ("DATE", datetime.now().strftime("%Y-%m-%d"), "file creation date."),
            ("TSTART", tstart - barycorr, "observation start time in TJD"),
            ("TSTOP", tstop - barycorr, "observation stop time in TJD"),
            (
                "DATE-OBS",
                btjd_to_utc(tstart - barycorr).strftime(iso)[:-3] + "Z",
                "TSTART as UTC calendar date",
            ),
            (
                "DATE-END",
                btjd_to_utc(tstop - barycorr).strftime(iso)[:-3] + "Z",
                "TSTOP as UTC calendar date",
            ),
            (
                "CREATOR",
                "lk_scatterlight.simulate.FFISimulator",
                "software that made this file",
            ),
            ("PROCVER", __version__, "lk_scatterlight version"),
            ("FILEVER", "1.0", "file format version"),
            ("TELESCOP", "TESS", "telescope"),
            ("INSTRUME", "TESS Photometer", "detector type"),
            ("DATA_REL", 0, "data release version number"),
            ("SCCONFIG", 120, "spacecraft configuration ID"),
            ("CRMITEN", True, "spacecraft cosmic ray mitigation enabled"),
            ("CRBLKSZ", 10, "[exposures] cosmic ray mitigation block"),
            ("CRSPOC", False, "SPOC cosmic ray cleaning enabled"),
            ("SIMSEED", self.seed, "FFISimulator seed"),
            ("SIMSLSD", int(self.field.seed), "ScatteredLightField seed"),
            ("SIMSTRUC", bool(self.field.structured), "scattered light has fine structure"),
            ("SIMINDEX", int(index), "frame index in the simulation"),
            ("SIMDEFCT", kind, "injected defect: desat, coarse, glint or none"),
        ):
            primary[key] = (value, comment)
        image = fits.Header()
        cards = [
            ("SIMDATA", True, "file is based on simulated data"),
            ("TELESCOP", "TESS", "telescope"),
            ("INSTRUME", "TESS Photometer", "detector type"),
            ("CAMERA", self.camera, "Camera number"),
            ("CCD", self.ccd, "CCD chip number"),
            ("EXPOSURE", self.exposure / 86400, "[d] time on source"),
            ("TIMEREF", "SOLARSYSTEM", "barycentric correction applied to times"),
            ("TASSIGN", "SPACECRAFT", "where time is assigned"),
            ("TIMESYS", "TDB", "time system is Barycentric Dynamical Time (TDB)"),
            ("BJDREFI", int(BTJD_OFFSET), "integer part of BTJD reference date"),
            ("BJDREFF", 0.0, "fraction of the day in BTJD reference date"),
            ("TIMEUNIT", "d", "time unit for TIME, TSTART and TSTOP"),
            ("TELAPSE", tstop - tstart, "[d] TSTOP - TSTART"),
            ("LIVETIME", (tstop - tstart) * _DEADC, "[d] TELAPSE multiplied by DEADC"),
            ("TSTART", tstart, "observation start time in BTJD"),
            ("TSTOP", tstop, "observation stop time in BTJD"),
            (
                "DATE-OBS",
                btjd_to_utc(tstart).strftime(iso)[:-3] + "Z",
                "TSTART as UTC calendar date",
            ),
            ("DATE-END", btjd_to_utc(tstop).strftime(iso)[:-3] + "Z", "TSTOP as UTC calendar date"),
            ("DEADC", _DEADC, "deadtime correction"),
            ("TIMEPIXR", 0.5, "bin time beginning=0 middle=0.5 end=1"),
            ("BUNIT", "electrons/s", "physical units of image data"),
            ("BARYCORR", barycorr, "[d] barycentric time correction"),
            ("INT_TIME", _INT_TIME, "[s] photon accumulation time per frame"),
            ("READTIME", _READ_TIME, "[s] readout time per frame"),
            ("FRAMETIM", _INT_TIME + _READ_TIME, "[s] frame time (INT_TIME + READTIME)"),
            ("NUM_FRM", self.num_frames, "number of frames per time stamp"),
            ("TIMEDEL", self.cadence / 86400, "[d] time resolution of data"),
            ("BACKAPP", False, "background is subtracted"),
            ("DEADAPP", True, "deadtime applied"),
            ("VIGNAPP", True, "vignetting or collimator correction applied"),
            ("NREADOUT", self.n_reads, "number of read per cadence"),
        ]
        for k, out in enumerate("ABCD"):
            cards += [
                (f"GAIN{out}", 5.2, f"[electrons/count] CCD output {out} gain"),
                (f"READNOI{out}", self.read_noise[k], f"[electrons] read noise CCD output {out}"),
            ]
        for k, out in enumerate("ABCD"):
            cards += [
                (f"LVCS{out}", 1 + 11 * k, f"serial register col start, output {out}"),
                (f"LVCE{out}", 11 + 11 * k, f"serial register col end (inclusive), output {out}"),
                (f"TVCS{out}", 2093 + 11 * k, f"trailing virtual column start, output {out}"),
                (
                    f"TVCE{out}",
                    2103 + 11 * k,
                    f"trailing virtual col end (incl.), output {out}",
                ),
                (f"SCCS{out}", 45 + 512 * k, f"science col start, output {out}"),
                (f"SCCE{out}", 556 + 512 * k, f"science col end (inclusive), output {out}"),
            ]
        wcs_rng = np.random.default_rng([self.seed, 4])
        ra, dec, roll = wcs_rng.uniform(0, 360), wcs_rng.uniform(-80, 80), wcs_rng.uniform(0, 360)
        scale = 21.0 / 3600  # [deg/px]
        cos, sin = np.cos(np.radians(roll)), np.sin(np.radians(roll))
        cards += [
            ("SCIROWS", 1, "science rows start"),
            ("SCIROWE", 2048, "science rows end (inclusive)"),
            ("VROWS", 2069, "virtual row start"),
            ("VROWE", 2078, "virtual row end (inclusive)"),
            ("SMROWS", 2059, "smear rows start"),
            ("SMROWE", 2068, "smear rows end (inclusive)"),
            ("BFROWS", 2049, "buffer rows start"),
            ("BFROWE", 2058, "buffer rows end (inclusive)"),
            ("RADESYS", "ICRS", "reference frame of celestial coordinates"),
            ("EQUINOX", 2000.0, "equinox of celestial coordinate system"),
            ("WCSAXES", 2, "number of WCS axes"),
            ("CTYPE1", "RA---TAN", "Gnomonic projection (synthetic pointing)"),
            ("CTYPE2", "DEC--TAN", "Gnomonic projection (synthetic pointing)"),
            ("CRVAL1", ra, "RA at CRPIX1, CRPIX2"),
            ("CRVAL2", dec, "DEC at CRPIX1, CRPIX2"),
            ("CRPIX1", 1068.5, "X reference pixel"),
            ("CRPIX2", 1024.5, "Y reference pixel"),
            ("CD1_1", -scale * cos, "Transformation matrix"),
            ("CD1_2", scale * sin, "Transformation matrix"),
            ("CD2_1", scale * sin, "Transformation matrix"),
            ("CD2_2", scale * cos, "Transformation matrix"),
            ("WCSNAMEP", "PHYSICAL", "name of world coordinate system alternate P"),
            ("WCSAXESP", 2, "number of WCS physical axes"),
            ("CTYPE1P", "RAWX", "physical WCS axis 1 type CCD col"),
            ("CUNIT1P", "PIXEL", "physical WCS axis 1 unit"),
            ("CRPIX1P", 1, "reference CCD column"),
            ("CRVAL1P", 1, "value at reference CCD column"),
            ("CDELT1P", 1.0, "physical WCS axis 1 step"),
            ("CTYPE2P", "RAWY", "physical WCS axis 2 type CCD row"),
            ("CUNIT2P", "PIXEL", "physical WCS axis 2 units"),
            ("CRPIX2P", 1, "reference CCD row"),
            ("CRVAL2P", 1, "value at reference CCD row"),
            ("CDELT2P", 1.0, "physical WCS axis 2 step"),
            ("DQUALITY", int(self.quality[index]), "data quality flags"),
            ("IMAGTYPE", "cal", "FFI image type: raw, cal, uncert"),
        ]
        for key, value, comment in cards:
            image[key] = (value, comment)
        return primary, image

    def to_hdulist(self, index: int, science_only_err: bool = False) -> fits.HDUList:
        """One frame as a SPOC-like calibrated FFI.

        Parameters
        ----------
        index : int
        science_only_err : bool
            Write the uncertainty extension over the science pixels only
            (2048 x 2048) instead of full size (2078 x 2136).

        Returns
        -------
        hdulist : `~astropy.io.fits.HDUList`
            Primary header, ``CAMERA.CCD {camera}.{ccd} cal`` image [e-/s] and
            ``CAMERA.CCD {camera}.{ccd} uncert`` image [e-/s].
        """
        index = self._check_index(index)
        flux, err = self.frame(index)
        primary, image = self._headers(index)
        if science_only_err:
            err = np.ascontiguousarray(err[SCIENCE_SLICES])
        name = f"CAMERA.CCD {self.camera}.{self.ccd}"
        cal = fits.ImageHDU(flux, header=image, name=f"{name} cal")
        uncert_header = image.copy()
        uncert_header["IMAGTYPE"] = "uncert"
        uncert = fits.ImageHDU(err, header=uncert_header, name=f"{name} uncert")
        return fits.HDUList([fits.PrimaryHDU(header=primary), cal, uncert])

    def write_ffis(
        self,
        directory: str | os.PathLike,
        indices=None,
        overwrite: bool = False,
        science_only_err: bool = False,
    ) -> list[Path]:
        """Write frames as SPOC-like ``*ffic.fits`` files.

        Each file is written to a temporary name in ``directory`` and renamed
        when complete, so an interrupted run never leaves a partial FFI.

        Parameters
        ----------
        directory : str or path-like
            Created if missing.
        indices : iterable of int, optional
            Frames to write; default all.
        overwrite : bool
            Replace existing files.
        science_only_err : bool
            See `to_hdulist`.

        Returns
        -------
        paths : list of `~pathlib.Path`
            In the order of ``indices``.

        Raises
        ------
        FileExistsError
            A file exists and ``overwrite`` is False.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        indices = range(self.time.size) if indices is None else indices
        paths = []
        for index in indices:
            path = directory / self.filename(index)
            refuse_overwrite(path, overwrite)
            hdul = self.to_hdulist(index, science_only_err=science_only_err)
            with atomic_write(path) as tmp:
                hdul.writeto(tmp, overwrite=True, checksum=True)
            log.debug("wrote simulated FFI %s", path)
            paths.append(path)
        return paths
