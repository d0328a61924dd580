"""Published scattered-light cubes and models: the registry, downloads and the cache.

Published cubes and learned models are listed in a registry file shipped with the package
(``lk_scatterlight/data/registry.txt``, pooch's ``name sha256:HASH url``
format) and downloaded on demand with `pooch`, which checks every file against
its SHA256 hash, retries failed downloads and writes through a temporary file,
so the cache never holds a partial or unverified file.

Settings are read each time a function runs, never at import:

* cache folder: the ``cache_dir`` argument, else ``LK_SCATTERLIGHT_CACHE``,
  else ``conf.cache_dir``, else ``pooch.os_cache("lk_scatterlight")``;
* download URLs: those in the registry, unless ``LK_SCATTERLIGHT_URL`` (or
  ``conf.registry_url``) gives a base URL, making each ``<base>/<file name>``;
* registry file: the shipped one, unless ``LK_SCATTERLIGHT_REGISTRY`` names
  another (mirrors, tests); `lk_scatterlight.registry_file` locates it;
* download timeout [s]: ``LK_SCATTERLIGHT_TIMEOUT``, else ``conf.timeout``.

An environment variable always wins over its ``conf`` item.

File names encode what a cube holds: ``lk-scatterlight_s0002_1-1_bin16_v1.fits``
is sector 2, camera 1, CCD 1, 16x16-pixel bins, cube format version 1 (see
`cube_filename` and `parse_cube_filename`); ``lk-scatterlight-model_s1-25_v1.npz``
is the learned model named ``"s1-25"`` in model format version 1 (see
`model_filename` and `parse_model_filename`), fetched by
``ScatterLightModel.load("s1-25")``.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
import threading
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import pooch
from astropy.table import Table

from .ccd import CAMERAS, CCDS, check_sector
from .cube import FORMAT_VERSION, ScatterLightCube
from .exceptions import (
    CubeFormatError,
    CubeNotFoundError,
    DownloadError,
    ModelNotFoundError,
    ScatterLightError,
)
from .registry_file import REGISTRY_ENV, registry_file

__all__ = [
    "fetch_cube",
    "load_cube",
    "available_cubes",
    "cube_filename",
    "parse_cube_filename",
    "CubeName",
    "fetch_model",
    "available_models",
    "model_filename",
    "parse_model_filename",
    "is_model_name",
    "ModelName",
    "get_pooch",
    "get_cache_dir",
    "CACHE_ENV",
    "URL_ENV",
    "REGISTRY_ENV",
    "TIMEOUT_ENV",
]

log = logging.getLogger(__name__)

#: Environment variable overriding the cache folder (wins over ``conf.cache_dir``).
CACHE_ENV = "LK_SCATTERLIGHT_CACHE"
#: Environment variable overriding the base download URL (wins over ``conf.registry_url``).
URL_ENV = "LK_SCATTERLIGHT_URL"
#: Environment variable overriding the download timeout [s] (wins over ``conf.timeout``).
TIMEOUT_ENV = "LK_SCATTERLIGHT_TIMEOUT"
#: Extra download attempts after a failure (pooch waits 1 s, then 2 s, between them).
RETRIES = 2
#: Project name of the default cache folder, ``pooch.os_cache(CACHE_NAME)``.
CACHE_NAME = "lk_scatterlight"
#: Name of the model shipped with the package (`lk_scatterlight.model.DEFAULT_MODEL`),
#: never a published model's. (The model module imports this one, not the reverse.)
SHIPPED_MODEL = "default"

_NAME_RE = re.compile(
    r"^lk-scatterlight_s(?P<sector>\d+)_(?P<camera>\d+)-(?P<ccd>\d+)"
    r"_bin(?P<bin>\d+)_v(?P<version>\d+)\.fits$"
)
_NAME_PATTERN = "lk-scatterlight_s<SSSS>_<camera>-<ccd>_bin<N>_v<V>.fits"
#: A model name: lower-case letters and digits, in groups joined by single hyphens.
_MODEL_NAME = r"[a-z0-9]+(?:-[a-z0-9]+)*"
_MODEL_RE = re.compile(rf"^lk-scatterlight-model_(?P<name>{_MODEL_NAME})_v(?P<version>\d+)\.npz$")
_MODEL_PATTERN = "lk-scatterlight-model_<name>_v<V>.npz"


class CubeName(NamedTuple):
    """What a published cube file name encodes.

    Attributes
    ----------
    sector, camera, ccd : int
        Where the cube belongs (camera and CCD 1-4).
    bin : int
        Pixel bin size in rows and columns [pixel].
    version : int
        Cube format version (see `lk_scatterlight.cube.FORMAT_VERSION`).
    """

    sector: int
    camera: int
    ccd: int
    bin: int
    version: int


class ModelName(NamedTuple):
    """What a published model file name encodes.

    Attributes
    ----------
    name : str
        The model's name, as given to `~lk_scatterlight.ScatterLightModel.load`.
    version : int
        Model file format version (see `lk_scatterlight.model.MODEL_VERSION`).
    """

    name: str
    version: int


# ---------------------------------------------------------------------- file names
def cube_filename(
    sector: int, camera: int, ccd: int, bin: int, version: int = FORMAT_VERSION
) -> str:
    """Name of the published file holding a cube.

    Parameters
    ----------
    sector : int
        TESS sector (>= 1), written zero-padded to four digits.
    camera, ccd : int
        1-4.
    bin : int
        Pixel bin size [pixel] (>= 1).
    version : int, optional
        Cube format version; default `~lk_scatterlight.cube.FORMAT_VERSION`.

    Returns
    -------
    name : str
        For example ``"lk-scatterlight_s0002_1-1_bin16_v1.fits"``.

    Raises
    ------
    ValueError
        If a number is out of range.

    Examples
    --------
    >>> cube_filename(2, 1, 1, 16, version=1)
    'lk-scatterlight_s0002_1-1_bin16_v1.fits'
    """
    sector, camera, ccd = _check_ids(sector, camera, ccd)
    bin = _as_int("bin", bin, 1)
    version = _as_int("version", version, 1)
    return f"lk-scatterlight_s{sector:04d}_{camera}-{ccd}_bin{bin}_v{version}.fits"


def parse_cube_filename(name: str | os.PathLike) -> CubeName:
    """Read sector, camera, CCD, pixel bin and format version from a cube file name.

    The inverse of `cube_filename`; only canonical names are accepted (no
    extra leading zeros), so ``cube_filename(*parse_cube_filename(n)) == n``.

    Parameters
    ----------
    name : str or path-like
        File name; a path is reduced to its last component.

    Returns
    -------
    parsed : `CubeName`

    Raises
    ------
    CubeFormatError
        If the name does not follow ``lk-scatterlight_s<SSSS>_<camera>-<ccd>_bin<N>_v<V>.fits``.

    Examples
    --------
    >>> parse_cube_filename("lk-scatterlight_s0002_1-1_bin16_v1.fits")
    CubeName(sector=2, camera=1, ccd=1, bin=16, version=1)
    """
    base = Path(name).name
    match = _NAME_RE.match(base)
    problem = None
    if match is None:
        problem = "it does not match the pattern"
    else:
        try:
            parsed = CubeName(*(int(v) for v in match.groups()))
            if cube_filename(*parsed) != base:
                problem = f"it is not canonical (expected {cube_filename(*parsed)!r})"
        except ValueError as err:
            problem = str(err)
    if problem is not None:
        raise CubeFormatError(
            f"{base!r} is not a published cube file name: {problem} {_NAME_PATTERN} "
            "(sector zero-padded to 4 digits, camera and CCD 1-4, e.g. "
            "'lk-scatterlight_s0002_1-1_bin16_v1.fits')."
        )
    return parsed


def is_model_name(text: str) -> bool:
    """True if ``text`` can name a published model (``"s1-25"``, ``"earth-moon"``).

    Lower-case letters and digits in groups joined by single hyphens, and not
    ``"default"``, the model shipped with the package.
    """
    return (
        isinstance(text, str)
        and text != SHIPPED_MODEL
        and re.fullmatch(_MODEL_NAME, text) is not None
    )


def model_filename(name: str, version: int) -> str:
    """Name of the published file holding a learned model.

    Parameters
    ----------
    name : str
        The model's name (`is_model_name`): lower-case letters and digits in
        groups joined by single hyphens; ``"default"`` is reserved for the
        shipped model.
    version : int
        Model format version, e.g. `~lk_scatterlight.model.MODEL_VERSION`.

    Returns
    -------
    filename : str
        For example ``"lk-scatterlight-model_s1-25_v1.npz"``.

    Raises
    ------
    ValueError
        If the name is not a valid model name or the version is below 1.

    Examples
    --------
    >>> model_filename("s1-25", 1)
    'lk-scatterlight-model_s1-25_v1.npz'
    """
    if not is_model_name(name):
        reserved = " ('default' is the shipped model)" if name == SHIPPED_MODEL else ""
        raise ValueError(
            f"{name!r} is not a model name{reserved}: use lower-case letters and digits in "
            "groups joined by single hyphens, e.g. 's1-25' or 'earth-moon'."
        )
    version = _as_int("version", version, 1)
    return f"lk-scatterlight-model_{name}_v{version}.npz"


def parse_model_filename(filename: str | os.PathLike) -> ModelName:
    """Read the model name and format version from a published model file name.

    The inverse of `model_filename`.

    Parameters
    ----------
    filename : str or path-like
        File name; a path is reduced to its last component.

    Returns
    -------
    parsed : `ModelName`

    Raises
    ------
    ValueError
        If the name does not follow ``lk-scatterlight-model_<name>_v<V>.npz``.

    Examples
    --------
    >>> parse_model_filename("lk-scatterlight-model_s1-25_v1.npz")
    ModelName(name='s1-25', version=1)
    """
    base = Path(filename).name
    match = _MODEL_RE.match(base)
    if match is None or match["name"] == SHIPPED_MODEL:
        raise ValueError(
            f"{base!r} is not a published model file name: it does not match "
            f"{_MODEL_PATTERN} (name of lower-case letters, digits and single hyphens, not "
            "'default'; e.g. 'lk-scatterlight-model_s1-25_v1.npz')."
        )
    parsed = ModelName(match["name"], int(match["version"]))
    if model_filename(*parsed) != base:
        raise ValueError(
            f"{base!r} is not a published model file name: it is not canonical (expected "
            f"{model_filename(*parsed)!r})."
        )
    return parsed


def _is_cube(filename: str) -> bool:
    """True for a cube entry of the registry, False for a model entry."""
    return not filename.startswith("lk-scatterlight-model_")


# ---------------------------------------------------------------------- settings
def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder where downloaded cubes and models are kept.

    In order of precedence: the ``cache_dir`` argument, the environment
    variable ``LK_SCATTERLIGHT_CACHE``, ``lk_scatterlight.conf.cache_dir`` and
    finally ``pooch.os_cache("lk_scatterlight")`` (e.g.
    ``~/.cache/lk_scatterlight`` on Linux). Nothing is created here; the folder
    is made on the first download.

    Parameters
    ----------
    cache_dir : str or path-like, optional
        Explicit folder.

    Returns
    -------
    path : `~pathlib.Path`
    """
    from . import conf

    for value in (cache_dir, os.environ.get(CACHE_ENV), conf.cache_dir):
        if value is not None and str(value).strip():
            return Path(str(value).strip()).expanduser()
    return Path(pooch.os_cache(CACHE_NAME))


def _base_url() -> str | None:
    from . import conf

    for value in (os.environ.get(URL_ENV), conf.registry_url):
        if value is not None and value.strip():
            return value.strip().rstrip("/") + "/"
    return None


def _timeout() -> float:
    from . import conf

    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return float(conf.timeout)
    try:
        return float(value)
    except ValueError as err:
        raise ScatterLightError(
            f"{TIMEOUT_ENV}={value!r} is not a number of seconds; set it to e.g. 60 or unset it."
        ) from err


def get_pooch(cache_dir: str | os.PathLike | None = None) -> pooch.Pooch:
    """The `pooch.Pooch` managing the published cubes under the current settings.

    The instance is cached per combination of cache folder, registry file
    (path and modification time) and base URL, so changing an environment
    variable or a ``conf`` item takes effect on the next call. Creating it
    touches neither the network nor the cache folder.

    Parameters
    ----------
    cache_dir : str or path-like, optional
        Cache folder; see `get_cache_dir`.

    Returns
    -------
    pup : `pooch.Pooch`

    Raises
    ------
    ScatterLightError
        If the registry file cannot be read or lists an invalid entry.
    """
    registry = registry_file()
    try:
        stat = os.stat(registry)  # type: ignore[arg-type]
        stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except TypeError:  # packaged inside a zip: it cannot change
        stamp = None
    return _make_pooch(str(get_cache_dir(cache_dir)), registry, stamp, _base_url())


@functools.lru_cache(maxsize=16)
def _make_pooch(cache: str, registry, stamp: tuple[int, int] | None, base_url: str | None):
    pup = pooch.create(path=cache, base_url=base_url or "", retry_if_failed=RETRIES)
    try:
        with resources.as_file(registry) as path:
            pup.load_registry(path)
    except OSError as err:  # pooch reports a malformed line as OSError
        raise ScatterLightError(f"Cannot read the cube registry {registry}: {err}") from err
    if base_url is not None:
        pup.urls = {}  # every file is <base>/<name>
    for name in pup.registry:
        try:
            parse_cube_filename(name) if _is_cube(name) else parse_model_filename(name)
        except ValueError as err:  # CubeFormatError is a ValueError
            raise ScatterLightError(
                f"The cube registry {registry} lists an invalid entry: {err}"
            ) from err
        if base_url is None and name not in pup.urls:
            raise ScatterLightError(
                f"The cube registry {registry} gives no URL for {name}; add it as the third "
                f"field of the line, or set {URL_ENV} to the base URL of the files."
            )
    log.debug("Registry %s: %d files, cache %s", registry, len(pup.registry), cache)
    return pup


# ---------------------------------------------------------------------- public API
def available_cubes() -> Table:
    """Table of the published cubes (read from the registry; no network).

    Returns
    -------
    table : `~astropy.table.Table`
        One row per file, sorted, with columns ``sector``, ``camera``,
        ``ccd``, ``bin`` [pixel], ``version`` (cube format), ``filename`` and
        ``url``. Empty (with these columns) when nothing is published.
        ``table.meta["registry"]`` names the registry file.

    Examples
    --------
    >>> table = available_cubes()
    >>> table.colnames
    ['sector', 'camera', 'ccd', 'bin', 'version', 'filename', 'url']
    """
    pup = get_pooch()
    rows = sorted((parse_cube_filename(name), name) for name in pup.registry if _is_cube(name))
    columns = [[getattr(cube, key) for cube, _ in rows] for key in CubeName._fields]
    columns += [[name for _, name in rows], [pup.get_url(name) for _, name in rows]]
    table = Table(
        columns,
        names=[*CubeName._fields, "filename", "url"],
        dtype=[int] * len(CubeName._fields) + [str, str],
    )
    table["bin"].unit = "pixel"
    table.meta["registry"] = str(registry_file())
    return table


def fetch_cube(
    sector: int,
    camera: int,
    ccd: int,
    bin: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progressbar: bool = True,
) -> Path:
    """Path of the published cube of a sector/camera/CCD, downloading it if needed.

    A cached file is used as it is when its SHA256 hash matches the registry
    (no network access); a missing or corrupt one is downloaded again, up to
    three attempts, into a temporary file that is hash-checked before it is
    renamed into place. Concurrent calls, also from several processes, are
    safe.

    Parameters
    ----------
    sector : int
        TESS sector.
    camera, ccd : int
        1-4.
    bin : int, optional
        Pixel bin size [pixel]; default the finest one published. Among
        format versions the highest this package reads is taken.
    cache_dir : str or path-like, optional
        Cache folder; default from ``LK_SCATTERLIGHT_CACHE``,
        ``conf.cache_dir`` or the operating system's cache (see `get_cache_dir`).
    progressbar : bool, optional
        Show a download progress bar (tqdm) on stderr.

    Returns
    -------
    path : `~pathlib.Path`
        The cached cube file.

    Raises
    ------
    ValueError
        If ``sector`` is not 1..`~lk_scatterlight.ccd.LATEST_SECTOR` or
        ``camera``, ``ccd`` or ``bin`` is out of range.
    CubeNotFoundError
        If no cube is published for the request; the message lists the
        nearest published ones and how to build the cube locally.
    DownloadError
        If the download fails (server unreachable, HTTP error, timeout) or the
        downloaded file does not match its registry hash.

    Examples
    --------
    >>> from lk_scatterlight import fetch_cube
    >>> path = fetch_cube(2, 1, 1)  # doctest: +SKIP
    """
    sector, camera, ccd = _check_ids(sector, camera, ccd)
    check_sector(sector)  # no cube can exist, nor be built, for a sector beyond tesswcs's
    if bin is not None:
        bin = _as_int("bin", bin, 1)
    pup = get_pooch(cache_dir)
    name = _select(pup, sector, camera, ccd, bin)
    what = f"sector {sector} camera {camera} CCD {ccd}"
    return _download(pup, name, what, _build_hint(sector, camera, ccd), progressbar)


def load_cube(
    sector: int,
    camera: int,
    ccd: int,
    bin: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progressbar: bool = True,
) -> ScatterLightCube:
    """Open the published cube of a sector/camera/CCD, downloading it if needed.

    `fetch_cube` followed by `~lk_scatterlight.ScatterLightCube.read`; the parameters and
    errors are those of `fetch_cube`.

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`

    Raises
    ------
    CubeNotFoundError, DownloadError
        See `fetch_cube`.
    CubeFormatError
        If the file cannot be read or holds another sector/camera/CCD than its
        name says.
    """
    path = fetch_cube(sector, camera, ccd, bin, cache_dir=cache_dir, progressbar=progressbar)
    cube = ScatterLightCube.read(path)
    found, wanted = (cube.sector, cube.camera, cube.ccd), (int(sector), int(camera), int(ccd))
    if found != wanted:
        raise CubeFormatError(
            f"{path} holds sector/camera/CCD {found}, not {wanted} as its registry entry "
            "says; the registry is wrong, please report it."
        )
    return cube


def available_models() -> Table:
    """Table of the published learned models (read from the registry; no network).

    The model shipped with the package, ``"default"``, needs no download and
    is not listed.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per file, sorted, with columns ``name``, ``version`` (model
        format), ``filename`` and ``url``; empty (with these columns) when no
        model is published. ``table.meta["registry"]`` names the registry file.

    Examples
    --------
    >>> available_models().colnames
    ['name', 'version', 'filename', 'url']
    """
    pup = get_pooch()
    rows = sorted((parse_model_filename(name), name) for name in pup.registry if not _is_cube(name))
    table = Table(
        [
            [model.name for model, _ in rows],
            [model.version for model, _ in rows],
            [name for _, name in rows],
            [pup.get_url(name) for _, name in rows],
        ],
        names=["name", "version", "filename", "url"],
        dtype=[str, int, str, str],
    )
    table.meta["registry"] = str(registry_file())
    return table


def fetch_model(
    name: str,
    *,
    max_version: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progressbar: bool = True,
) -> Path:
    """Path of a published learned model, downloading it if needed.

    Hash-checked and cached exactly like a cube (`fetch_cube`). Among the
    model format versions published under ``name``, the highest up to
    ``max_version`` is taken. `~lk_scatterlight.ScatterLightModel.load` calls
    this, with ``max_version=MODEL_VERSION``, for a name that is neither
    ``"default"`` nor an existing file.

    Parameters
    ----------
    name : str
        Model name (`is_model_name`), e.g. ``"s1-25"``; see `available_models`.
    max_version : int, optional
        Highest model format version the caller reads
        (`lk_scatterlight.model.MODEL_VERSION`); default any.
    cache_dir : str or path-like, optional
        Cache folder (see `get_cache_dir`).
    progressbar : bool, optional
        Show a download progress bar (tqdm) on stderr.

    Returns
    -------
    path : `~pathlib.Path`
        The cached ``.npz`` model file.

    Raises
    ------
    ModelNotFoundError
        If no model of that name is published (the message lists the published
        ones), or only in a format this package cannot read.
    DownloadError
        If the download fails or the downloaded file does not match its hash.

    Examples
    --------
    >>> from lk_scatterlight.registry import fetch_model
    >>> path = fetch_model("s1-25")  # doctest: +SKIP
    """
    pup = get_pooch(cache_dir)
    published = {
        parse_model_filename(entry): entry for entry in pup.registry if not _is_cube(entry)
    }
    names = sorted({model.name for model in published})
    instead = "give a model file path, or 'default' for the model shipped with lk_scatterlight"
    if name not in names:
        listed = (
            f"published models: {', '.join(names)}"
            if names
            else f"no models are published yet (the registry {registry_file()} lists none)"
        )
        raise ModelNotFoundError(
            f"No model named {name!r} is published; {listed}. Otherwise {instead}, or train "
            "one with `lk-scatterlight train`."
        )
    newest = max_version if max_version is not None else float("inf")
    readable = [m for m in published if m.name == name and m.version <= newest]
    if not readable:
        versions = ", ".join(str(m.version) for m in sorted(published) if m.name == name)
        raise ModelNotFoundError(
            f"Model {name!r} is published only in model format version {versions}; this "
            f"lk_scatterlight reads versions up to {max_version}. Upgrade lk_scatterlight "
            f"(pip install -U lk_scatterlight), or {instead}."
        )
    entry = published[max(readable, key=lambda m: m.version)]
    return _download(pup, entry, f"model {name!r}", instead, progressbar)


# ---------------------------------------------------------------------- helpers
def _download(pup: pooch.Pooch, name: str, what: str, advice: str, progressbar: bool) -> Path:
    """Fetch a registry entry through pooch; failures become a `DownloadError`.

    ``what`` says what the file is ("sector 2 camera 1 CCD 1", "model 's1-25'")
    and ``advice`` what to do instead of downloading it.
    """
    url = pup.get_url(name)
    timeout = _timeout()
    downloader = None  # pooch picks one for ftp://, doi:, ...
    if url.startswith(("http://", "https://")):
        from . import __version__

        downloader = _HTTPDownloader(
            progressbar=progressbar,
            timeout=timeout,
            headers={"User-Agent": f"lk_scatterlight/{__version__} pooch/{pooch.__version__}"},
        )
    log.debug("Fetching %s (from %s) into %s", name, url, pup.abspath)
    # Imported here as pooch does, to keep `import lk_scatterlight` fast.
    import requests

    try:
        with _POOCH_LOG:
            path = pup.fetch(
                name, processor=_log_action, downloader=downloader, progressbar=progressbar
            )
    except requests.exceptions.RequestException as err:
        raise DownloadError(
            f"Could not download {name} ({what}) from {url}: {_describe(err, timeout)}, after "
            f"{1 + RETRIES} attempts. Check the network or the mirror ({URL_ENV} / "
            f"conf.registry_url), or {advice}."
        ) from err
    except ValueError as err:  # pooch: the download does not match the registry hash
        raise DownloadError(
            f"Download of {name} from {url} was rejected and not kept in the cache "
            f"({pup.abspath}): {' '.join(str(err).split())} If this persists, the registry or "
            f"the mirror is out of date; {advice}."
        ) from err
    except OSError as err:  # the cache folder cannot be created or written
        raise DownloadError(
            f"Could not store {name} in the cache folder {pup.abspath}: {err}. Choose another "
            f"folder with cache_dir=..., {CACHE_ENV} or conf.cache_dir."
        ) from err
    return Path(path)


def _as_int(name: str, value, lo: int, hi: int | None = None) -> int:
    try:
        number = operator.index(value)
    except TypeError as err:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}.") from err
    if number < lo or (hi is not None and number > hi):
        allowed = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {allowed}, found {number}.")
    return number


def _check_ids(sector, camera, ccd) -> tuple[int, int, int]:
    return (
        _as_int("sector", sector, 1),
        _as_int("camera", camera, CAMERAS[0], CAMERAS[-1]),
        _as_int("ccd", ccd, CCDS[0], CCDS[-1]),
    )


def _build_hint(sector: int, camera: int, ccd: int, python: bool = True) -> str:
    """How to build the cube instead; ``python=False`` words it for the command line."""
    command = f"`lk-scatterlight build --sector {sector} --camera {camera} --ccd {ccd}`"
    if python:
        return f"build the cube locally with {command} and pass cube=path"
    return f"build the cube locally with {command}"


def _select(pup: pooch.Pooch, sector: int, camera: int, ccd: int, bin: int | None) -> str:
    """Registry name of the cube to fetch, or `CubeNotFoundError` saying what exists."""
    published = {parse_cube_filename(name): name for name in pup.registry if _is_cube(name)}
    what = f"sector {sector} camera {camera} CCD {ccd}"
    build = _build_hint(sector, camera, ccd)
    if not published:
        state = "is empty" if not pup.registry else "lists no cubes"
        raise CubeNotFoundError(
            f"No scattered-light cube is published for {what}: no cubes are published yet "
            f"(the registry {registry_file()} {state}). To correct this CCD, {build}."
        )
    here = [c for c in published if (c.sector, c.camera, c.ccd) == (sector, camera, ccd)]
    if not here:
        raise CubeNotFoundError(
            f"No scattered-light cube is published for {what}. {_nearest(published, sector)}. "
            f"To correct this CCD, {build}."
        )
    readable = [c for c in here if c.version <= FORMAT_VERSION]
    if not readable:
        versions = ", ".join(str(v) for v in sorted({c.version for c in here}))
        raise CubeNotFoundError(
            f"The cube for {what} is published only in cube format version {versions}; this "
            f"lk_scatterlight reads versions 1..{FORMAT_VERSION}. Upgrade lk_scatterlight "
            f"(pip install -U lk_scatterlight), or {build}."
        )
    if bin is not None:
        bins = sorted({c.bin for c in readable})
        readable = [c for c in readable if c.bin == bin]
        if not readable:
            raise CubeNotFoundError(
                f"No cube is published for {what} with {bin}-pixel bins; published bins: "
                f"{', '.join(str(b) for b in bins)} (bin=None takes the finest), or {build}."
            )
    best = min(readable, key=lambda c: (c.bin, -c.version))
    return published[best]


def _nearest(published, sector: int) -> str:
    """Describe the published cubes closest to ``sector``."""

    def ccds(s: int) -> str:
        pairs = sorted({(c.camera, c.ccd) for c in published if c.sector == s})
        return ", ".join(f"camera {a} CCD {b}" for a, b in pairs)

    sectors = {c.sector for c in published}
    if sector in sectors:
        return f"Published for sector {sector}: {ccds(sector)}"
    nearest = sorted(sorted(sectors, key=lambda s: (abs(s - sector), s))[:3])
    return "Nearest published sectors: " + "; ".join(f"sector {s} ({ccds(s)})" for s in nearest)


def _describe(err, timeout: float) -> str:
    """A short reason for a requests exception."""
    import requests

    response = getattr(err, "response", None)
    if isinstance(err, requests.HTTPError) and response is not None:
        return f"the server answered HTTP {response.status_code} {response.reason}"
    if isinstance(err, requests.Timeout):
        return f"no answer within the {timeout:g} s timeout ({TIMEOUT_ENV} / conf.timeout)"
    if isinstance(err, requests.ConnectionError):
        return "the server cannot be reached (offline, or the server is down)"
    return f"{type(err).__name__}: {err}"


class _HTTPDownloader(pooch.HTTPDownloader):
    """pooch's HTTP downloader, closing the response of a failed request.

    pooch streams the download and, on an HTTP error status, raises without
    closing the response, which leaks its socket on every attempt.
    """

    def __call__(self, url, output_file, pooch, check_only=False):
        import requests

        try:
            return super().__call__(url, output_file, pooch, check_only=check_only)
        except requests.HTTPError as err:
            if err.response is not None:
                err.response.close()
            raise


def _log_action(fname: str, action: str, pup: pooch.Pooch) -> str:
    """pooch processor: log what happened to the file and return its path."""
    if action == "download":
        log.info("Downloaded %s to %s", Path(fname).name, pup.abspath)
    elif action == "update":
        log.info(
            "Downloaded %s again: the cached copy did not match its registry hash",
            Path(fname).name,
        )
    else:
        log.debug("Using cached %s", fname)
    return fname


class _PoochLogForwarder(logging.Filter):
    """While active, send pooch's log records to this module's logger.

    pooch logs through its own logger with a handler that writes to stderr;
    a library must not print, so during `fetch_cube` its records are passed to
    ``logging.getLogger("lk_scatterlight.registry")`` (shown by
    ``lk-scatterlight -v``) and dropped from pooch's handler. Re-entrant and
    thread-safe.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._depth = 0

    def filter(self, record: logging.LogRecord) -> bool:
        log.log(record.levelno, "pooch: %s", record.getMessage())
        return False

    def __enter__(self) -> _PoochLogForwarder:
        with self._lock:
            if self._depth == 0:
                pooch.get_logger().addFilter(self)
            self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                pooch.get_logger().removeFilter(self)


_POOCH_LOG = _PoochLogForwarder()
