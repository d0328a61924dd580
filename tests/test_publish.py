"""Tests of `lk_scatterlight.builder.publish` and ``lk-scatterlight publish``.

Everything runs against `FakeZenodo`, a threaded HTTP server on 127.0.0.1
implementing the part of Zenodo's deposition REST API that publishing uses,
with in-memory state and switchable faults. It also serves the published
files at ``/records/{id}/files/{name}``, so a test can go from the
maintainer's upload to the user's `load_cube` through the written registry,
offline. Waits between retries are recorded instead of slept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
import re
import threading
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pooch
import pytest
from registry_helpers import LocalHTTPServer, clear_registry_env, make_cube

import lk_scatterlight
from lk_scatterlight import PublishError, ScatterLightError, conf, load_cube
from lk_scatterlight.builder import publish
from lk_scatterlight.builder import zenodo as zenodo_client
from lk_scatterlight.builder.publish import (
    MAX_RETRIES,
    SANDBOX_URL,
    TOKEN_ENV,
    UPLOAD_ATTEMPTS,
    ZENODO_URL,
    ZENODO_URL_ENV,
    merge_registry,
    publish_cubes,
    record_file_url,
    zenodo_url,
)
from lk_scatterlight.cli import main
from lk_scatterlight.registry import CACHE_ENV, REGISTRY_ENV, RETRIES, cube_filename

TOKEN = "test-token-123"
NAME1 = cube_filename(2, 1, 1, 16)
NAME2 = cube_filename(2, 1, 2, 16)
OTHER = f"lk-scatterlight_s0009_1-1_bin16_v2.fits sha256:{'0' * 64} https://example.org/x.fits"


# ---------------------------------------------------------------------- fake Zenodo
@dataclass
class Fault:
    """Answer the next ``times`` matching requests with ``kind``: an HTTP status,
    ``"corrupt"`` (store and report a damaged upload) or ``"drop"`` (hang up
    mid-request)."""

    kind: int | str
    method: str
    path: str  # regular expression searched in the URL path
    times: int = 1
    headers: dict = field(default_factory=dict)
    body: dict | None = None


class FakeZenodo(LocalHTTPServer):
    """Zenodo's deposition API in memory, served on 127.0.0.1 from a thread.

    ``log`` lists (method, path) of every request, ``puts`` counts the
    successful uploads per file name, ``publishes`` the successful publish
    actions; `fault` switches on a failure.
    """

    def __init__(self, token: str = TOKEN):
        self.token = token
        self.lock = threading.Lock()
        self.depositions: dict[int, dict] = {}
        self.buckets: dict[str, int] = {}  # bucket id -> deposition id
        self.ids = itertools.count(1001)
        self.log: list[tuple[str, str]] = []
        self.agents: set[str] = set()
        self.puts: Counter = Counter()
        self.publishes = 0
        self.faults: list[Fault] = []
        super().__init__(_ZenodoHandler)

    def fault(self, kind, method: str, path: str, times: int = 1, **kwargs) -> None:
        self.faults.append(Fault(kind, method, path, times, **kwargs))

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and re.search(fault.path, path):
                fault.times -= 1
                return fault
        return None

    def api_calls(self, method: str | None = None, path: str = "") -> list[tuple[str, str]]:
        return [
            (m, p)
            for m, p in self.log
            if p.startswith("/api/") and method in (None, m) and re.search(path, p)
        ]

    # ------------------------------------------------------------------ model
    def new_deposition(self, metadata=None, files=None, concept=None) -> dict:
        dep_id = next(self.ids)
        bucket = str(uuid.uuid4())
        self.buckets[bucket] = dep_id
        dep = {
            "id": dep_id,
            "concept": concept or dep_id,
            "metadata": dict(metadata or {}),
            "files": dict(files or {}),
            "bucket": bucket,
            "submitted": False,
        }
        self.depositions[dep_id] = dep
        return dep

    def to_json(self, dep: dict) -> dict:
        api = f"{self.url}/api/deposit/depositions/{dep['id']}"
        links = {"self": api, "html": f"{self.url}/deposit/{dep['id']}", "publish": api}
        if not dep["submitted"]:
            links["bucket"] = f"{self.url}/api/files/{dep['bucket']}"
        if dep.get("latest_draft"):
            links["latest_draft"] = f"{self.url}/api/deposit/depositions/{dep['latest_draft']}"
        return {
            "id": dep["id"],
            "record_id": dep["id"],
            "conceptrecid": str(dep["concept"]),
            "submitted": dep["submitted"],
            "state": "done" if dep["submitted"] else "unsubmitted",
            "doi": f"10.5072/zenodo.{dep['id']}" if dep["submitted"] else "",
            "metadata": dep["metadata"],
            "links": links,
            "files": [
                {"id": f"{dep['id']}-{n}", "filename": n, "filesize": len(b), "checksum": _md5(b)}
                for n, b in dep["files"].items()
            ],
        }


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _validation(field_name: str, message: str) -> dict:
    return {
        "status": 400,
        "message": "Validation error.",
        "errors": [{"field": field_name, "messages": [message]}],
    }


class _ZenodoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests expects

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def log_message(self, format, *args):  # keep test output clean
        pass

    def _send(self, status: int, body=None, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body)
        data = data.encode() if isinstance(data, str) else data
        self.send_response(status)
        if not isinstance(body, bytes) and body is not None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        z: FakeZenodo = self.server.owner  # type: ignore[attr-defined]
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        with z.lock:
            z.log.append((method, path))
            z.agents.add(self.headers.get("User-Agent", ""))
            fault = z.take_fault(method, path)
        if fault is not None and fault.kind == "drop":
            self.rfile.read(length // 2)  # part of the body, then hang up without answering
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        if fault is not None and isinstance(fault.kind, int):
            answer = fault.body or {"status": fault.kind, "message": f"Fault {fault.kind}."}
            self._send(fault.kind, answer, fault.headers)
            return
        if path.startswith("/api/") and self.headers.get("Authorization") != f"Bearer {z.token}":
            self._send(
                401,
                {
                    "status": 401,
                    "message": "The server could not verify that you are authorized to access "
                    "the URL requested.",
                },
            )
            return
        with z.lock:
            status, answer = self._route(z, method, path, body, fault)
        self._send(status, answer)

    def _route(self, z: FakeZenodo, method, path, body, fault):
        if m := re.fullmatch(r"/records/(\d+)/files/(.+)", path):
            dep = z.depositions.get(int(m[1]))
            name = urllib.parse.unquote(m[2])
            if method != "GET" or dep is None or not dep["submitted"] or name not in dep["files"]:
                return 404, {"status": 404, "message": "Not found."}
            return 200, dep["files"][name]
        if path == "/api/deposit/depositions" and method == "POST":
            return 201, z.to_json(z.new_deposition())
        if m := re.fullmatch(r"/api/deposit/depositions/(\d+)(/actions/(\w+))?", path):
            dep = z.depositions.get(int(m[1]))
            if dep is None:
                return 404, {"status": 404, "message": "PID does not exist."}
            action = m[3]
            if action is None and method == "GET":
                return 200, z.to_json(dep)
            if action is None and method == "PUT":
                if dep["submitted"]:
                    return 400, {"status": 400, "message": "Deposition is published."}
                dep["metadata"] = json.loads(body)["metadata"]
                return 200, z.to_json(dep)
            if action == "newversion" and method == "POST":
                if not dep["submitted"]:
                    return 400, {"status": 400, "message": "Only published records."}
                draft = next(
                    (
                        d
                        for d in z.depositions.values()
                        if d["concept"] == dep["concept"] and not d["submitted"]
                    ),
                    None,
                ) or z.new_deposition(dep["metadata"], dep["files"], dep["concept"])
                dep["latest_draft"] = draft["id"]
                return 201, z.to_json(dep)
            if action == "publish" and method == "POST":
                if dep["submitted"]:
                    return 400, {"status": 400, "message": "Deposition is already published."}
                for key in ("title", "upload_type", "description", "creators"):
                    if not dep["metadata"].get(key):
                        return 400, _validation(f"metadata.{key}", "Field may not be empty.")
                if not dep["files"]:
                    return 400, _validation("files", "Minimum one file must be provided.")
                dep["submitted"] = True
                z.publishes += 1
                return 202, z.to_json(dep)
        if m := re.fullmatch(r"/api/files/([\w-]+)(/(.+))?", path):
            dep = z.depositions.get(z.buckets.get(m[1], -1))
            if dep is None:
                return 404, {"status": 404, "message": "Bucket does not exist."}
            name = urllib.parse.unquote(m[3] or "")
            if not name and method == "GET":
                contents = [
                    {"key": n, "size": len(b), "checksum": f"md5:{_md5(b)}"}
                    for n, b in dep["files"].items()
                ]
                return 200, {"id": m[1], "contents": contents}
            if dep["submitted"]:
                return 403, {"status": 403, "message": "Bucket is locked."}
            if name and method == "PUT":
                if fault is not None and fault.kind == "corrupt":
                    body = body[:-8] + b"garbage!"
                else:
                    z.puts[name] += 1
                dep["files"][name] = body
                checksum = f"md5:{_md5(body)}"
                return 201, {"key": name, "size": len(body), "checksum": checksum}
            if name and method == "DELETE":
                dep["files"].pop(name, None)
                return 204, None
        return 405, {"status": 405, "message": f"{method} {path} is not implemented."}


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def zenodo(monkeypatch):
    """A fresh fake Zenodo, with the site URL and token environment pointing at it."""
    server = FakeZenodo()
    monkeypatch.setenv(ZENODO_URL_ENV, server.url)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    yield server
    server.stop()


@pytest.fixture
def sleeps(monkeypatch):
    """Waits between retries, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(zenodo_client.time, "sleep", waits.append)
    return waits


@pytest.fixture
def cubes(tmp_path) -> Path:
    """A folder with two valid sector-2 cubes (camera 1, CCDs 1 and 2)."""
    folder = tmp_path / "cubes"
    folder.mkdir()
    for ccd in (1, 2):
        make_cube(2, 1, ccd, 16, seed=ccd).write(folder / cube_filename(2, 1, ccd, 16))
    return folder


@pytest.fixture
def registry(tmp_path) -> Path:
    """A registry with a comment and an unrelated entry, both to be kept."""
    path = tmp_path / "registry.txt"
    path.write_text(f"# my registry\n\n{OTHER}\n", encoding="utf-8")
    return path


def state_of(folder: Path) -> dict:
    return json.loads((folder / ".lk-scatterlight-publish-s0002.json").read_text())


def upload(folder, registry, **kwargs):
    kwargs.setdefault("creators", ["Doe, Jane"])
    return publish_cubes([folder], upload=True, registry=registry, **kwargs)


# ---------------------------------------------------------------------- dry run
def test_dry_run_does_nothing(zenodo, cubes, registry, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)  # a dry run needs no token
    before = registry.read_text()
    assert main(["publish", str(cubes), "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Dry run: nothing is uploaded or written (add --upload to publish).")
    assert f"Zenodo:      {zenodo.url}" in out
    assert "Deposition:  a new deposition" in out
    assert "lk_scatterlight scattered-light cubes, sector 2" in out
    for name in (NAME1, NAME2):
        path = cubes / name
        sha = pooch.file_hash(str(path))
        assert f"  {name}  {path.stat().st_size / 1000:.1f} kB  sha256:{sha}" in out
        assert f"  {name} sha256:{sha} {zenodo.url}/records/<record>/files/{name}?download=1" in out
    assert f"Registry:    {registry} (given with --registry)" in out
    assert zenodo.log == []  # nothing sent
    assert registry.read_text() == before
    assert sorted(p.name for p in cubes.iterdir()) == [NAME1, NAME2]  # no state file either


def test_dry_run_default_registry_and_new_version(zenodo, cubes, capsys):
    assert main(["publish", str(cubes / NAME1), "--record", "77", "--sandbox"]) == 0
    out = capsys.readouterr().out
    path, in_checkout = publish.default_registry()
    assert path == Path(lk_scatterlight.__file__).parent / "data" / "registry.txt"
    assert in_checkout  # the tests run from a source checkout
    assert f"Registry:    {path} (default: the registry of this lk_scatterlight source" in out
    assert "Deposition:  a new version of record 77" in out
    assert "(inherited from the previous version)" in out
    assert zenodo.log == []


def test_site_selection(monkeypatch):
    monkeypatch.delenv(ZENODO_URL_ENV, raising=False)
    assert zenodo_url() == ZENODO_URL == "https://zenodo.org"
    assert zenodo_url(sandbox=True) == SANDBOX_URL == "https://sandbox.zenodo.org"
    monkeypatch.setenv(ZENODO_URL_ENV, "http://127.0.0.1:1/")
    assert zenodo_url(sandbox=True) == "http://127.0.0.1:1"  # the override wins
    assert zenodo_url(base_url="http://h") == "http://h"
    assert record_file_url(SANDBOX_URL, 5, NAME1) == (
        f"https://sandbox.zenodo.org/records/5/files/{NAME1}?download=1"
    )


def test_merge_registry_keeps_comments_and_replaces(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text(f"# head\n{NAME1} sha256:{'1' * 64} http://old\n\n# tail\n", encoding="utf-8")
    lines = [f"{NAME2} sha256:{'2' * 64} http://b", f"{NAME1} sha256:{'3' * 64} http://a"]
    merge_registry(path, lines)
    assert path.read_text().splitlines() == ["# head", lines[1], "", "# tail", lines[0]]
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]  # no temporary file left
    merge_registry(tmp_path / "new" / "r.txt", lines[:1])
    assert (tmp_path / "new" / "r.txt").read_text().splitlines()[1:] == lines[:1]


# ---------------------------------------------------------------------- invalid files
def _tamper(path: Path) -> None:
    from astropy.io import fits

    with fits.open(path) as hdul:
        start = hdul.fileinfo(1)["datLoc"]
    data = bytearray(path.read_bytes())
    data[start + 5] ^= 1  # one bit of the flux: the HDU's DATASUM no longer matches
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: (d / NAME1).write_bytes(b"not FITS" * 400), "cannot be published"),
        (lambda d: make_cube(2, 1, 3).write(d / NAME1), "named for another cube"),
        (lambda d: make_cube(2, 1, 1).write(d / "my_cube.fits"), "--rename"),
        (lambda d: _tamper(make_cube(2, 1, 1).write(d / NAME1)), "fails its FITS checksum"),
        (lambda d: (d / NAME1).write_bytes(b""), "is empty"),
        (
            lambda d: [make_cube(s, 1, 1).write(d / cube_filename(s, 1, 1, 16)) for s in (2, 3)],
            "sectors 2, 3; each sector is one Zenodo record",
        ),
    ],
    ids=["not-fits", "misnamed", "nonstandard-name", "checksum", "empty", "two-sectors"],
)
def test_invalid_cube_refused_before_network(zenodo, tmp_path, registry, make, match):
    folder = tmp_path / "bad"
    folder.mkdir()
    make(folder)
    paths = sorted(folder.iterdir())
    with pytest.raises(PublishError, match=match):
        publish_cubes(paths, upload=True, registry=registry)
    assert zenodo.log == []
    assert sorted(folder.iterdir()) == paths  # no state file
    assert OTHER in registry.read_text()


def test_nan_cube_refused(zenodo, tmp_path, registry):
    cube = make_cube(2, 1, 1)
    cube._flux[1, 2, 3] = np.nan  # bypass the constructor's check, as a buggy build might
    cube.write(tmp_path / NAME1)
    with pytest.raises(PublishError, match="NaN"):
        publish_cubes([tmp_path / NAME1], upload=True, registry=registry)
    assert zenodo.log == []


def test_rename_publishes_under_standard_name(zenodo, tmp_path, registry):
    make_cube(2, 1, 1).write(tmp_path / "my_cube.fits")
    result = publish_cubes([tmp_path / "my_cube.fits"], rename=True, registry=registry)
    assert [f.name for f in result.files] == [NAME1]
    assert result.files[0].renamed
    assert f"(local file {tmp_path / 'my_cube.fits'})" in result.summary()


def test_missing_token(zenodo, cubes, registry, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(PublishError, match="No Zenodo token: set the environment variable"):
        upload(cubes, registry)
    assert zenodo.log == []


# ---------------------------------------------------------------------- round trip
def test_publish_then_users_load_the_cubes(zenodo, cubes, registry, tmp_path, monkeypatch, sleeps):
    result = upload(cubes, registry, title="Sector 2 cubes", version="1.0")
    assert not result.dry_run
    assert result.uploaded == [NAME1, NAME2]
    assert result.skipped == []
    record = result.record_id
    assert zenodo.publishes == 1
    assert zenodo.puts == {NAME1: 1, NAME2: 1}
    assert sleeps == []
    assert zenodo.agents == {
        f"lk_scatterlight/{lk_scatterlight.__version__} Python/{platform.python_version()}"
    }
    meta = zenodo.depositions[record]["metadata"]
    assert meta["title"] == "Sector 2 cubes"
    assert meta["upload_type"] == "dataset"
    assert meta["creators"] == [{"name": "Doe, Jane"}]
    assert meta["license"] == "cc-by-4.0"
    assert meta["version"] == "1.0"
    assert "TESS" in meta["keywords"]
    assert "sector 2" in meta["description"]
    assert result.doi == f"10.5072/zenodo.{record}"
    # The registry: comment and other entry kept, one line per file with the record's URL.
    lines = registry.read_text().splitlines()
    assert lines[:3] == ["# my registry", "", OTHER]
    assert lines[3:] == [
        f"{n} sha256:{pooch.file_hash(str(cubes / n))} "
        f"{zenodo.url}/records/{record}/files/{n}?download=1"
        for n in (NAME1, NAME2)
    ]
    assert result.registry_lines == lines[3:]
    state = state_of(cubes)
    assert state["complete"]
    assert state["record_id"] == record
    assert state["verified"] == [NAME1, NAME2]
    # The user's side: the written registry, a fresh cache, the files from the server.
    clear_registry_env(monkeypatch)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with conf.set_temp("cache_dir", ""), conf.set_temp("registry_url", ""):
        for ccd, name in ((1, NAME1), (2, NAME2)):
            cube = load_cube(2, 1, ccd, progressbar=False)
            assert (cube.sector, cube.camera, cube.ccd) == (2, 1, ccd)
            np.testing.assert_array_equal(cube.flux, make_cube(2, 1, ccd, seed=ccd).flux)
            assert (tmp_path / "cache" / name).read_bytes() == (cubes / name).read_bytes()
    downloads = [p for m, p in zenodo.log if p.startswith("/records/")]
    assert downloads == [f"/records/{record}/files/{n}" for n in (NAME1, NAME2)]
    # Publishing the same sector again without --record is refused.
    with pytest.raises(PublishError, match=f"already published as record {record}.*--record"):
        upload(cubes, registry)


def test_new_version_of_a_record(zenodo, cubes, registry, sleeps):
    first = upload(cubes / NAME1, registry)
    old = (cubes / NAME1).read_bytes()
    make_cube(2, 1, 1, seed=99).write(cubes / NAME1, overwrite=True)  # rebuilt
    result = upload(cubes, registry, creators=None, record=first.record_id)
    assert result.record_id != first.record_id
    assert result.target == f"a new version of record {first.record_id}"
    assert zenodo.api_calls("POST", "newversion") == [
        ("POST", f"/api/deposit/depositions/{first.record_id}/actions/newversion")
    ]
    # The draft inherited the old NAME1: replaced, not kept.
    assert zenodo.api_calls("DELETE") == [
        ("DELETE", f"/api/files/{zenodo.depositions[result.record_id]['bucket']}/{NAME1}")
    ]
    assert zenodo.depositions[first.record_id]["files"][NAME1] == old
    assert zenodo.depositions[result.record_id]["files"] == {
        n: (cubes / n).read_bytes() for n in (NAME1, NAME2)
    }
    meta = zenodo.depositions[result.record_id]["metadata"]
    assert meta["creators"] == [{"name": "Doe, Jane"}]  # inherited
    lines = registry.read_text().splitlines()
    assert lines[:3] == ["# my registry", "", OTHER]
    assert [line.split()[0] for line in lines[3:]] == [NAME1, NAME2]  # NAME1 replaced in place
    assert all(f"/records/{result.record_id}/files/" in line for line in lines[3:])
    assert zenodo.publishes == 2


# ---------------------------------------------------------------------- errors and resume
def test_bad_token(zenodo, cubes, registry, monkeypatch, capsys):
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    code = main(["publish", str(cubes), "--upload", "--registry", str(registry)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "rejected the access token (HTTP 401: The server could not verify" in err
    assert "set ZENODO_TOKEN to a valid personal access token" in err
    assert zenodo.depositions == {}
    assert registry.read_text().splitlines() == ["# my registry", "", OTHER]
    assert not (cubes / ".lk-scatterlight-publish-s0002.json").exists()


def test_rate_limit_waits_retry_after(zenodo, cubes, registry, sleeps):
    zenodo.fault(429, "POST", r"/depositions$", headers={"Retry-After": "7"})
    result = upload(cubes, registry)
    assert sleeps == [7.0]
    assert len(zenodo.api_calls("POST", r"/depositions$")) == 2
    assert len(zenodo.depositions) == 1
    assert result.record_id in zenodo.depositions
    assert NAME2 in registry.read_text()


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", NAME2 + "$"), ("POST", "/actions/publish$")],
    ids=["upload", "publish"],
)
def test_server_errors_then_resume(zenodo, cubes, registry, sleeps, method, path):
    zenodo.fault(500, method, path, times=MAX_RETRIES + 1)
    with pytest.raises(PublishError, match=r"HTTP 500.* 5 times.*run the same command again"):
        upload(cubes, registry)
    assert sleeps == [2.0, 4.0, 8.0, 16.0]
    assert zenodo.publishes == 0
    assert NAME1 not in registry.read_text()
    state = state_of(cubes)
    assert not state["complete"]
    assert state["verified"] == ([NAME1] if method == "PUT" else [NAME1, NAME2])
    result = upload(cubes, registry)  # the rerun resumes the same draft
    assert result.target.startswith(f"draft deposition {state['deposition_id']} (resumed")
    assert result.skipped == ([NAME1] if method == "PUT" else [NAME1, NAME2])
    assert zenodo.puts == {NAME1: 1, NAME2: 1}  # no file uploaded twice
    assert zenodo.publishes == 1
    assert len(zenodo.depositions) == 1
    assert len(zenodo.api_calls("POST", r"/depositions$")) == 1
    assert [line.split()[0] for line in registry.read_text().splitlines()[3:]] == [NAME1, NAME2]


def test_resume_needs_the_same_options(zenodo, cubes, registry, sleeps):
    zenodo.fault(500, "POST", "/actions/publish$", times=MAX_RETRIES + 1)
    with pytest.raises(PublishError):
        upload(cubes, registry)
    with pytest.raises(PublishError, match="unfinished upload of a new deposition.*without"):
        upload(cubes, registry, record=5)
    with pytest.raises(PublishError, match=f"unfinished upload of {NAME1}, {NAME2}, not of"):
        upload(cubes / NAME1, registry)
    # The dry run shows the draft it would resume.
    result = publish_cubes([cubes], registry=registry)
    assert result.target.startswith(f"draft deposition {state_of(cubes)['deposition_id']}")


@pytest.mark.parametrize("times", [1, UPLOAD_ATTEMPTS])
def test_checksum_mismatch_never_registered(zenodo, cubes, registry, sleeps, times):
    zenodo.fault("corrupt", "PUT", NAME1 + "$", times=times)
    if times < UPLOAD_ATTEMPTS:  # one damaged upload: sent again, then all is well
        upload(cubes, registry)
        assert zenodo.api_calls("DELETE", NAME1 + "$")  # the damaged copy was removed
        assert zenodo.puts == {NAME1: 1, NAME2: 1}
        assert zenodo.publishes == 1
        assert NAME1 in registry.read_text()
        return
    with pytest.raises(PublishError, match=r"checksum 'md5:[0-9a-f]+', not md5:.*no registry"):
        upload(cubes, registry)
    assert zenodo.publishes == 0
    assert registry.read_text().splitlines() == ["# my registry", "", OTHER]
    assert state_of(cubes)["verified"] == []
    upload(cubes, registry)  # the rerun replaces the damaged file
    assert zenodo.api_calls("DELETE", NAME1 + "$")
    dep = next(iter(zenodo.depositions.values()))
    assert dep["files"][NAME1] == (cubes / NAME1).read_bytes()
    assert zenodo.publishes == 1


def test_resume_after_draft_deleted_on_website(zenodo, cubes, registry, sleeps):
    zenodo.fault(500, "PUT", NAME2 + "$", times=MAX_RETRIES + 1)
    with pytest.raises(PublishError):
        upload(cubes, registry)
    zenodo.depositions.pop(state_of(cubes)["deposition_id"])  # discarded by the maintainer
    result = upload(cubes, registry)
    assert result.target == "a new deposition"
    assert result.uploaded == [NAME1, NAME2]
    assert state_of(cubes)["deposition_id"] == result.deposition_id
    assert zenodo.publishes == 1


def test_connection_dropped_mid_upload(zenodo, cubes, registry, sleeps):
    zenodo.fault("drop", "PUT", NAME1 + "$")
    result = upload(cubes, registry)
    assert sleeps == [2.0]
    assert len(zenodo.api_calls("PUT", NAME1 + "$")) == 2
    assert zenodo.puts == {NAME1: 1, NAME2: 1}
    assert zenodo.depositions[result.record_id]["files"][NAME1] == (cubes / NAME1).read_bytes()


def test_validation_error_shows_zenodo_message(zenodo, cubes, registry, sleeps):
    zenodo.fault(
        400,
        "PUT",
        r"/depositions/\d+$",
        body=_validation("metadata.license", "Invalid license provided."),
    )
    with pytest.raises(
        PublishError,
        match=r"refused to set the deposition's metadata \(HTTP 400: Validation error\.; "
        r"metadata\.license: Invalid license provided\.\)",
    ) as info:
        upload(cubes, registry, license="my-own")
    assert isinstance(info.value, ScatterLightError)
    assert sleeps == []  # a 4xx is not retried
    assert zenodo.publishes == 0


def test_cli_upload(zenodo, cubes, registry, capsys, sleeps):
    args = ["publish", str(cubes), "--upload", "--registry", str(registry)]
    assert main([*args, "--creator", "Doe, Jane", "--creator", "Roe, Rich"]) == 0
    out = capsys.readouterr().out
    record = state_of(cubes)["record_id"]
    assert "Dry run" not in out
    assert "Uploaded 2 file(s), 0 already in the deposition." in out
    assert f"Published:   record {record}, DOI 10.5072/zenodo.{record}" in out
    assert "Registry lines written:" in out
    meta = zenodo.depositions[record]["metadata"]
    assert meta["creators"] == [{"name": "Doe, Jane"}, {"name": "Roe, Rich"}]


# ---------------------------------------------------------------------- learned models
MODEL_NAME = "sim-test"
MODEL_FILE = "lk-scatterlight-model_sim-test_v1.npz"


@pytest.fixture(scope="module")
def small_model():
    """A small model really trained (5 trees), with the shipped model's TESS position table
    (so it predicts offline) and validation numbers in its metadata."""
    pytest.importorskip("sklearn")
    from lk_scatterlight.builder.training import Samples, fit_model
    from lk_scatterlight.model import FEATURES, ScatterLightModel

    rng = np.random.default_rng(5)
    X = rng.uniform(0, 180, (3000, len(FEATURES)))
    y = X[:, 0] + X[:, 2]  # rises with the Earth's angle and distance
    samples = Samples(X, y, np.ones(3000), np.zeros(3000, int), np.arange(3000.0), [{}])
    trees = fit_model(samples, params={"max_iter": 5}, progress=False)
    meta = {
        "sectors": [1, 2],
        "cameras": [1, 4],
        "sources": [{"kind": "dataset"}] * 3,
        "n_samples": 3000,
        "seed": 0,
        "validation": {
            "method": "leave-one-sector-out, scale + offset per orbit",
            "light_curves": [{}, {}],
            "median_percent": 4.25,
            "median_quadratic_percent": 11.5,
            "relative_error": 0.125,
        },
    }
    return ScatterLightModel(trees, meta, ScatterLightModel.load("default").ephemeris_table)


@pytest.fixture
def model_path(tmp_path, small_model) -> Path:
    (tmp_path / "models").mkdir()
    return small_model.save(tmp_path / "models" / "trained.npz")


def test_model_dry_run_does_nothing(zenodo, model_path, registry, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    args = ["publish-model", str(model_path), MODEL_NAME, "--registry", str(registry)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Dry run: nothing is uploaded or written")
    assert "Title:       lk_scatterlight scattered-light model 'sim-test'" in out
    sha = pooch.file_hash(str(model_path))
    assert f"  {MODEL_FILE}  " in out
    assert f"(local file {model_path})" in out
    assert f"  {MODEL_FILE} sha256:{sha} {zenodo.url}/records/<record>/files/{MODEL_FILE}" in out
    assert zenodo.log == []
    assert registry.read_text().splitlines() == ["# my registry", "", OTHER]
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["trained.npz"]


def test_publish_model_then_fetch_and_predict(
    zenodo, model_path, small_model, registry, tmp_path, monkeypatch, sleeps
):
    pytest.importorskip("tesswcs", reason="predicting needs the CCD pointing from tesswcs")
    from lk_scatterlight.exceptions import DownloadError
    from lk_scatterlight.model import ScatterLightModel

    result = publish.publish_model(
        model_path, MODEL_NAME, upload=True, registry=registry, creators=["Doe, Jane"]
    )
    record = result.record_id
    assert result.uploaded == [MODEL_FILE]
    assert zenodo.publishes == 1
    assert zenodo.depositions[record]["files"] == {MODEL_FILE: model_path.read_bytes()}
    meta = zenodo.depositions[record]["metadata"]
    assert meta["title"] == "lk_scatterlight scattered-light model 'sim-test'"
    assert "machine learning" in meta["keywords"]
    description = meta["description"]
    assert "Training data: sectors 1, 2; cameras 1, 4; 3 cube training sets; 3,000 samples" in (
        description
    )
    assert (
        "(leave-one-sector-out, scale + offset per orbit, 2 light curves): median RMS 4.25 %"
        in (description)
    )
    assert "quadratic in time: 11.50 %); relative error 0.125" in description
    line = (
        f"{MODEL_FILE} sha256:{pooch.file_hash(str(model_path))} "
        f"{zenodo.url}/records/{record}/files/{MODEL_FILE}?download=1"
    )
    assert registry.read_text().splitlines() == ["# my registry", "", OTHER, line]
    state = json.loads(
        (model_path.parent / ".lk-scatterlight-publish-model-sim-test.json").read_text()
    )
    assert state["complete"]
    assert state["model"] == MODEL_NAME
    # The user's side: the registry written, a fresh cache, the file from the server.
    clear_registry_env(monkeypatch)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    time = np.linspace(1330.0, 1332.0, 7)
    with conf.set_temp("cache_dir", ""), conf.set_temp("registry_url", ""):
        fetched = ScatterLightModel.load(MODEL_NAME, progressbar=False)
        assert fetched.path == tmp_path / "cache" / MODEL_FILE
        assert fetched.path.read_bytes() == model_path.read_bytes()
        expected = small_model.predict(1, 4, 3, [[100.0], [900.0]], [500.0, 1500.0], time)
        got = fetched.predict(1, 4, 3, [[100.0], [900.0]], [500.0, 1500.0], time)
        np.testing.assert_array_equal(got, expected)
        assert expected.shape == (7, 2, 2)
        assert np.ptp(expected) > 0
        # A file changed on the server after publication fails the registry's hash.
        zenodo.depositions[record]["files"][MODEL_FILE] = b"a different file"
        with pytest.raises(DownloadError, match="does not match the known hash"):
            ScatterLightModel.load(MODEL_NAME, cache_dir=tmp_path / "fresh", progressbar=False)
    assert [p for m, p in zenodo.log if p.startswith("/records/")] == [
        f"/records/{record}/files/{MODEL_FILE}"
    ] * (2 + RETRIES)  # the first download, then the tampered one and its retries
    # Publishing the same model again without --record is refused.
    with pytest.raises(
        PublishError, match=f"Model 'sim-test' was already published as record {record}"
    ):
        publish.publish_model(model_path, MODEL_NAME, upload=True, registry=registry)


def test_model_bad_token(zenodo, model_path, registry, monkeypatch, capsys):
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    args = ["publish-model", str(model_path), MODEL_NAME, "--upload", "--registry", str(registry)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "rejected the access token (HTTP 401" in err
    assert zenodo.depositions == {}
    assert registry.read_text().splitlines() == ["# my registry", "", OTHER]


def test_model_server_error_then_resume(zenodo, model_path, registry, sleeps):
    zenodo.fault(500, "PUT", MODEL_FILE + "$", times=MAX_RETRIES + 1)
    with pytest.raises(PublishError, match=r"HTTP 500.* 5 times.*run the same command again"):
        publish.publish_model(model_path, MODEL_NAME, upload=True, registry=registry)
    assert zenodo.publishes == 0
    assert MODEL_FILE not in registry.read_text()
    result = publish.publish_model(model_path, MODEL_NAME, upload=True, registry=registry)
    assert result.target.startswith("draft deposition")
    assert zenodo.puts == {MODEL_FILE: 1}
    assert zenodo.publishes == 1
    assert registry.read_text().splitlines()[-1].startswith(f"{MODEL_FILE} sha256:")


@pytest.mark.parametrize(
    ("content", "name", "match"),
    [
        (b"not a model", MODEL_NAME, "cannot be published: .*not a readable .npz model"),
        (b"", MODEL_NAME, "is empty"),
        (None, "default", "'default' is the shipped model"),
        (None, "Bad_Name", "is not a model name"),
    ],
    ids=["junk", "empty", "reserved-name", "bad-name"],
)
def test_not_a_model_refused_before_network(
    zenodo, tmp_path, model_path, registry, content, name, match
):
    path = model_path
    if content is not None:
        path = tmp_path / "junk.npz"
        path.write_bytes(content)
    with pytest.raises(PublishError, match=match):
        publish.publish_model(path, name, upload=True, registry=registry)
    assert zenodo.log == []
    assert registry.read_text().splitlines() == ["# my registry", "", OTHER]


def test_model_not_published_over_another_without_replace(
    zenodo, model_path, registry, sleeps, capsys
):
    other = f"{MODEL_FILE} sha256:{'0' * 64} https://example.org/{MODEL_FILE}"
    merge_registry(registry, [other])
    args = ["publish-model", str(model_path), MODEL_NAME, "--upload", "--registry", str(registry)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already lists model 'sim-test' as another file" in err
    assert "(--replace)" in err
    assert zenodo.log == []
    assert main([*args, "--replace"]) == 0
    lines = registry.read_text().splitlines()
    assert lines[:3] == ["# my registry", "", OTHER]
    assert lines[3].startswith(f"{MODEL_FILE} sha256:{pooch.file_hash(str(model_path))} ")
    assert len(lines) == 4  # replaced in place
