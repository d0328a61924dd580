"""A region of MAST's SPOC FFI cube on S3, read by byte ranges, with resume.

MAST serves each sector/camera/CCD's calibrated FFIs as one FITS cube,
``s3://stpubdata/tess/public/mast/tess-sSSSS-C-D-cube.fits``, laid out as
``tesscube`` and ``astrocut`` read it:

* bytes 0-5759: the primary header and the image header (one 2880-byte block each);
* from byte 5760: big-endian float32 pixels, numpy shape
  ``(2078, 2136, nframes, 2)`` (FFI row, FFI column, frame, flux/error), so each
  pixel's time series is contiguous and a run of columns of one row, over all
  frames, is one byte range;
* after the pixels (padded to 2880 bytes): a table with one row per FFI
  (``TSTART``, ``TSTOP``, ``DQUALITY``, ``FFI_FILE``, ...).

`FFICube` reads the headers and the frame table (two ranged GETs);
`download_region` reads the rows of a region, one GET per row, into a file
that an interrupted download resumes; `TessCubeRegionSource` serves the
downloaded region frame by frame to the cube builder.

Requests are anonymous (unsigned) and go through botocore, which honours
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (a mirror, or a local S3 server
in the tests). ``tesscube`` is not imported: importing it makes lkspacecraft
download SPICE kernels, which reading pixels never needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..ccd import FFI_SHAPE, Region, check_camera_ccd
from ..exceptions import FFISourceError
from ..utils import atomic_write
from .sources import FFISource, FrameInfo, sparse_read_rows
from .tesscube_source import BUCKET, _s3_error, frame_list

__all__ = ["FFICube", "TessCubeRegionSource", "download_region", "region_bytes"]

log = logging.getLogger(__name__)

_BLOCK = 2880
#: Byte offset of the first pixel value (after the primary and image headers).
DATA_OFFSET = 2 * _BLOCK
_VALUE_BYTES = 4  # float32
#: Frames read per block when the source serves frames (memory: block x region x 8 bytes).
FRAME_BLOCK = 64


def cube_key(sector: int, camera: int, ccd: int) -> str:
    """S3 key of MAST's SPOC FFI cube."""
    return f"tess/public/mast/tess-s{sector:04d}-{camera}-{ccd}-cube.fits"


def s3_client(concurrency: int = 8, timeout: float = 60.0):
    """An anonymous botocore S3 client (retries transient errors itself)."""
    try:
        import botocore.session
        from botocore import UNSIGNED
        from botocore.config import Config
    except ImportError as err:  # pragma: no cover - botocore is a dependency
        msg = "reading MAST's FFI cubes needs botocore: pip install botocore."
        raise FFISourceError(msg) from err
    session = botocore.session.get_session()
    config = Config(
        signature_version=UNSIGNED,
        max_pool_connections=max(10, concurrency),
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": 4, "mode": "standard"},
    )
    region = os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return session.create_client("s3", region_name=region, config=config)


def _get(client, key: str, start: int, stop: int | None = None) -> bytes:
    """Bytes ``start..stop-1`` (to the end if ``stop`` is None) of ``key``."""
    byte_range = f"bytes={start}-" if stop is None else f"bytes={start}-{stop - 1}"
    response = client.get_object(Bucket=BUCKET, Key=key, Range=byte_range)
    with contextlib.closing(response["Body"]) as body:
        return body.read()


class FFICube:
    """Headers and frame table of one MAST SPOC FFI cube.

    Parameters
    ----------
    sector, camera, ccd : int
    client : botocore S3 client, optional
        Default `s3_client`.

    Attributes
    ----------
    sector, camera, ccd : int
    key : str
        S3 key of the cube.
    nframes : int
    frames : list of `~lk_scatterlight.builder.sources.FrameInfo`
        Mid-times BTJD (TDB), ``DQUALITY`` bits and FFI names, in time order.
    table_bytes : int
        Size of the frame table that was read [bytes].

    Raises
    ------
    FFISourceError
        If the cube does not exist, cannot be reached, or is not a SPOC FFI cube.
    """

    def __init__(self, sector: int, camera: int, ccd: int, client=None):
        self.sector = int(sector)
        self.camera, self.ccd = check_camera_ccd(camera, ccd)
        self.key = cube_key(self.sector, self.camera, self.ccd)
        self.client = client or s3_client()
        what = f"the FFI cube of sector {self.sector} camera {self.camera} CCD {self.ccd}"
        try:
            head = _get(self.client, self.key, 0, DATA_OFFSET)
            image = fits.Header.fromstring(head[_BLOCK:DATA_OFFSET])
            shape = tuple(int(image[f"NAXIS{k}"]) for k in (4, 3, 2, 1))
            self.nframes = shape[2]
            end = DATA_OFFSET + int(np.prod(shape)) * _VALUE_BYTES
            table_bytes = _get(self.client, self.key, end)
        except FFISourceError:
            raise
        except KeyError as exc:
            msg = f"s3://{BUCKET}/{self.key} is not a MAST SPOC FFI cube: no {exc} in its header."
            raise FFISourceError(msg) from exc
        except Exception as exc:
            raise _s3_error(exc, what, self.key) from exc
        if shape[:2] != FFI_SHAPE or shape[3] != 2:
            msg = f"s3://{BUCKET}/{self.key} holds pixels of shape {shape}, not an FFI cube."
            raise FFISourceError(msg)
        self.table_bytes = len(table_bytes)
        self.primary = fits.Header.fromstring(head[:_BLOCK])
        first_cadence = int(self.primary.get("FFIINDEX", 0) or 0)
        self.frames = _frame_table(table_bytes.lstrip(b"\x00"), self.key, first_cadence)
        if len(self.frames) != self.nframes:
            msg = (
                f"s3://{BUCKET}/{self.key} has {self.nframes} planes but "
                f"{len(self.frames)} rows in its frame table."
            )
            raise FFISourceError(msg)

    def offset(self, row: int, column: int) -> int:
        """Byte offset of pixel (row, column) (1-based FFI pixels, collateral included)."""
        pixel = (row - 1) * FFI_SHAPE[1] + (column - 1)
        return DATA_OFFSET + pixel * self.nframes * 2 * _VALUE_BYTES


def _frame_table(data: bytes, key: str, first_cadence: int = 0) -> list[FrameInfo]:
    """The frames listed in a cube's last extension (its bytes, padding stripped)."""

    try:
        with fits.open(BytesIO(data), ignore_missing_simple=True, lazy_load_hdus=False) as hdul:
            table = hdul[0].data
            tstart = np.asarray(table["TSTART"], dtype=float)
            tstop = np.asarray(table["TSTOP"], dtype=float)
            quality = np.asarray(table["DQUALITY"], dtype=np.int64)
            names = [str(n).strip() for n in table["FFI_FILE"]]
            telapse = np.asarray(table["TELAPSE"], dtype=float)
    except Exception as exc:
        msg = f"s3://{BUCKET}/{key}: its frame table is unreadable ({type(exc).__name__}: {exc})."
        raise FFISourceError(msg) from exc
    if np.any(np.diff(tstart) < 0):
        msg = f"s3://{BUCKET}/{key}: its frame table is not in time order."
        raise FFISourceError(msg)
    return frame_list(tstart, tstop, quality, telapse, names, first_cadence)


def region_bytes(nframes: int, region: Region, row_step: int = 1) -> int:
    """Bytes a download of ``region`` over ``nframes`` frames reads (flux and error)."""
    nrows = sparse_read_rows(region.nrows, row_step).size
    return nrows * region.ncols * nframes * 2 * _VALUE_BYTES


# ---------------------------------------------------------------------- download
_META = "region.json"
_PIXELS = "pixels.f4"
_DONE = "rows_done.npy"
_FRAMES = "frames.json"


def _identity(cube: FFICube, region: Region, row_step: int) -> dict:
    return {
        "key": cube.key,
        "nframes": cube.nframes,
        "first_frame": cube.frames[0].name if cube.frames else "",
        "region": [region.row, region.column, region.nrows, region.ncols],
        "row_step": row_step,
        "first_read_row": int(sparse_read_rows(region.nrows, row_step)[0]),
    }


def download_region(
    cube: FFICube,
    region: Region,
    folder: str | os.PathLike,
    row_step: int = 1,
    concurrency: int = 8,
    attempts: int = 3,
    progress: bool = True,
) -> Path:
    """Download a region of the cube (all frames) into ``folder``, resuming a partial one.

    One ranged GET per region row read (every ``row_step``-th row,
    `~lk_scatterlight.builder.sources.sparse_read_rows`); up to
    ``concurrency`` at a time. Each row goes straight into a memory-mapped file,
    so memory holds at most ``concurrency`` rows. A list of finished rows is
    saved every few seconds (after the pixels are flushed), so an interrupted
    download (network drop, Ctrl-C) restarts where it stopped.

    Parameters
    ----------
    cube : `FFICube`
    region : `~lk_scatterlight.ccd.Region`
    folder : path-like
        Where the download lives (``region.json``, ``frames.json``,
        ``pixels.f4``, ``rows_done.npy``).
    row_step : int
        Read every ``row_step``-th row of the region.
    concurrency : int
        Requests in flight.
    attempts : int
        Tries per row (botocore also retries each request).
    progress : bool
        Show a progress bar in bytes.

    Returns
    -------
    folder : `~pathlib.Path`

    Raises
    ------
    FFISourceError
        If a row cannot be read after ``attempts`` tries (what was downloaded is
        kept: call again to resume).
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = region.row + sparse_read_rows(region.nrows, row_step)
    run = region.ncols * cube.nframes * 2 * _VALUE_BYTES
    identity = _identity(cube, region, row_step)
    meta_path, pixels_path, done_path = folder / _META, folder / _PIXELS, folder / _DONE
    fresh = not meta_path.exists() or json.loads(meta_path.read_text()) != identity
    if fresh:
        for path in (done_path, pixels_path):
            path.unlink(missing_ok=True)
        with atomic_write(folder / _FRAMES) as tmp:
            tmp.write_text(json.dumps([dataclasses.astuple(f) for f in cube.frames]))
        with atomic_write(meta_path) as tmp:
            tmp.write_text(json.dumps(identity))
    done = np.load(done_path) if done_path.exists() else np.zeros(rows.size, dtype=bool)
    shape = (rows.size, region.ncols, cube.nframes, 2)
    mode = "r+" if pixels_path.exists() else "w+"
    pixels = np.memmap(pixels_path, dtype=">f4", mode=mode, shape=shape)
    todo = np.flatnonzero(~done)
    if todo.size:
        log.info(
            "Downloading %s of s3://%s/%s (%d of %d rows, %.1f MB)",
            region,
            BUCKET,
            cube.key,
            todo.size,
            rows.size,
            todo.size * run / 1e6,
        )
    lock = threading.Lock()
    last_save = [time.monotonic()]

    def save() -> None:
        pixels.flush()
        with atomic_write(done_path) as tmp, open(tmp, "wb") as f:
            np.save(f, done)
        last_save[0] = time.monotonic()

    def fetch(k: int) -> int:
        start = cube.offset(int(rows[k]), region.column)
        for attempt in range(1, attempts + 1):
            try:
                data = _get(cube.client, cube.key, start, start + run)
                if len(data) != run:
                    msg = f"{len(data)} of {run} bytes arrived"
                    raise OSError(msg)
                break
            except Exception as exc:
                if attempt == attempts or _final(exc):
                    raise _s3_error(exc, f"row {rows[k]} of {region}", cube.key) from exc
                time.sleep(0.5 * 2**attempt)
        pixels[k] = np.frombuffer(data, dtype=">f4").reshape(shape[1:])
        with lock:
            done[k] = True
            if time.monotonic() - last_save[0] > 5:
                save()
        return len(data)

    bar = tqdm(
        total=rows.size * run,
        initial=int(done.sum()) * run,
        unit="B",
        unit_scale=True,
        desc=f"s{cube.sector:04d} {cube.camera}-{cube.ccd} region",
        disable=not progress,
    )
    pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)))
    try:
        for nbytes in pool.map(fetch, todo.tolist()):
            bar.update(nbytes)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        with lock:
            save()
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    save()
    return folder


def _final(exc: Exception) -> bool:
    """Whether an S3 error is not worth retrying (a missing key, refused access)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound", "AccessDenied", "403")
    return False


# ---------------------------------------------------------------------- source
class TessCubeRegionSource(FFISource):
    """The frames of a region of one CCD, from a download of MAST's FFI cube.

    Parameters
    ----------
    folder : path-like
        A finished `download_region` folder.
    sector, camera, ccd : int

    Raises
    ------
    FFISourceError
        If the folder does not hold a finished download.
    """

    def __init__(self, folder: str | os.PathLike, sector: int, camera: int, ccd: int):
        folder = Path(folder)
        try:
            meta = json.loads((folder / _META).read_text())
            frames = [FrameInfo(*row) for row in json.loads((folder / _FRAMES).read_text())]
            done = np.load(folder / _DONE)
        except (OSError, ValueError, TypeError) as exc:
            msg = f"{folder} does not hold a downloaded region of an FFI cube ({exc})."
            raise FFISourceError(msg) from exc
        if not done.all():
            msg = (
                f"the download in {folder} is incomplete ({int(done.sum())} of {done.size} "
                "rows); download_region() resumes it."
            )
            raise FFISourceError(msg)
        self.region = Region(*meta["region"])
        self.row_step = int(meta["row_step"])
        # Downloads made before the read rows were centred in their runs start at row 0.
        first = int(meta.get("first_read_row", 0))
        self._read_rows = np.arange(first, self.region.nrows, self.row_step)
        shape = (self._read_rows.size, self.region.ncols, len(frames), 2)
        self._pixels = np.memmap(folder / _PIXELS, dtype=">f4", mode="r", shape=shape)
        description = f"MAST FFI cube s3://{BUCKET}/{meta['key']}, {self.region}"
        if self.row_step > 1:
            description += f", every {self.row_step} rows"
        super().__init__(sector, camera, ccd, frames, description)

    def _frames(self, indices: np.ndarray) -> np.ndarray:
        """Flux and error of several frames, shape (n, 2, nrows, ncols), NaN on unread rows."""
        block = np.asarray(self._pixels[:, :, indices, :], dtype=np.float32)
        out = np.full((indices.size, 2, self.region.nrows, self.region.ncols), np.nan, np.float32)
        out[:, :, self._read_rows] = block.transpose(2, 3, 0, 1)
        return out

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._check_index(index)
        frame = self._frames(np.array([index]))[0]
        return frame[0], frame[1]

    def iter_read(
        self, indices: Iterable[int] | None = None, prefetch: int = 4
    ) -> Iterator[tuple[FrameInfo, np.ndarray, np.ndarray]]:
        """Frames in the given order, read `FRAME_BLOCK` at a time from the download."""
        order = list(range(len(self.frames))) if indices is None else list(indices)
        order = [self._check_index(i) for i in order]
        for start in range(0, len(order), FRAME_BLOCK):
            chunk = np.array(order[start : start + FRAME_BLOCK])
            block = self._frames(chunk)
            for k, index in enumerate(chunk.tolist()):
                yield self.frames[index], block[k, 0], block[k, 1]
