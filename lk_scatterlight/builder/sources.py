"""Where Full Frame Images come from: SPOC files on disk or a simulator.

An `FFISource` is one sector/camera/CCD's time-sorted list of calibrated FFIs
(`FrameInfo`) and a way to `~FFISource.read` the science pixels of any of them.
The cube builder only talks to this interface, so the same code runs on real
SPOC ``*ffic.fits`` files (`LocalFFISource`) and on synthetic frames with
known truth (`SimulatedFFISource`, wrapping
`lk_scatterlight.simulate.FFISimulator`).

Array conventions: a full SPOC FFI image is 2078 rows x 2136 columns
(0-based); its science pixels are ``data[0:2048, 44:2092]``, i.e. 1-based CCD
rows 1..2048 and columns 45..2092 (the 44 leading columns are collateral).
`FFISource.read` returns the science pixels only, as float32 arrays of shape
(2048, 2048) [e-/s]. Times are BTJD (BJD - 2457000, TDB) [d].
"""

from __future__ import annotations

import abc
import glob
import logging
import os
import re
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from .. import ccd
from ..ccd import N_SCIENCE, SCIENCE_SLICE, Region
from ..exceptions import FFISourceError

if TYPE_CHECKING:  # pragma: no cover
    from ..simulate import FFISimulator

__all__ = [
    "FrameInfo",
    "FFIHeader",
    "FFISource",
    "LocalFFISource",
    "SimulatedFFISource",
    "CroppedSource",
    "read_ffi_header",
    "sparse_read_rows",
    "FFI_SHAPE",
    "SCIENCE_SHAPE",
]

log = logging.getLogger(__name__)

#: Shape (rows, columns) of a full SPOC FFI image, collateral included.
FFI_SHAPE = ccd.FFI_SHAPE
#: Shape (rows, columns) of the science region returned by `FFISource.read`.
SCIENCE_SHAPE = (N_SCIENCE, N_SCIENCE)
_SCIENCE = SCIENCE_SLICE
_SECTOR_IN_NAME = re.compile(r"-s(\d{4})-")
_FFI_PATTERN = "*ffic.fits"
_ACCEPTED_BUNITS = ccd.FLUX_BUNITS
#: Two frames whose mid-times differ by less than this [d] (~0.1 s) are duplicates.
_DUPLICATE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FrameInfo:
    """One FFI of a source.

    Attributes
    ----------
    index : int
        Position in the source's time-sorted frame list (what `FFISource.read` takes).
    time : float
        Mid-exposure time, BTJD [d] (TDB).
    tstart, tstop : float
        Start and end of the exposure, BTJD [d].
    quality : int
        SPOC DQUALITY bits (e.g. 4 CoarsePoint, 16 Argabrightening, 32 Desat,
        2048 Straylight).
    cadenceno : int
        Cadence number, -1 if unknown (SPOC FFI headers carry none).
    name : str
        File name (or another key identifying the frame).
    """

    index: int
    time: float
    tstart: float
    tstop: float
    quality: int
    cadenceno: int
    name: str


@dataclass(frozen=True)
class FFIHeader:
    """What `read_ffi_header` finds in a SPOC calibrated FFI.

    Attributes
    ----------
    path : `~pathlib.Path`
    sector, camera, ccd : int
    tstart, tstop : float
        Exposure start and end, BTJD [d] (extension 1 TSTART/TSTOP, barycentric).
    quality : int
        DQUALITY bits of extension 1.
    shape : (int, int)
        (rows, columns) of the calibrated image (extension 1).
    err_shape : (int, int) or None
        (rows, columns) of the uncertainty image (extension 2), None if absent.
    bunit : str or None
        BUNIT of extension 1.
    """

    path: Path
    sector: int
    camera: int
    ccd: int
    tstart: float
    tstop: float
    quality: int
    shape: tuple[int, int]
    err_shape: tuple[int, int] | None
    bunit: str | None

    @property
    def time(self) -> float:
        """Mid-exposure time, BTJD [d]."""
        return 0.5 * (self.tstart + self.tstop)


def _card(headers: Sequence[fits.Header], key: str, path: Path, where: str):
    """The first value of ``key`` in ``headers``, or an error naming the file."""
    for header in headers:
        if key in header:
            return header[key]
    msg = (
        f"{path.name}: no {key} keyword in the {where}; is this a SPOC calibrated FFI (*ffic.fits)?"
    )
    raise FFISourceError(msg)


def read_ffi_header(path: str | os.PathLike) -> FFIHeader:
    """Read the headers of one SPOC calibrated FFI, without reading its images.

    Times come from extension 1 (TSTART/TSTOP, BTJD, barycentre-corrected), the
    quality from its DQUALITY, camera and CCD from its CAMERA/CCD (falling back
    to the primary header), and the sector from the SPOC file name
    (``tess2018206192942-s0001-1-4-0120-s_ffic.fits`` is sector 1), falling
    back to a SECTOR keyword.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    header : `FFIHeader`

    Raises
    ------
    FFISourceError
        The file is missing or not FITS, has no image extension, or lacks one
        of TSTART, TSTOP, DQUALITY, CAMERA, CCD or a sector.
    """
    path = Path(path)
    try:
        # A truncated file only triggers an astropy warning; make it an error here.
        # (Warning filters are process-wide: this runs when a source is opened,
        # not in the reader threads.)
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "error", "File may have been truncated", category=AstropyUserWarning
            )
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                primary = hdul[0].header
                try:
                    image = hdul[1].header
                except IndexError:
                    msg = f"{path.name}: has no image extension; expected a SPOC calibrated FFI."
                    raise FFISourceError(msg) from None
                try:
                    uncert = hdul[2].header
                except IndexError:
                    uncert = None
    except (OSError, AstropyUserWarning) as err:
        msg = f"{path}: cannot read it as a FITS file ({err})."
        raise FFISourceError(msg) from err
    where = "header of extension 1"
    match = _SECTOR_IN_NAME.search(path.name)
    if match:
        sector = int(match.group(1))
    elif "SECTOR" in primary or "SECTOR" in image:
        sector = int(primary.get("SECTOR", image.get("SECTOR")))
    else:
        msg = (
            f"{path.name}: cannot tell the sector: the name has no '-sNNNN-' part "
            "(SPOC names look like tess2018206192942-s0001-1-4-0120-s_ffic.fits) "
            "and there is no SECTOR keyword."
        )
        raise FFISourceError(msg)

    def shape_of(header: fits.Header) -> tuple[int, int]:
        if header.get("NAXIS", 0) != 2:
            return (0, 0)
        return (int(header["NAXIS2"]), int(header["NAXIS1"]))

    try:
        tstart = float(_card([image], "TSTART", path, where))
        tstop = float(_card([image], "TSTOP", path, where))
        quality = int(_card([image], "DQUALITY", path, where))
        camera = int(_card([image, primary], "CAMERA", path, "headers"))
        ccd = int(_card([image, primary], "CCD", path, "headers"))
    except (TypeError, ValueError) as err:
        msg = f"{path.name}: a time, quality, camera or CCD keyword is not a number ({err})."
        raise FFISourceError(msg) from err
    return FFIHeader(
        path=path,
        sector=sector,
        camera=camera,
        ccd=ccd,
        tstart=tstart,
        tstop=tstop,
        quality=quality,
        shape=shape_of(image),
        err_shape=None if uncert is None else shape_of(uncert),
        bunit=image.get("BUNIT"),
    )


class FFISource(abc.ABC):
    """A time-sorted set of calibrated FFIs of one sector, camera and CCD.

    Subclasses fill in the attributes (through ``super().__init__``) and
    implement `read`.

    Parameters
    ----------
    sector, camera, ccd : int
    frames : list of `FrameInfo`
        Sorted by time, ``frames[i].index == i``.
    description : str
        Where the frames come from, for provenance (stored in cube headers).

    Attributes
    ----------
    sector, camera, ccd : int
    frames : list of `FrameInfo`
    description : str
    region : `~lk_scatterlight.ccd.Region`
        The science pixels `read` returns: the whole CCD, or a square of it
        (`crop`, `~lk_scatterlight.builder.tesscube_source.TessCubeRegionSource`).
    row_step : int
        Only every ``row_step``-th row of the region holds data (a sparse read,
        rows `sparse_read_rows`); the other rows are NaN.
    """

    region: Region = Region.full()
    row_step: int = 1

    def __init__(
        self, sector: int, camera: int, ccd: int, frames: list[FrameInfo], description: str
    ):
        self.sector, self.camera, self.ccd = int(sector), int(camera), int(ccd)
        self.frames = list(frames)
        self.description = str(description)
        times = np.array([f.time for f in self.frames])
        if np.any(np.diff(times) < 0) or any(f.index != i for i, f in enumerate(self.frames)):
            msg = "frames must be sorted by time with frames[i].index == i."
            raise FFISourceError(msg)

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sector={self.sector}, camera={self.camera}, "
            f"ccd={self.ccd}, nframes={len(self.frames)})"
        )

    @property
    def time(self) -> np.ndarray:
        """Mid-times of the frames, BTJD [d], shape (nframes,)."""
        return np.array([f.time for f in self.frames], dtype=float)

    @property
    def quality(self) -> np.ndarray:
        """SPOC DQUALITY bits of the frames, shape (nframes,)."""
        return np.array([f.quality for f in self.frames], dtype=np.int32)

    def _check_index(self, index: int) -> int:
        n = len(self.frames)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            msg = f"frame index must be an int, got {index!r}."
            raise FFISourceError(msg)
        if not 0 <= index < n:
            msg = f"frame index {index} is outside 0..{n - 1} ({n} frames in {self.description})."
            raise FFISourceError(msg)
        return int(index)

    @abc.abstractmethod
    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read the science pixels of one frame.

        Parameters
        ----------
        index : int
            Position in `frames` (0-based).

        Returns
        -------
        flux, flux_err : ndarray of float32, shape (2048, 2048)
            Calibrated flux and its 1-sigma uncertainty [e-/s]: 0-based FFI
            array rows 0:2048 and columns 44:2092 (1-based CCD rows 1..2048,
            columns 45..2092). Fresh arrays the caller may modify.

        Raises
        ------
        FFISourceError
            The frame cannot be read.
        """

    def crop(self, region: Region, row_step: int = 1) -> FFISource:
        """The same frames, restricted to a region of the CCD.

        Parameters
        ----------
        region : `~lk_scatterlight.ccd.Region`
            Inside this source's region.
        row_step : int
            Keep every ``row_step``-th row of the region (`sparse_read_rows`: the
            middle row of each run of ``row_step`` rows) and set the others to NaN,
            as a sparse read of MAST's FFI cube does.

        Returns
        -------
        source : `FFISource`
            Reads this source's frames and returns the region's pixels.
        """
        return CroppedSource(self, region, row_step)

    def iter_read(
        self, indices: Iterable[int] | None = None, prefetch: int = 4
    ) -> Iterator[tuple[FrameInfo, np.ndarray, np.ndarray]]:
        """Read frames in the given order, reading ahead on worker threads.

        Reads run on a `~concurrent.futures.ThreadPoolExecutor` of ``prefetch``
        threads. At most ``prefetch`` frames are in flight (being read or read
        and waiting) at any time; a new read is only started when the caller
        takes a frame. Memory is therefore bounded by ``prefetch + 1`` frames
        (those in flight plus the one the caller holds), about 33 MB each for
        float32 flux and error. Stopping the iteration early cancels the reads
        not yet started and waits for the running ones.

        Parameters
        ----------
        indices : iterable of int, optional
            Frames to read, in the order wanted (repeats allowed); default all
            frames in time order.
        prefetch : int
            Maximum number of frames read ahead (>= 1; 1 means no overlap
            between reading and the caller's work beyond one frame).

        Yields
        ------
        frame : `FrameInfo`
        flux, flux_err : ndarray of float32, shape (2048, 2048)
            As returned by `read` [e-/s].

        Raises
        ------
        FFISourceError
            An index is out of range (before anything is read), ``prefetch`` < 1,
            or a read fails (when that frame's turn comes).
        """
        if (
            isinstance(prefetch, bool)
            or not isinstance(prefetch, (int, np.integer))
            or prefetch < 1
        ):
            msg = f"prefetch must be an int >= 1, got {prefetch!r}."
            raise FFISourceError(msg)
        order = list(range(len(self.frames))) if indices is None else list(indices)
        order = [self._check_index(i) for i in order]
        if not order:
            return
        pool = ThreadPoolExecutor(max_workers=int(prefetch), thread_name_prefix="ffi-read")
        pending: deque[tuple[int, Future]] = deque()
        upcoming = iter(order)
        try:
            for index in upcoming:
                pending.append((index, pool.submit(self.read, index)))
                if len(pending) >= prefetch:
                    break
            while pending:
                index, future = pending.popleft()
                flux, flux_err = future.result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append((following, pool.submit(self.read, following)))
                yield self.frames[index], flux, flux_err
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def sparse_read_rows(nrows: int, row_step: int) -> np.ndarray:
    """The rows a read of every ``row_step``-th row of a region holds (0-based in it).

    The middle row of each run of ``row_step`` rows from the region's first
    row (the upper middle row for an even step): ``(row_step - 1) // 2``, then
    every ``row_step``-th. A region starts on the CCD's grid of bins, so every
    bin whose side is a multiple of ``row_step`` (the 16-px bins at steps 2, 4,
    8 and 16, the fine bins `~lk_scatterlight.builder.plan.sparse_config`
    chooses) has its read rows' centroid within 0.5 px of its centre; reading
    each run's first row instead would put it ``(row_step - 1) / 2`` px above.

    Parameters
    ----------
    nrows : int
        Rows of the region.
    row_step : int
        Read every ``row_step``-th row (1: every row).

    Returns
    -------
    rows : ndarray of int
    """
    return np.arange((int(row_step) - 1) // 2, int(nrows), int(row_step))


class CroppedSource(FFISource):
    """The frames of another source, restricted to a region (see `FFISource.crop`).

    Parameters
    ----------
    parent : `FFISource`
    region : `~lk_scatterlight.ccd.Region`
    row_step : int
    """

    def __init__(self, parent: FFISource, region: Region, row_step: int = 1):
        if not parent.region.covers(region):
            msg = f"{parent.description} covers {parent.region}, not {region}."
            raise FFISourceError(msg)
        if int(row_step) < 1:
            msg = f"row_step must be >= 1, got {row_step!r}."
            raise FFISourceError(msg)
        self.parent, self.region, self.row_step = parent, region, int(row_step)
        description = f"{parent.description}, {region}"
        if self.row_step > 1:
            description += f", every {self.row_step} rows"
        super().__init__(parent.sector, parent.camera, parent.ccd, parent.frames, description)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(self.region.row - self.parent.region.row, None)
        cols = slice(self.region.column - self.parent.region.column, None)
        out = []
        for array in self.parent.read(index):
            part = np.array(array[rows, cols][: self.region.nrows, : self.region.ncols])
            if self.row_step > 1:
                skipped = np.ones(self.region.nrows, dtype=bool)
                skipped[sparse_read_rows(self.region.nrows, self.row_step)] = False
                part[skipped] = np.nan
            out.append(part)
        return out[0], out[1]


def _resolve_paths(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
) -> tuple[list[Path], str]:
    """Turn a directory, glob pattern, file or list of files into paths and a description."""
    if isinstance(paths, (str, os.PathLike)):
        text = os.fspath(paths)
        path = Path(text)
        if path.is_dir():
            found = sorted(path.glob(_FFI_PATTERN))
            where = f"directory {path} (pattern {_FFI_PATTERN})"
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text))
            where = f"pattern {text}"
        elif path.is_file():
            found, where = [path], f"file {path}"
        else:
            msg = f"{path} is neither a directory, a glob pattern nor an existing file."
            raise FFISourceError(msg)
    else:
        found = [Path(os.fspath(p)) for p in paths]
        where = f"{len(found)} listed files"
        missing = [p for p in found if not p.is_file()]
        if missing:
            msg = f"FFI file {missing[0]} does not exist ({len(missing)} listed files missing)."
            raise FFISourceError(msg)
    if not found:
        msg = f"No SPOC FFI files found in {where}."
        raise FFISourceError(msg)
    return found, where


def _names(headers: Sequence[FFIHeader], limit: int = 5) -> str:
    names = [h.path.name for h in headers[:limit]]
    more = f" and {len(headers) - limit} more" if len(headers) > limit else ""
    return ", ".join(names) + more


class LocalFFISource(FFISource):
    """SPOC calibrated FFIs (``*ffic.fits``) of one sector/camera/CCD on local disk.

    Opening the source reads every file's headers (`read_ffi_header`) and
    checks that the set is consistent; `read` then memory-maps one file and
    copies only its science pixels.

    Parameters
    ----------
    paths : str, path-like or iterable of them
        A directory (its ``*ffic.fits`` files are used), a glob pattern
        (``"ffis/*-s0001-1-4-*ffic.fits"``), one file, or a list of files.

    Raises
    ------
    FFISourceError
        No files found; a file is unreadable, not a full-size SPOC FFI (the
        calibrated image must be 2078 x 2136, the uncertainty 2078 x 2136 or
        2048 x 2048), not in e-/s, or lacks a keyword; the files mix sectors,
        cameras or CCDs; or two files have the same time. The message names the
        offending file(s).

    Examples
    --------
    >>> from lk_scatterlight.builder.sources import LocalFFISource
    >>> source = LocalFFISource("ffis/")  # doctest: +SKIP
    >>> for frame, flux, flux_err in source.iter_read(prefetch=4):  # doctest: +SKIP
    ...     print(frame.time, flux.shape)
    """

    def __init__(self, paths: str | os.PathLike | Iterable[str | os.PathLike]):
        found, where = _resolve_paths(paths)
        headers = [read_ffi_header(p) for p in found]
        self._validate(headers)
        headers.sort(key=lambda h: h.time)
        times = np.array([h.time for h in headers])
        duplicate = np.nonzero(np.diff(times) < _DUPLICATE_TOLERANCE)[0]
        if duplicate.size:
            a, b = headers[duplicate[0]], headers[duplicate[0] + 1]
            msg = (
                f"FFI files {a.path.name} and {b.path.name} have the same time "
                f"(BTJD {a.time:.6f}); remove the duplicate."
            )
            raise FFISourceError(msg)
        first = headers[0]
        frames = [
            FrameInfo(i, h.time, h.tstart, h.tstop, h.quality, -1, h.path.name)
            for i, h in enumerate(headers)
        ]
        self.paths = [h.path for h in headers]
        self._sizes = [h.path.stat().st_size for h in headers]
        self._full_err = [h.err_shape == FFI_SHAPE for h in headers]
        description = (
            f"{len(headers)} SPOC FFIs of sector {first.sector} camera {first.camera} "
            f"CCD {first.ccd} from {where}"
        )
        super().__init__(first.sector, first.camera, first.ccd, frames, description)
        log.info("opened %s", description)

    @staticmethod
    def _validate(headers: list[FFIHeader]) -> None:
        for h in headers:
            if h.shape != FFI_SHAPE:
                msg = (
                    f"{h.path.name}: calibrated image is {h.shape[0]} x {h.shape[1]} "
                    f"(rows x columns); expected a full SPOC FFI of {FFI_SHAPE[0]} x "
                    f"{FFI_SHAPE[1]}. Cropped or cutout files cannot be used."
                )
                raise FFISourceError(msg)
            if h.err_shape not in (FFI_SHAPE, SCIENCE_SHAPE):
                found = "missing" if h.err_shape is None else f"{h.err_shape[0]} x {h.err_shape[1]}"
                msg = (
                    f"{h.path.name}: uncertainty image (extension 2) is {found}; expected "
                    f"{FFI_SHAPE[0]} x {FFI_SHAPE[1]} or {SCIENCE_SHAPE[0]} x {SCIENCE_SHAPE[1]}."
                )
                raise FFISourceError(msg)
            if h.bunit is not None and h.bunit.strip() not in _ACCEPTED_BUNITS:
                msg = f"{h.path.name}: BUNIT is {h.bunit!r}; expected calibrated electrons/s."
                raise FFISourceError(msg)
            if not h.tstop > h.tstart:
                msg = f"{h.path.name}: TSTOP ({h.tstop}) is not after TSTART ({h.tstart})."
                raise FFISourceError(msg)
        keys = Counter((h.sector, h.camera, h.ccd) for h in headers)
        if len(keys) > 1:
            (sector, camera, ccd), count = keys.most_common(1)[0]
            odd = [h for h in headers if (h.sector, h.camera, h.ccd) != (sector, camera, ccd)]
            o = odd[0]
            msg = (
                f"FFI file {o.path.name} is sector {o.sector} camera {o.camera} CCD {o.ccd}, "
                f"but {count} of the {len(headers)} files are sector {sector} camera {camera} "
                f"CCD {ccd}; a source holds one sector/camera/CCD. Odd files: {_names(odd)}."
            )
            raise FFISourceError(msg)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read the science pixels of one frame (see `FFISource.read`).

        The file is memory-mapped and only the science region is copied (and
        byte-swapped) into new native float32 arrays.
        """
        index = self._check_index(index)
        path = self.paths[index]
        try:
            size = path.stat().st_size
        except OSError as exc:
            msg = f"{path}: cannot read the FFI ({exc}); was it moved or deleted?"
            raise FFISourceError(msg) from exc
        if size != self._sizes[index]:
            msg = (
                f"{path}: file size changed from {self._sizes[index]} to {size} bytes since "
                "the source was opened (truncated or rewritten?); reopen the source."
            )
            raise FFISourceError(msg)
        try:
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                flux = np.array(hdul[1].data[_SCIENCE], dtype=np.float32)
                err = hdul[2].data
                err = np.array(err[_SCIENCE] if self._full_err[index] else err, dtype=np.float32)
        except (OSError, IndexError, TypeError, ValueError) as exc:
            msg = f"{path}: cannot read the FFI images ({exc}); was the file changed or truncated?"
            raise FFISourceError(msg) from exc
        if flux.shape != SCIENCE_SHAPE or err.shape != SCIENCE_SHAPE:
            msg = f"{path}: images changed shape since the source was opened; reopen it."
            raise FFISourceError(msg)
        return flux, err


class SimulatedFFISource(FFISource):
    """Frames of an `~lk_scatterlight.simulate.FFISimulator`, generated on demand.

    Nothing is written to disk; each `read` generates the frame (about 0.15 s,
    0.5 s for frames with pointing defects) and returns its science pixels.
    With a ``region``, only that region's pixels are generated
    (`~lk_scatterlight.simulate.FFISimulator.science`), in time proportional
    to its area: a regional build of simulated data without whole frames.
    The simulator's truth (`~lk_scatterlight.simulate.FFISimulator.truth`)
    tells what a builder should recover.

    Parameters
    ----------
    simulator : `~lk_scatterlight.simulate.FFISimulator`
    region : `~lk_scatterlight.ccd.Region`, optional
        Science pixels to generate (1-based CCD rows and columns); default the
        whole CCD. A region's noise is drawn for the region alone, so its
        pixels differ from the whole frame's by the noise realisation
        (`crop` of a whole-CCD source keeps the whole frame's noise).
    """

    def __init__(self, simulator: FFISimulator, region: Region | None = None):
        self.simulator = simulator
        frames = [
            FrameInfo(
                i,
                float(simulator.time[i]),
                float(simulator.tstart[i]),
                float(simulator.tstop[i]),
                int(simulator.quality[i]),
                int(simulator.cadenceno[i]),
                simulator.filename(i),
            )
            for i in range(len(simulator))
        ]
        description = f"simulated: {simulator!r}"
        if region is not None and not region.is_full:
            self.region = region
            description += f", {region}"
        super().__init__(simulator.sector, simulator.camera, simulator.ccd, frames, description)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Generate one frame and return its science pixels (see `FFISource.read`)."""
        index = self._check_index(index)
        if not self.region.is_full:
            return self.simulator.science(index, self.region)
        flux, err = self.simulator.frame(index)
        return np.ascontiguousarray(flux[_SCIENCE]), np.ascontiguousarray(err[_SCIENCE])
