"""A small client of Zenodo's REST API (depositions, bucket uploads, publishing).

`ZenodoClient` makes each request with the token as a bearer header and a
User-Agent naming lk_scatterlight (`user_agent`); it retries server errors
(5xx), 429 and dropped connections up to `MAX_RETRIES` times with a doubling
wait (`BACKOFF`, capped at `BACKOFF_CAP`, or the server's ``Retry-After``), and
turns every other failure into a `~lk_scatterlight.exceptions.PublishError`
that says what failed and what to do. `zenodo_url` picks the site (zenodo.org,
the sandbox, or ``LK_SCATTERLIGHT_ZENODO_URL``) and `record_file_url` gives a
published file's download URL. What to publish, and the registry, are
`lk_scatterlight.builder.publish`.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import PublishError

if TYPE_CHECKING:  # imported lazily at run time, to keep imports fast
    import requests

__all__ = [
    "ZenodoClient",
    "ZenodoHTTPError",
    "zenodo_url",
    "record_file_url",
    "user_agent",
    "md5_hex",
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
        return {
            item["key"]: md5_hex(item.get("checksum", "")) for item in answer.get("contents", [])
        }

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
                raise ZenodoHTTPError(self._error(response, what, attempt), status)

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


class ZenodoHTTPError(PublishError):
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


def md5_hex(checksum: str) -> str:
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
