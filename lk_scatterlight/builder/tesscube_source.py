"""FFIs of one sector/camera/CCD read from MAST's public S3 bucket through tesscube.

`TessCubeSource` lists the frames of a sector from MAST's SPOC FFI cube
(``s3://stpubdata/tess/public/mast/tess-sSSSS-C-D-cube.fits``), whose last
extension is a table of every FFI's image header: ``TSTART``/``TSTOP``
(BTJD, TDB), ``DQUALITY`` and the file name ``FFI_FILE``. ``tesscube`` reads
that table (and the primary header) with two HTTP byte-range requests.

The pixels of one frame are scattered through the cube, which is stored
pixel-major (numpy shape ``(2078, 2136, nframes, 2)``: each pixel's time series
is contiguous), so a whole frame cannot be cut from it with a few byte ranges.
`TessCubeSource.read` therefore fetches the frame's calibrated FFI itself
(``s3://stpubdata/tess/public/ffi/sSSSS/YYYY/DDD/C-D/<FFI_FILE>``, ~35 MB,
one GET) with tesscube's ``async_get_ffi`` (what ``TESSCube.get_ffi`` calls),
and returns its science region. tesscube offers no multi-frame read; the
concurrency comes from `FFISource.iter_read`'s read-ahead threads.

Access is anonymous (unsigned requests). botocore honours ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``), which points tesscube at a mirror or a local S3
server, as the tests do.

``import tesscube`` builds an ``lkspacecraft.TESSSpacecraft``, which downloads
SPICE kernels from archive.stsci.edu and naif.jpl.nasa.gov unless
``lkspacecraft.enable_test_mode()`` (bundled, truncated kernels) or
``enable_offline_mode()`` (kernels already in the astropy cache) ran first;
tesscube is therefore imported only when a `TessCubeSource` is made, and a
failure there becomes an `~lk_scatterlight.exceptions.FFISourceError`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from ..ccd import SCIENCE_SLICE
from ..exceptions import FFISourceError
from .sources import FFI_SHAPE, FFISource, FrameInfo

__all__ = ["TessCubeSource"]

log = logging.getLogger(__name__)

#: MAST's public bucket (tesscube's ``BUCKET_NAME``).
BUCKET = "stpubdata"
#: Science region of an FFI (0-based rows 0:2048, columns 44:2092).
SCIENCE = SCIENCE_SLICE

_T = TypeVar("_T")

_SPICE_HINT = (
    "lkspacecraft downloads SPICE kernels (from archive.stsci.edu and naif.jpl.nasa.gov) "
    "when tesscube is first imported. Give this process network access, or call "
    "lkspacecraft.enable_offline_mode() (kernels already cached) or "
    "lkspacecraft.enable_test_mode() (bundled truncated kernels; enough for reading FFIs) "
    "before the first TessCubeSource is made."
)


def _raised_in(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether any frame of the exception's traceback (or its causes') is in ``packages``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            parts = frame.filename.replace("\\", "/").split("/")
            if any(package in parts for package in packages):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_tesscube_module(name: str) -> bool:
    return name == "tesscube" or name.startswith("tesscube.")


def _import_tesscube() -> tuple[ModuleType, ModuleType]:
    """Import tesscube (and ``tesscube.query``), turning failures into `FFISourceError`.

    A failed import leaves no half-initialised tesscube modules (or extra log
    handlers) behind, so that it can be retried, e.g. after
    ``lkspacecraft.enable_test_mode()``.
    """
    before = {name for name in sys.modules if _is_tesscube_module(name)}
    logger = logging.getLogger("tesscube")
    handlers = list(logger.handlers)
    try:
        return importlib.import_module("tesscube"), importlib.import_module("tesscube.query")
    except Exception as exc:
        for name in [n for n in sys.modules if _is_tesscube_module(n) and n not in before]:
            del sys.modules[name]
        logger.handlers[:] = handlers
        if isinstance(exc, ModuleNotFoundError) and exc.name == "tesscube":
            msg = (
                "TessCubeSource needs the optional package tesscube: "
                "pip install 'lk_scatterlight[builder]'."
            )
        elif _raised_in(exc, ("lkspacecraft", "spiceypy")):
            msg = (
                "importing tesscube failed while lkspacecraft loaded its SPICE kernels "
                f"({type(exc).__name__}: {exc}). {_SPICE_HINT}"
            )
        else:
            msg = f"importing tesscube failed: {type(exc).__name__}: {exc}."
        raise FFISourceError(msg) from exc


def _run(func: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
    """Run ``func(*args)`` to completion on a private event loop.

    Safe from worker threads and from inside a running loop (Jupyter), where
    it runs on a helper thread; unlike ``asyncio.run`` it does not depend on
    the thread's current loop (which ``nest_asyncio`` would look up).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_here(func, *args)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tesscube") as pool:
        return pool.submit(_run_here, func, *args).result()


def _run_here(func: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(func(*args))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _endpoint() -> str:
    """Where S3 requests go, for messages."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f"endpoint {url}" if url else "AWS"


def _s3_error(exc: Exception, what: str, key: str) -> FFISourceError:
    """Translate a failed S3 read of ``key`` into an `FFISourceError`."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    url = f"s3://{BUCKET}/{key}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return FFISourceError(f"{what} does not exist: {url} ({_endpoint()}).")
        return FFISourceError(
            f"MAST's S3 bucket refused to serve {what} ({url}, {_endpoint()}): "
            f"{code} {error.get('Message', '')}".rstrip()
            + "."
        )
    if isinstance(exc, (ConnectionError, HTTPClientError, OSError, asyncio.TimeoutError)):
        return FFISourceError(
            f"cannot reach MAST's S3 bucket s3://{BUCKET} ({_endpoint()}) to read {what} "
            f"({url}): {exc}. Reading FFIs with tesscube needs network access to AWS S3, or "
            "AWS_ENDPOINT_URL set to a reachable mirror."
        )
    return FFISourceError(f"reading {what} {url} failed: {type(exc).__name__}: {exc}.")


def _ffi_key(name: str) -> str:
    """S3 key of an FFI, derived from its name as ``tesscube.query.async_get_ffi`` does."""
    date, sector, camera, ccd, _, _ = name[4:].split("-")
    return f"tess/public/ffi/{sector}/{date[:4]}/{date[4:7]}/{camera}-{ccd}/{name}"


def _cadence_numbers(tstart: np.ndarray, tstop: np.ndarray, telapse: np.ndarray) -> np.ndarray:
    """FFI intervals since the first frame (gaps counted), as tesscube's ``cadence_number``."""
    if tstop.size < 2:
        return np.zeros(tstop.size, dtype=np.int64)
    step = np.nanmedian(telapse)
    if not np.isfinite(step) or step <= 0:
        step = np.median(np.diff(tstart))
    steps = np.round(np.diff(tstop) / step).astype(np.int64)
    return np.concatenate([[0], np.cumsum(steps)])


def frame_list(tstart, tstop, quality, telapse, names, first_cadence: int = 0) -> list[FrameInfo]:
    """`FrameInfo` of every row of a MAST FFI cube's frame table (time-sorted rows).

    Parameters
    ----------
    tstart, tstop : array of float
        Exposure start and stop, BTJD [d]; the frame time is their mean.
    quality : array of int
        SPOC ``DQUALITY`` bits.
    telapse : array of float
        Exposure durations [d], for the cadence numbers.
    names : sequence of str
        FFI file names.
    first_cadence : int
        ``FFIINDEX`` of the first frame (cube primary header).
    """
    cadenceno = first_cadence + _cadence_numbers(tstart, tstop, telapse)
    return [
        FrameInfo(
            index=i,
            time=float((tstart[i] + tstop[i]) / 2),
            tstart=float(tstart[i]),
            tstop=float(tstop[i]),
            quality=int(quality[i]),
            cadenceno=int(cadenceno[i]),
            name=names[i],
        )
        for i in range(len(names))
    ]


class TessCubeSource(FFISource):
    """The FFIs of one sector, camera and CCD, read from MAST's S3 bucket with tesscube.

    Parameters
    ----------
    sector, camera, ccd : int
        Which cube (SPOC FFIs; TICA cubes are not supported).
    prefetch : int
        Default number of frames `iter_read` reads ahead (each a ~35 MB
        download, held decoded in memory until consumed).

    Attributes
    ----------
    sector, camera, ccd : int
    frames : list of `~lk_scatterlight.builder.sources.FrameInfo`
        One per cube plane, in time order. ``time`` is the mid-exposure
        ``(TSTART + TSTOP) / 2`` [BTJD, TDB], ``quality`` the SPOC ``DQUALITY``
        bits, ``cadenceno`` the first FFI's ``FFIINDEX`` (cube primary header)
        plus the FFI intervals since the first frame, ``name`` the FFI file name.
    description : str
        ``"tesscube sSSSS C-D (s3://stpubdata/<cube key>)"``.
    object_key : str
        S3 key of the cube.
    prefetch : int

    Raises
    ------
    FFISourceError
        If tesscube is missing or cannot start (SPICE kernels), MAST's bucket
        cannot be reached, or the cube does not exist or is malformed.

    Notes
    -----
    ``tesscube`` caches cube headers per S3 key for the whole process
    (``tesscube.query.get_primary_hdu``/``get_last_hdu``), whatever the endpoint.

    Examples
    --------
    >>> import lkspacecraft
    >>> lkspacecraft.enable_test_mode()  # or network access for the SPICE kernels
    >>> from lk_scatterlight.builder.tesscube_source import TessCubeSource
    >>> source = TessCubeSource(1, 1, 1)  # doctest: +SKIP
    >>> for frame, flux, flux_err in source.iter_read():  # doctest: +SKIP
    ...     print(frame.time, flux.shape)
    """

    def __init__(self, sector: int, camera: int, ccd: int, prefetch: int = 4) -> None:
        sector, camera, ccd = int(sector), int(camera), int(ccd)
        self.prefetch = int(prefetch)
        tesscube, query = _import_tesscube()
        self._async_get_ffi = query.async_get_ffi
        self.object_key = f"tess/public/mast/tess-s{sector:04d}-{camera}-{ccd}-cube.fits"
        url = f"s3://{BUCKET}/{self.object_key}"
        what = f"the FFI cube of sector {sector} camera {camera} CCD {ccd}"
        start = time.perf_counter()
        try:
            cube = tesscube.TESSCube(sector=sector, camera=camera, ccd=ccd)
            table = cube.last_hdu.data
            tstart = np.asarray(table["TSTART"], dtype=np.float64)
            tstop = np.asarray(table["TSTOP"], dtype=np.float64)
            quality = np.asarray(table["DQUALITY"], dtype=np.int64)
            telapse = np.asarray(table["TELAPSE"], dtype=np.float64)
            names = [str(name).strip() for name in table["FFI_FILE"]]
            ffiindex = int(cube.primary_hdu.header.get("FFIINDEX", 0) or 0)
        except FFISourceError:
            raise
        except KeyError as exc:
            msg = f"{url} is not a MAST SPOC FFI cube: no {exc}."
            raise FFISourceError(msg) from exc
        except Exception as exc:
            raise _s3_error(exc, what, self.object_key) from exc
        if not (len(tstart) == len(names) == cube.nframes) or cube.shape[1:] != FFI_SHAPE:
            msg = (
                f"{url} is not a MAST SPOC FFI cube: {cube.nframes} planes of "
                f"{cube.shape[1:]} pixels and {len(names)} table rows."
            )
            raise FFISourceError(msg)
        self._cube = cube
        frames = frame_list(tstart, tstop, quality, telapse, names, ffiindex)
        description = f"tesscube s{sector:04d} {camera}-{ccd} ({url})"
        super().__init__(sector, camera, ccd, frames, description)
        log.info(
            "%s: %d frames, BTJD %.5f to %.5f (%.2f s)",
            description,
            len(frames),
            tstart.min() if len(tstart) else np.nan,
            tstop.max() if len(tstop) else np.nan,
            time.perf_counter() - start,
        )

    def __reduce__(self) -> tuple:
        """Pickle as the frame list; tesscube is imported again on first use (a Dask worker).

        The opened MAST cube is not sent (reading frames does not need it), and the
        lkspacecraft test/offline modes of this process go along.
        """
        state = {k: v for k, v in self.__dict__.items() if k not in ("_cube", "_async_get_ffi")}
        modes = {"test": False, "offline": False}
        spacecraft = sys.modules.get("lkspacecraft")
        if spacecraft is not None:
            modes = {"test": spacecraft.is_test_mode(), "offline": spacecraft.is_offline_mode()}
        return _restore_tesscube, (type(self), state, modes)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Download frame ``index``'s FFI (one GET) and return its science region.

        Parameters
        ----------
        index : int
            Position in `frames`.

        Returns
        -------
        flux, flux_err : ndarray of float32, shape (2048, 2048)
            Calibrated flux and its 1-sigma error [e-/s] in rows 0:2048, columns
            44:2092 (0-based) of the FFI; fresh native-endian arrays.

        Raises
        ------
        FFISourceError
            If the index is out of range, or the FFI cannot be downloaded or is
            not the SPOC calibrated FFI the cube lists.
        """
        index = self._check_index(index)
        info = self.frames[index]
        try:
            key = _ffi_key(info.name)
        except ValueError as exc:
            msg = f"{self.description}: frame {index} has an unexpected FFI name {info.name!r}."
            raise FFISourceError(msg) from exc
        url = f"s3://{BUCKET}/{key}"
        start = time.perf_counter()
        try:
            hdulist = _run(self._async_get_ffi, info.name)
        except Exception as exc:
            raise _s3_error(exc, f"the FFI of frame {index}", key) from exc
        with hdulist:
            if len(hdulist) < 3 or any(
                getattr(hdulist[k], "shape", None) != FFI_SHAPE for k in (1, 2)
            ):
                msg = (
                    f"{url} is not a SPOC calibrated FFI (needs {FFI_SHAPE} flux and "
                    "uncertainty images in HDUs 1 and 2)."
                )
                raise FFISourceError(msg)
            header_tstart = hdulist[1].header.get("TSTART")
            if header_tstart is not None and abs(header_tstart - info.tstart) > 1e-6:
                msg = (
                    f"{url} starts at TSTART={header_tstart}, but the cube lists frame {index} "
                    f"at {info.tstart}."
                )
                raise FFISourceError(msg)
            flux = np.array(hdulist[1].data[SCIENCE], dtype=np.float32)
            flux_err = np.array(hdulist[2].data[SCIENCE], dtype=np.float32)
        log.debug("read %s (frame %d) in %.2f s", info.name, index, time.perf_counter() - start)
        return flux, flux_err

    def iter_read(
        self, indices: Iterable[int] | None = None, prefetch: int | None = None
    ) -> Iterator[tuple[FrameInfo, np.ndarray, np.ndarray]]:
        """Read frames in order with read-ahead (see `FFISource.iter_read`).

        ``prefetch`` defaults to the source's `prefetch`.
        """
        prefetch = self.prefetch if prefetch is None else prefetch
        return super().iter_read(indices, prefetch=prefetch)


class _LazyGetFFI:
    """``tesscube.query.async_get_ffi``, imported on the first call (on a worker)."""

    def __init__(self, modes: dict[str, bool]):
        self.modes = dict(modes)
        self._func: Callable | None = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple:
        return _LazyGetFFI, (self.modes,)

    def __call__(self, name: str) -> Any:
        with self._lock:
            if self._func is None:
                if any(self.modes.values()):
                    import lkspacecraft

                    if self.modes.get("test"):
                        lkspacecraft.enable_test_mode()
                    if self.modes.get("offline"):
                        lkspacecraft.enable_offline_mode()
                _, query = _import_tesscube()
                self._func = query.async_get_ffi
        return self._func(name)


def _restore_tesscube(cls: type, state: dict, modes: dict[str, bool]) -> TessCubeSource:
    """Unpickle a `TessCubeSource` (see ``TessCubeSource.__reduce__``)."""
    source = cls.__new__(cls)
    source.__dict__.update(state)
    source._cube = None  # the opened cube is not needed to read frames
    source._async_get_ffi = _LazyGetFFI(modes)
    return source
