"""Publishing built cubes on Zenodo and adding them to the cube registry.

The maintainer's last step after ``lk-scatterlight build`` (`publish_cubes`,
``lk-scatterlight publish``):

1. **Check the files** (no network): each is read with
   `~lk_scatterlight.ScatterLightCube.read`, its FITS checksums and values are
   checked (finite flux, finite non-negative uncertainty) and its sector,
   camera, CCD, pixel bin and format version must give its file name
   (`~lk_scatterlight.registry.cube_filename`); a file with another name is
   refused, or with ``rename=True`` uploaded under its standard name. All files
   must belong to one sector: one Zenodo record per sector.
2. **Dry run** (the default): report the files, their sizes and SHA256
   hashes, the target deposition and the registry lines that would be
   written. Nothing is sent anywhere and nothing is written.
3. **Upload** (``upload=True``): create a Zenodo deposition, or a new version
   of an existing record (``record=ID``), upload each file to the
   deposition's bucket and compare the MD5 checksum Zenodo reports with the
   local one, set the metadata and publish.
4. **Registry**: only after the publish call succeeded, one line
   ``name sha256:HASH https://zenodo.org/records/ID/files/name?download=1``
   per verified file is merged into the registry file (default: the
   package's ``lk_scatterlight/data/registry.txt`` in a source checkout).

Progress is kept in a state file next to the cubes
(``.lk-scatterlight-publish-s<SSSS>.json``), so a failed run is resumed by
running the same command again: the same draft deposition is used, files the
bucket already holds with the right checksum are not uploaded again, and the
record is published once.

The Zenodo token is read from the environment variable ``ZENODO_TOKEN``
(never from the command line). ``sandbox=True`` targets
https://sandbox.zenodo.org; ``LK_SCATTERLIGHT_ZENODO_URL`` replaces the site
URL altogether (tests, mirrors of the API).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import time
import urllib.parse
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pooch

from ..cube import ScatterLightCube
from ..exceptions import CubeFormatError, PublishError
from ..registry import cube_filename, parse_cube_filename
from ..utils import atomic_write

if TYPE_CHECKING:  # imported lazily at run time, to keep imports fast
    import requests

__all__ = [
    "publish_cubes",
    "collect_cubes",
    "verify_cube",
    "merge_registry",
    "registry_line",
    "record_file_url",
    "zenodo_url",
    "user_agent",
    "default_registry",
    "state_file",
    "CubeFile",
    "PublishResult",
    "ZenodoClient",
    "ZENODO_URL",
    "SANDBOX_URL",
    "TOKEN_ENV",
    "ZENODO_URL_ENV",
    "DEFAULT_TIMEOUT",
    "MAX_RETRIES",
]

log = logging.getLogger(__name__)

#: Zenodo's site; the REST API is under ``<site>/api``.
ZENODO_URL = "https://zenodo.org"
#: Zenodo's sandbox, for trial runs (records there are not permanent).
SANDBOX_URL = "https://sandbox.zenodo.org"
#: Environment variable holding the Zenodo personal access token.
TOKEN_ENV = "ZENODO_TOKEN"
#: Environment variable replacing the Zenodo site URL (wins over ``sandbox``).
ZENODO_URL_ENV = "LK_SCATTERLIGHT_ZENODO_URL"
#: Timeout of each HTTP request [s] (an upload counts as one request).
DEFAULT_TIMEOUT = 300.0
#: Extra attempts after a server error (5xx), a 429 or a dropped connection.
MAX_RETRIES = 4
#: Wait before the first retry [s]; doubled after each, up to `BACKOFF_CAP`.
BACKOFF = 2.0
#: Longest wait between two attempts [s], also for a server's Retry-After.
BACKOFF_CAP = 120.0
#: Uploads of one file before a checksum mismatch is an error.
UPLOAD_ATTEMPTS = 2
#: Default license of the records (Zenodo license id).
DEFAULT_LICENSE = "cc-by-4.0"
#: Default keywords of the records.
DEFAULT_KEYWORDS = ("TESS", "scattered light", "lightkurve", "lk_scatterlight", "photometry")
#: Default creator when none is given and none is inherited from a previous version.
DEFAULT_CREATOR = "lk_scatterlight developers"

_STATE_SCHEMA = 1
_RECORD_PLACEHOLDER = "<record>"


# ---------------------------------------------------------------------- files
@dataclass(frozen=True)
class CubeFile:
    """A checked cube file, ready to publish.

    Attributes
    ----------
    path : `~pathlib.Path`
        The local file.
    name : str
        The published file name, ``cube_filename(sector, camera, ccd, bin, version)``.
    sector, camera, ccd : int
        What the file holds.
    bin : int
        Pixel bin size [pixel].
    version : int
        Cube format version (primary keyword ``SLFORMAT``).
    size : int
        File size [byte].
    sha256, md5 : str
        Hex digests of the file (`pooch.file_hash`).
    """

    path: Path
    name: str
    sector: int
    camera: int
    ccd: int
    bin: int
    version: int
    size: int
    sha256: str
    md5: str

    @property
    def renamed(self) -> bool:
        """True if the file is published under another name than its local one."""
        return self.path.name != self.name


def verify_cube(path: str | os.PathLike, rename: bool = False) -> CubeFile:
    """Check that a cube file can be published, and hash it.

    Parameters
    ----------
    path : str or path-like
        A cube file written by `~lk_scatterlight.ScatterLightCube.write`.
    rename : bool, optional
        Accept a file whose name is not a published cube file name and publish
        it under its standard name (the local file is not renamed). A file whose
        name is a standard name for *another* sector, camera, CCD, bin or format
        version is always refused.

    Returns
    -------
    cube_file : `CubeFile`

    Raises
    ------
    PublishError
        If the file is missing, unreadable, fails its FITS checksum, holds
        non-finite values, is not in the lk_scatterlight format, or is
        misnamed; the message says what to do.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise PublishError(f"{path} is not a file; give cube files or folders holding them.")
    if path.stat().st_size == 0:
        raise PublishError(f"{path} is empty; rebuild it with `lk-scatterlight build`.")
    try:
        cube = ScatterLightCube.read(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Loading every HDU (len) verifies its CHECKSUM and DATASUM, reading the data
            # through a memory map rather than into memory.
            with fits.open(path, checksum=True, memmap=True) as hdul:
                header = hdul[0].header.copy()
                len(hdul)
        bad_sums = [
            " ".join(str(w.message).split())
            for w in caught
            if "verification failed" in str(w.message).lower()
        ]
        if bad_sums:
            raise PublishError(
                f"{path} fails its FITS checksum ({bad_sums[0]}): the file was modified or "
                "damaged after it was written. Rebuild it with `lk-scatterlight build`."
            )
        problems = _value_problems(cube)
    except CubeFormatError as err:
        raise PublishError(f"{path} cannot be published: {err}") from err
    version = header.get("SLFORMAT")
    if not isinstance(version, int):
        raise PublishError(
            f"{path} is not in the lk_scatterlight cube format (no SLFORMAT keyword; a "
            "tess-backml cube?). Convert it with `ScatterLightCube.read(path).write(new_path)`."
        )
    pixel_bin = cube.pixel_bin
    if pixel_bin < 1 or pixel_bin != round(pixel_bin):
        problems.append(f"the pixel bin {pixel_bin:g} is not a whole number of pixels >= 1")
    if problems:
        raise PublishError(f"{path} cannot be published: " + "; ".join(problems) + ".")
    name = cube_filename(cube.sector, cube.camera, cube.ccd, int(pixel_bin), version)
    holds = (
        f"sector {cube.sector} camera {cube.camera} CCD {cube.ccd}, {int(pixel_bin)}-pixel "
        f"bins, format version {version}"
    )
    if path.name != name:
        try:
            parse_cube_filename(path.name)
        except CubeFormatError:
            if not rename:
                raise PublishError(
                    f"{path.name} is not the standard name of the cube it holds ({holds}); "
                    f"rename it to {name}, or pass --rename (rename=True) to publish it under "
                    "that name."
                ) from None
        else:
            raise PublishError(
                f"{path} is named for another cube than it holds ({holds}, whose name is "
                f"{name}); the file may have been mixed up with another. Check it with "
                f"`lk-scatterlight info {path}` and rebuild or rename it."
            )
    return CubeFile(
        path=path,
        name=name,
        sector=cube.sector,
        camera=cube.camera,
        ccd=cube.ccd,
        bin=int(pixel_bin),
        version=version,
        size=path.stat().st_size,
        sha256=pooch.file_hash(str(path), alg="sha256"),
        md5=pooch.file_hash(str(path), alg="md5"),
    )


def _value_problems(cube: ScatterLightCube) -> list[str]:
    """What is wrong with the values of a cube (all of them are read)."""
    problems = []
    if not np.all(np.isfinite(cube.btjd)):
        problems.append("its times contain NaN or infinity")
    flux, flux_err = cube.flux.value, cube.flux_err.value
    if not np.all(np.isfinite(flux)):
        problems.append(f"its flux has {int(np.sum(~np.isfinite(flux)))} NaN or infinite bins")
    if not np.all(np.isfinite(flux_err)) or np.any(flux_err < 0):
        problems.append("its flux_err has NaN, infinite or negative values")
    if np.any(cube.nframes < 1):
        problems.append("some planes combine no frames (NFRAMES < 1)")
    return problems


def collect_cubes(paths: Iterable[str | os.PathLike], rename: bool = False) -> list[CubeFile]:
    """Check the cube files to publish together (no network).

    Parameters
    ----------
    paths : iterable of str or path-like
        Cube files, or folders whose ``lk-scatterlight_*.fits`` files are taken.
    rename : bool, optional
        See `verify_cube`.

    Returns
    -------
    files : list of `CubeFile`
        Sorted by published name.

    Raises
    ------
    PublishError
        If no file is given, a file fails `verify_cube`, two files would get the
        same name, or the files belong to more than one sector.
    """
    found: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            inside = sorted(item.glob("lk-scatterlight_*.fits"))
            if not inside:
                raise PublishError(
                    f"{item} holds no cube files (lk-scatterlight_*.fits); give the files "
                    "themselves if they are named otherwise."
                )
            found.extend(inside)
        else:
            found.append(item)
    if not found:
        msg = "No cube files given."
        raise PublishError(msg)
    files = [verify_cube(path, rename=rename) for path in dict.fromkeys(found)]
    by_name: dict[str, CubeFile] = {}
    for cube_file in files:
        if cube_file.name in by_name:
            raise PublishError(
                f"{by_name[cube_file.name].path} and {cube_file.path} would both be published "
                f"as {cube_file.name}; give only one of them."
            )
        by_name[cube_file.name] = cube_file
    sectors = sorted({f.sector for f in files})
    if len(sectors) > 1:
        raise PublishError(
            f"The files hold sectors {', '.join(map(str, sectors))}; each sector is one Zenodo "
            "record, so publish each sector separately."
        )
    return sorted(files, key=lambda f: f.name)


# ---------------------------------------------------------------------- URLs, registry, state
def zenodo_url(sandbox: bool = False, base_url: str | None = None) -> str:
    """The Zenodo site to publish to (the REST API is under ``<site>/api``).

    Parameters
    ----------
    sandbox : bool, optional
        Use https://sandbox.zenodo.org instead of https://zenodo.org.
    base_url : str, optional
        Explicit site URL; wins over ``LK_SCATTERLIGHT_ZENODO_URL`` and ``sandbox``.

    Returns
    -------
    url : str
        Without a trailing slash.
    """
    for value in (base_url, os.environ.get(ZENODO_URL_ENV)):
        if value is not None and value.strip():
            return value.strip().rstrip("/")
    return SANDBOX_URL if sandbox else ZENODO_URL


def record_file_url(site: str, record_id: int | str, name: str) -> str:
    """Download URL of a file of a published record, as written to the registry.

    Examples
    --------
    >>> record_file_url("https://zenodo.org", 123, "lk-scatterlight_s0002_1-1_bin16_v2.fits")
    'https://zenodo.org/records/123/files/lk-scatterlight_s0002_1-1_bin16_v2.fits?download=1'
    """
    return f"{site.rstrip('/')}/records/{record_id}/files/{urllib.parse.quote(name)}?download=1"


def registry_line(name: str, sha256: str, url: str) -> str:
    """One registry line, ``name sha256:HASH url`` (pooch's registry format)."""
    return f"{name} sha256:{sha256} {url}"


def default_registry() -> tuple[Path, bool]:
    """The package's registry file and whether it lies in a source checkout.

    Returns
    -------
    path : `~pathlib.Path`
        ``lk_scatterlight/data/registry.txt`` of the imported package.
    in_checkout : bool
        True if the package is a source checkout (a ``pyproject.toml`` next to
        it), where editing the registry makes sense: it reaches users with the
        next release. An installed copy would be overwritten by the next
        installation.
    """
    package = Path(__file__).resolve().parents[1]
    return package / "data" / "registry.txt", (package.parent / "pyproject.toml").is_file()


def merge_registry(path: str | os.PathLike, lines: Sequence[str]) -> Path:
    """Merge registry lines into a registry file, atomically.

    A line for a file name already in the registry replaces it in place;
    other lines are appended. Comments, blank lines and other entries are kept
    as they are. The file is written to a temporary file in the same folder
    and renamed, so it is never left half-written.

    Parameters
    ----------
    path : str or path-like
        Registry file; created if missing.
    lines : sequence of str
        ``name sha256:HASH url`` lines (`registry_line`).

    Returns
    -------
    path : `~pathlib.Path`
    """
    path = Path(path)
    new = {line.split()[0]: line for line in lines}
    if path.exists():
        old = path.read_text(encoding="utf-8").splitlines()
    else:
        old = ["# lk_scatterlight cube registry: <file name> sha256:<SHA256> <download URL>"]
    merged = []
    for line in old:
        fields = line.split()
        if fields and not line.lstrip().startswith("#") and fields[0] in new:
            merged.append(new.pop(fields[0]))
        else:
            merged.append(line)
    merged.extend(new.values())
    _write_atomic(path, "\n".join(merged) + "\n")
    return path


def state_file(files: Sequence[CubeFile]) -> Path:
    """The state file of a publication: ``.lk-scatterlight-publish-s<SSSS>.json``
    in the folder of the first cube file."""
    return files[0].path.resolve().parent / f".lk-scatterlight-publish-s{files[0].sector:04d}.json"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else None
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)  # keep the permissions of the file being replaced


def _load_state(path: Path, site: str, record: int | None) -> dict | None:
    """The unfinished publication to resume, None to start afresh."""
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        schema, state_site = state["schema"], state["site"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PublishError(
            f"The publish state file {path} cannot be read ({err}); delete it to start afresh "
            "(an unfinished draft it names stays on Zenodo: discard it on the website)."
        ) from err
    if schema != _STATE_SCHEMA:
        raise PublishError(f"{path} has state schema {schema!r}, expected {_STATE_SCHEMA}.")
    if state.get("complete"):
        if record is None and state_site == site:
            raise PublishError(
                f"Sector {state['sector']} was already published as record "
                f"{state['record_id']} on {site} ({path}). To publish a new version of it, "
                f"pass --record {state['record_id']} (record={state['record_id']}); to create "
                "an unrelated new record, delete the state file."
            )
        return None  # done; a new version, or another server, starts afresh
    if state_site != site:
        raise PublishError(
            f"{path} holds an unfinished upload to {state_site} (draft deposition "
            f"{state.get('deposition_id')}), not {site}. Finish it by rerunning against "
            f"{state_site}, or delete the state file (and discard that draft on the website)."
        )
    if state.get("record") != record:
        started = (
            f"a new version of record {state['record']}"
            if state.get("record")
            else "a new deposition"
        )
        flag = f" with --record {state['record']}" if state.get("record") else " without --record"
        raise PublishError(
            f"{path} holds an unfinished upload of {started} (draft deposition "
            f"{state.get('deposition_id')}); rerun{flag} to finish it, or delete the state "
            "file (and discard that draft on the website)."
        )
    return state


def _save_state(path: Path, state: dict) -> None:
    _write_atomic(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------- Zenodo client
def user_agent() -> str:
    """``lk_scatterlight/<version> Python/<version>``."""
    from .. import __version__

    return f"lk_scatterlight/{__version__} Python/{platform.python_version()}"


class ZenodoClient:
    """Minimal client of Zenodo's deposition REST API.

    One `requests.Session` with the token (``Authorization: Bearer``), a
    User-Agent naming lk_scatterlight and Python, and a timeout on every
    request. A 429 answer is retried after its ``Retry-After`` time, server
    errors (5xx) and dropped connections after 2, 4, 8, ... s, up to
    ``max_retries`` times. Zenodo's own error message is passed on in the
    `~lk_scatterlight.exceptions.PublishError`.

    Parameters
    ----------
    site : str
        Zenodo site URL (`zenodo_url`); the API is ``<site>/api``.
    token : str
        Personal access token with the ``deposit:write`` and ``deposit:actions`` scopes.
    timeout : float, optional
        Timeout of each request [s].
    max_retries : int, optional
        Extra attempts of a request after a retryable failure.

    Examples
    --------
    >>> with ZenodoClient("https://sandbox.zenodo.org", token) as client:  # doctest: +SKIP
    ...     deposition = client.create_deposition()
    """

    def __init__(
        self,
        site: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = MAX_RETRIES,
    ):
        import requests  # lazily, to keep `import lk_scatterlight` fast

        self.site = site.rstrip("/")
        self.api = f"{self.site}/api"
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.session = requests.Session()
        self.session.headers.update(
            {
                "User-Agent": user_agent(),
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
            }
        )

    def close(self) -> None:
        """Close the session and its connections."""
        self.session.close()

    def __enter__(self) -> ZenodoClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ endpoints
    def create_deposition(self) -> dict:
        """``POST /api/deposit/depositions``: a new, empty draft deposition."""
        return self.request("POST", f"{self.api}/deposit/depositions", "create a deposition", {})

    def new_version(self, record_id: int) -> dict:
        """``POST .../{record_id}/actions/newversion``, then the new draft deposition."""
        answer = self.request(
            "POST",
            f"{self.api}/deposit/depositions/{record_id}/actions/newversion",
            f"make a new version of record {record_id}",
        )
        draft = answer.get("links", {}).get("latest_draft")
        if not draft:
            raise PublishError(
                f"Zenodo's answer to the new version of record {record_id} gives no "
                "links.latest_draft; check the record on the website."
            )
        return self.request("GET", draft, "read the new version's draft deposition")

    def get_deposition(self, deposition_id: int) -> dict:
        """``GET /api/deposit/depositions/{id}``."""
        return self.request(
            "GET",
            f"{self.api}/deposit/depositions/{deposition_id}",
            f"read deposition {deposition_id}",
        )

    def bucket_files(self, deposition: dict) -> dict[str, str]:
        """``GET {links.bucket}``: file name -> MD5 hex digest of the files in the bucket."""
        answer = self.request("GET", _bucket(deposition), "list the deposition's files")
        return {item["key"]: _md5(item.get("checksum", "")) for item in answer.get("contents", [])}

    def upload(self, deposition: dict, name: str, path: str | os.PathLike) -> dict:
        """``PUT {links.bucket}/{name}`` with the file's bytes; Zenodo's answer
        (``key``, ``size``, ``checksum: "md5:..."``)."""
        url = f"{_bucket(deposition)}/{urllib.parse.quote(name)}"
        return self.request("PUT", url, f"upload {name}", path=Path(path))

    def delete_file(self, deposition: dict, name: str) -> None:
        """``DELETE {links.bucket}/{name}``."""
        url = f"{_bucket(deposition)}/{urllib.parse.quote(name)}"
        self.request("DELETE", url, f"delete the old {name} from the draft")

    def set_metadata(self, deposition_id: int, metadata: dict) -> dict:
        """``PUT /api/deposit/depositions/{id}`` with ``{"metadata": ...}``."""
        return self.request(
            "PUT",
            f"{self.api}/deposit/depositions/{deposition_id}",
            "set the deposition's metadata",
            {"metadata": metadata},
        )

    def publish(self, deposition_id: int) -> dict:
        """``POST /api/deposit/depositions/{id}/actions/publish``: the published deposition."""
        return self.request(
            "POST",
            f"{self.api}/deposit/depositions/{deposition_id}/actions/publish",
            f"publish deposition {deposition_id}",
        )

    # ------------------------------------------------------------------ transport
    def request(
        self,
        method: str,
        url: str,
        what: str,
        json_body: dict | None = None,
        *,
        path: Path | None = None,
    ) -> dict:
        """Send a request with retries and return its JSON answer ({} if none).

        Parameters
        ----------
        method, url : str
        what : str
            What the request does, for messages ("upload x.fits").
        json_body : dict, optional
            JSON body.
        path : `~pathlib.Path`, optional
            File sent as the body (reopened for every attempt).

        Raises
        ------
        PublishError
            On an HTTP error answer, or once the retries are used up.
        """
        import requests

        attempt = 0
        while True:
            try:
                if path is not None:
                    with open(path, "rb") as body:
                        response = self.session.request(
                            method,
                            url,
                            data=body,
                            headers={"Content-Type": "application/octet-stream"},
                            timeout=self.timeout,
                        )
                else:
                    response = self.session.request(
                        method, url, json=json_body, timeout=self.timeout
                    )
            except (requests.ConnectionError, requests.Timeout) as err:
                if attempt >= self.max_retries:
                    raise PublishError(
                        f"Could not {what} on {self.site}: {_reason(err, self.timeout)}, "
                        f"after {attempt + 1} attempts."
                    ) from err
                wait = _backoff(attempt)
                log.warning("Could not %s (%s); retrying in %g s", what, type(err).__name__, wait)
                time.sleep(wait)
                attempt += 1
                continue
            with response:
                status = response.status_code
                if status < 400:
                    return _json(response, what)
                retryable = status == 429 or status >= 500
                if retryable and attempt < self.max_retries:
                    wait = _retry_after(response, attempt)
                    log.warning(
                        "Zenodo answered HTTP %d to `%s`; retrying in %g s", status, what, wait
                    )
                    time.sleep(wait)
                    attempt += 1
                    continue
                raise _HTTPError(self._error(response, what, attempt), status)

    def _error(self, response: requests.Response, what: str, attempt: int) -> str:
        status = response.status_code
        detail = _zenodo_message(response)
        if status == 401:
            return (
                f"Zenodo ({self.site}) rejected the access token (HTTP 401{detail}): set "
                f"{TOKEN_ENV} to a valid personal access token with the deposit:write and "
                "deposit:actions scopes, made on that site (sandbox tokens are separate)."
            )
        if status == 403:
            return (
                f"Zenodo refused to {what} (HTTP 403{detail}): the token in {TOKEN_ENV} lacks "
                "the deposit:write / deposit:actions scope, or the deposition belongs to "
                "another account or is already published."
            )
        if status == 429:
            return (
                f"Zenodo kept limiting the request rate (HTTP 429) while trying to {what}, "
                f"after {attempt + 1} attempts; wait a few minutes and rerun."
            )
        if status >= 500:
            return (
                f"Zenodo failed to {what} (HTTP {status}{detail}) {attempt + 1} times; the "
                "service may be down (https://status.zenodo.org), try again later."
            )
        return f"Zenodo refused to {what} (HTTP {status}{detail})."


class _HTTPError(PublishError):
    """A `PublishError` for an HTTP error answer; ``status`` is its status code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _bucket(deposition: dict) -> str:
    try:
        return deposition["links"]["bucket"].rstrip("/")
    except (KeyError, TypeError, AttributeError) as err:
        raise PublishError(
            f"Deposition {deposition.get('id')} has no links.bucket: Zenodo gives a bucket "
            "only to unpublished drafts of the new files API."
        ) from err


def _md5(checksum: str) -> str:
    """``"md5:abc"`` or ``"abc"`` -> ``"abc"``; another algorithm -> ``""``."""
    alg, _, digest = str(checksum).rpartition(":")
    return digest.lower() if alg in ("", "md5") else ""


def _json(response: requests.Response, what: str) -> dict:
    if response.status_code == 204 or not response.content:
        return {}
    try:
        answer = response.json()
    except ValueError as err:
        raise PublishError(
            f"Zenodo's answer to `{what}` is not JSON (HTTP {response.status_code}, "
            f"{response.headers.get('Content-Type')}): {response.text[:200]!r}"
        ) from err
    if not isinstance(answer, dict):
        raise PublishError(f"Zenodo's answer to `{what}` is not a JSON object: {answer!r:.200}")
    return answer


def _zenodo_message(response: requests.Response) -> str:
    """``": <message>; <field>: <message>, ..."`` from a Zenodo error answer."""
    try:
        answer = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:200]
        return f": {text}" if text else ""
    if not isinstance(answer, dict):
        return ""
    parts = [str(answer["message"])] if answer.get("message") else []
    for error in answer.get("errors") or []:
        if isinstance(error, dict):
            messages = error.get("messages") or [error.get("message", "")]
            text = " ".join(str(m) for m in messages if m)
            parts.append(f"{error['field']}: {text}" if error.get("field") else text)
    return ": " + "; ".join(parts) if parts else ""


def _backoff(attempt: int) -> float:
    return min(BACKOFF_CAP, BACKOFF * 2**attempt)


def _retry_after(response: requests.Response, attempt: int) -> float:
    """The wait a 429/503 answer asks for (seconds or an HTTP date), else the backoff."""
    import email.utils

    value = response.headers.get("Retry-After", "").strip()
    if value:
        try:
            return min(BACKOFF_CAP, max(0.0, float(value)))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                pass
            else:
                now = datetime.datetime.now(datetime.timezone.utc)
                return min(BACKOFF_CAP, max(0.0, (when - now).total_seconds()))
    return _backoff(attempt)


def _reason(err: Exception, timeout: float) -> str:
    import requests

    if isinstance(err, requests.Timeout):
        return f"no answer within {timeout:g} s"
    return f"the connection failed ({type(err).__name__}: {err})"


# ---------------------------------------------------------------------- the publication
@dataclass
class PublishResult:
    """What `publish_cubes` did, or with ``dry_run`` would do.

    Attributes
    ----------
    files : list of `CubeFile`
        The checked files.
    site : str
        Zenodo site (`zenodo_url`).
    target : str
        The deposition, in words ("a new deposition", "a new version of record
        123", "draft deposition 456 (resumed)").
    metadata : dict
        The Zenodo metadata set (for a new version, merged into the inherited one).
    registry : `~pathlib.Path`
        The registry file written (or to be written).
    registry_note : str
        Why this registry file (e.g. the default of a source checkout).
    registry_lines : list of str
        Lines written; in a dry run, with ``<record>`` for an unknown record id.
    state_file : `~pathlib.Path`
        The state file that lets a failed run resume.
    dry_run : bool
        True if nothing was sent or written.
    deposition_id, record_id : int or None
        The deposition used and the published record.
    doi : str or None
        The record's DOI.
    uploaded, skipped : list of str
        Files uploaded in this run, and files the deposition already held.
    """

    files: list[CubeFile]
    site: str
    target: str
    metadata: dict
    registry: Path
    registry_note: str
    registry_lines: list[str]
    state_file: Path
    dry_run: bool = True
    deposition_id: int | None = None
    record_id: int | None = None
    doi: str | None = None
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The report printed by ``lk-scatterlight publish``."""
        lines = []
        if self.dry_run:
            lines.append("Dry run: nothing is uploaded or written (add --upload to publish).")
        lines.append(f"Zenodo:      {self.site}")
        lines.append(f"Deposition:  {self.target}")
        lines.append(f"Title:       {self.metadata.get('title')}")
        creators = "; ".join(c.get("name", "") for c in self.metadata.get("creators", []))
        lines.append(f"Creators:    {creators or '(inherited from the previous version)'}")
        lines.append(f"Files ({len(self.files)}):")
        for f in self.files:
            origin = f"  (local file {f.path})" if f.renamed else ""
            lines.append(f"  {f.name}  {_size(f.size)}  sha256:{f.sha256}{origin}")
        if not self.dry_run:
            lines.append(
                f"Uploaded {len(self.uploaded)} file(s), {len(self.skipped)} already in the "
                "deposition."
            )
            doi = f", DOI {self.doi}" if self.doi else ""
            lines.append(f"Published:   record {self.record_id}{doi}")
            lines.append(f"             {self.site}/records/{self.record_id}")
        lines.append(f"Registry:    {self.registry} ({self.registry_note})")
        lines.append("Registry lines" + (" to write:" if self.dry_run else " written:"))
        lines.extend(f"  {line}" for line in self.registry_lines)
        lines.append(f"State file:  {self.state_file}")
        return "\n".join(lines)


def publish_cubes(
    paths: Iterable[str | os.PathLike],
    *,
    upload: bool = False,
    record: int | None = None,
    sandbox: bool = False,
    registry: str | os.PathLike | None = None,
    title: str | None = None,
    creators: Sequence[str] | None = None,
    description: str | None = None,
    license: str = DEFAULT_LICENSE,
    keywords: Sequence[str] = DEFAULT_KEYWORDS,
    version: str | None = None,
    rename: bool = False,
    token: str | None = None,
    site: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> PublishResult:
    """Publish built cubes of one sector on Zenodo and add them to the registry.

    Without ``upload`` this is a dry run: the files are checked and hashed and
    the plan is returned, but nothing is sent or written. See the module
    docstring for the steps, and ``docs/publishing.rst`` for the maintainer's
    guide.

    Parameters
    ----------
    paths : iterable of str or path-like
        Cube files, or folders of ``lk-scatterlight_*.fits`` files, of one sector.
    upload : bool, optional
        Really upload and publish (default False: dry run).
    record : int, optional
        Publish a new version of this Zenodo record instead of a new record.
    sandbox : bool, optional
        Publish on https://sandbox.zenodo.org (trial runs).
    registry : str or path-like, optional
        Registry file to merge the new lines into; default the package's
        ``lk_scatterlight/data/registry.txt``, which is accepted only in a
        source checkout (`default_registry`).
    title : str, optional
        Record title; default "lk_scatterlight scattered-light cubes, sector S".
    creators : sequence of str, optional
        Creators as "Family, Given"; default those of the previous version, or
        "lk_scatterlight developers".
    description : str, optional
        Record description (HTML allowed); default a description of the files.
    license : str, optional
        Zenodo license id.
    keywords : sequence of str, optional
    version : str, optional
        Version label of the record; default the lk_scatterlight version.
    rename : bool, optional
        Publish files that are not named by `~lk_scatterlight.registry.cube_filename`
        under their standard names (see `verify_cube`).
    token : str, optional
        Zenodo token; default the environment variable ``ZENODO_TOKEN``.
    site : str, optional
        Zenodo site URL; default ``LK_SCATTERLIGHT_ZENODO_URL``, else the sandbox
        or zenodo.org (`zenodo_url`).
    timeout : float, optional
        Timeout of each request [s].

    Returns
    -------
    result : `PublishResult`

    Raises
    ------
    PublishError
        If a file cannot be published (before anything is sent), the token is
        missing or rejected, Zenodo refuses a request or keeps failing, or an
        uploaded file does not match its checksum. Progress is kept in the state
        file, and running the same call again resumes.

    Examples
    --------
    >>> result = publish_cubes(["cubes/"], sandbox=True)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    >>> publish_cubes(["cubes/"], sandbox=True, upload=True)  # doctest: +SKIP
    """
    from .. import __version__

    if record is not None:
        record = int(record)
    files = collect_cubes(paths, rename=rename)
    sector = files[0].sector
    site = zenodo_url(sandbox, site)
    registry_path, note, writable = _registry_target(registry)
    state_path = state_file(files)
    state = _load_state(state_path, site, record)
    if state is not None and sorted(state.get("files", {})) != [f.name for f in files]:
        raise PublishError(
            f"{state_path} holds an unfinished upload of {', '.join(sorted(state['files']))}, "
            f"not of {', '.join(f.name for f in files)}. Rerun with the same files to finish "
            "it, or delete the state file (and discard its draft on the website)."
        )
    metadata = {
        "upload_type": "dataset",
        "title": title or f"lk_scatterlight scattered-light cubes, sector {sector}",
        "description": description or _description(files, __version__),
        "license": license,
        "keywords": list(keywords),
        "version": version or __version__,
        "publication_date": datetime.date.today().isoformat(),
    }
    if creators:
        metadata["creators"] = [{"name": name} for name in creators]
    elif record is None:
        metadata["creators"] = [{"name": DEFAULT_CREATOR}]
    if state is not None:
        target = f"draft deposition {state['deposition_id']} (resumed from {state_path.name})"
    elif record is not None:
        target = f"a new version of record {record}"
    else:
        target = "a new deposition"
    known = state.get("record_id") if state else None
    result = PublishResult(
        files=files,
        site=site,
        target=target,
        metadata=metadata,
        registry=registry_path,
        registry_note=note,
        registry_lines=[
            registry_line(
                f.name, f.sha256, record_file_url(site, known or _RECORD_PLACEHOLDER, f.name)
            )
            for f in files
        ],
        state_file=state_path,
        dry_run=not upload,
    )
    if not upload:
        log.info("Dry run: %d file(s) to %s on %s", len(files), target, site)
        return result
    if not writable:
        raise PublishError(
            f"lk_scatterlight at {registry_path.parents[1]} is an installed copy, not a source "
            "checkout: its registry would be overwritten by the next installation. Give the "
            "registry file to update with --registry PATH (registry=...)."
        )
    token = token if token is not None else os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise PublishError(
            f"No Zenodo token: set the environment variable {TOKEN_ENV} to a personal access "
            f"token with the deposit:write and deposit:actions scopes (made at {site}/account/"
            "settings/applications/)."
        )
    with ZenodoClient(site, token, timeout=timeout) as client:
        try:
            _run(client, result, state, state_path, record)
        except PublishError as err:
            if state_path.exists():
                raise PublishError(
                    f"{err} Progress is kept in {state_path}; run the same command again to resume."
                ) from err
            raise
    return result


def _run(
    client: ZenodoClient, result: PublishResult, state: dict | None, state_path: Path, record
) -> None:
    """The network part of `publish_cubes`; updates ``result`` and the state file."""
    files = result.files
    if state is not None:
        try:
            deposition = client.get_deposition(state["deposition_id"])
            log.info("Resuming draft deposition %s from %s", deposition.get("id"), state_path)
        except _HTTPError as err:
            if err.status != 404:
                raise
            log.warning(
                "Draft deposition %s of %s no longer exists on %s; starting afresh",
                state["deposition_id"],
                state_path,
                result.site,
            )
            state = None
    if state is None:
        if record is not None:
            result.target = f"a new version of record {record}"
            deposition = client.new_version(record)
            log.info("Draft deposition %s is a new version of record %s", deposition["id"], record)
        else:
            result.target = "a new deposition"
            deposition = client.create_deposition()
            log.info("Created draft deposition %s", deposition["id"])
        state = {
            "schema": _STATE_SCHEMA,
            "site": result.site,
            "sector": files[0].sector,
            "record": record,
            "deposition_id": deposition["id"],
            "files": {
                f.name: {"path": str(f.path), "size": f.size, "sha256": f.sha256, "md5": f.md5}
                for f in files
            },
            "verified": [],
            "published": False,
            "complete": False,
        }
        _save_state(state_path, state)
    result.deposition_id = deposition["id"]
    if not _is_published(deposition):
        in_bucket = client.bucket_files(deposition)
        for f in files:
            state["files"][f.name].update(sha256=f.sha256, md5=f.md5, size=f.size)
            if in_bucket.get(f.name) == f.md5:
                log.info("%s is already in the deposition (checksum matches): skipped", f.name)
                result.skipped.append(f.name)
            else:
                if f.name in in_bucket:  # an older file of the same name (previous version)
                    log.info("Replacing the older %s in the draft", f.name)
                    client.delete_file(deposition, f.name)
                _upload(client, deposition, f)
                result.uploaded.append(f.name)
            state["verified"] = sorted(set(state["verified"]) | {f.name})
            _save_state(state_path, state)
        in_bucket = client.bucket_files(deposition)
        wrong = [f.name for f in files if in_bucket.get(f.name) != f.md5]
        if wrong:
            state["verified"] = sorted(set(state["verified"]) - set(wrong))
            _save_state(state_path, state)
            raise PublishError(
                f"The deposition's file listing does not show {', '.join(wrong)} with the "
                "uploaded checksum; nothing was published."
            )
        metadata = {**deposition.get("metadata", {}), **result.metadata}
        if not metadata.get("creators"):
            metadata["creators"] = [{"name": DEFAULT_CREATOR}]
        answer = client.set_metadata(deposition["id"], metadata)
        result.metadata = answer.get("metadata", metadata)
        try:
            deposition = client.publish(deposition["id"])
        except PublishError:
            # The publish may have gone through although its answer was lost.
            deposition = client.get_deposition(deposition["id"])
            if not _is_published(deposition):
                raise
        log.info("Published deposition %s", deposition["id"])
    result.record_id = int(deposition.get("record_id") or deposition["id"])
    result.doi = deposition.get("doi") or None
    state.update(published=True, record_id=result.record_id, doi=result.doi)
    _save_state(state_path, state)
    # Registry lines only for files Zenodo holds with the right checksum.
    published = _deposition_files(deposition)
    verified = set(state["verified"])
    good = [
        f
        for f in files
        if f.name in verified and (published is None or published.get(f.name) == f.md5)
    ]
    result.registry_lines = [
        registry_line(f.name, f.sha256, record_file_url(result.site, result.record_id, f.name))
        for f in good
    ]
    if good:
        merge_registry(result.registry, result.registry_lines)
        log.info("Wrote %d line(s) to %s", len(good), result.registry)
    missing = [f.name for f in files if f not in good]
    if missing:
        raise PublishError(
            f"Record {result.record_id} was published, but Zenodo does not list "
            f"{', '.join(missing)} with the uploaded checksum, so no registry line was written "
            "for them. Check the record on the website and publish a new version."
        )
    state["complete"] = True
    _save_state(state_path, state)


def _upload(client: ZenodoClient, deposition: dict, f: CubeFile) -> None:
    """Upload one file and compare Zenodo's MD5 checksum with the local one."""
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        if attempt > 1:  # take the damaged copy out before sending the file again
            client.delete_file(deposition, f.name)
        log.info("Uploading %s (%s)", f.name, _size(f.size))
        answer = client.upload(deposition, f.name, f.path)
        found = _md5(answer.get("checksum", ""))
        if found == f.md5:
            return
        log.warning(
            "Zenodo reports checksum md5:%s for %s, expected md5:%s (attempt %d of %d)",
            found,
            f.name,
            f.md5,
            attempt,
            UPLOAD_ATTEMPTS,
        )
    raise PublishError(
        f"Zenodo stored {f.name} with checksum {answer.get('checksum')!r}, not md5:{f.md5} "
        f"(from {f.path}), in {UPLOAD_ATTEMPTS} uploads: the upload was damaged in transit. "
        "Nothing was published and no registry line was written."
    )


def _is_published(deposition: dict) -> bool:
    return bool(deposition.get("submitted")) or deposition.get("state") == "done"


def _deposition_files(deposition: dict) -> dict[str, str] | None:
    """File name -> MD5 from a deposition's ``files`` list; None if it has none."""
    items = deposition.get("files")
    if not isinstance(items, list):
        return None
    return {
        str(item.get("filename") or item.get("key")): _md5(item.get("checksum", ""))
        for item in items
        if isinstance(item, dict)
    }


def _registry_target(registry: str | os.PathLike | None) -> tuple[Path, str, bool]:
    """The registry file to update, why that one, and whether it may be written."""
    if registry is not None:
        return Path(registry), "given with --registry", True
    path, in_checkout = default_registry()
    if in_checkout:
        return path, "default: the registry of this lk_scatterlight source checkout", True
    return path, "installed package, not a source checkout: give --registry PATH", False


def _description(files: Sequence[CubeFile], package_version: str) -> str:
    ccds = ", ".join(f"camera {f.camera} CCD {f.ccd} ({f.bin}-pixel bins)" for f in files)
    return (
        f"<p>Scattered-light cubes of TESS sector {files[0].sector} for the lk_scatterlight "
        "lightkurve plugin: the time-variable scattered-light background (Earth and Moon "
        "glow) of each CCD, measured from the full-frame images on a coarse grid of time "
        "planes, row bins and column bins, with its uncertainty, in electron/s per pixel.</p>"
        f"<p>Files: {ccds}; cube format version {files[0].version}. Published with "
        f"lk_scatterlight {package_version}.</p>"
        "<p>Use: <code>lk_scatterlight.load_cube(sector, camera, ccd)</code> downloads and "
        "checks the file; <code>tpf.to_corrector('scatterlight')</code> corrects a target "
        "pixel file.</p>"
    )


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover
