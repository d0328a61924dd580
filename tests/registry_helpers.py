"""Helpers for the registry tests: a local HTTP server, small cubes and registry files.

Not a test module; `test_registry.py`, `test_cli_registry.py` and `test_publish.py`
build their fixtures from these.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cube_helpers
import numpy as np
import pooch

from lk_scatterlight import ScatterLightCube
from lk_scatterlight.registry import (
    CACHE_ENV,
    REGISTRY_ENV,
    TIMEOUT_ENV,
    URL_ENV,
    parse_cube_filename,
)


class _Handler(SimpleHTTPRequestHandler):
    """Serves the server's folder, or fails as its owner's ``mode`` says."""

    def do_GET(self) -> None:
        owner: CubeServer = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.requests.append(self.path)
        if owner.barrier is not None:  # hold each request until all expected ones arrived
            try:
                owner.barrier.wait(timeout=20)
            except threading.BrokenBarrierError:
                pass
        if owner.mode in (404, 500):
            self.send_error(owner.mode)
            return
        if owner.mode == "tamper":  # a different file than the registry promises
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            body = body[:-10] + b"tampered!!"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass


class LocalHTTPServer:
    """A real HTTP server on 127.0.0.1 (a free port), served from a daemon thread.

    ``handler`` is the request handler class; it reaches this object as
    ``self.server.owner``. `stop` takes the server down (connection refused
    afterwards). Subclasses set their state before calling ``__init__``.
    """

    def __init__(self, handler) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self.running = True

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()


class CubeServer(LocalHTTPServer):
    """A `LocalHTTPServer` serving the files of ``directory``.

    Set ``mode`` to 404 or 500 to answer every request with that status, or to
    ``"tamper"`` to serve altered files. ``requests`` records the paths asked for.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.mode: int | str = "ok"
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.barrier: threading.Barrier | None = None
        super().__init__(functools.partial(_Handler, directory=str(self.directory)))


def make_cube(
    sector: int = 2,
    camera: int = 1,
    ccd: int = 1,
    bin: int = 16,
    gap: bool = False,
    seed: int = 0,
) -> ScatterLightCube:
    """A small valid cube: 5 planes of 4 x 4 bins of ``bin`` pixels.

    Rows are 8.5 + 16 * arange(4) and columns 52.5 + 16 * arange(4) for
    ``bin=16``. With ``gap=True`` the planes are 0.5 d wide and a 3.5 d hole
    separates the third and fourth plane (one gap).
    """
    time = np.array([1400.0, 1400.5, 1401.0, 1401.5, 1402.0])
    if gap:
        time[3:] += 3.5
    rng = np.random.default_rng(seed)
    flux = 100.0 + rng.normal(0, 1, (5, 4, 4))
    return cube_helpers.make_cube(
        nrow=4,
        ncol=4,
        time=time,
        sector=sector,
        camera=camera,
        ccd=ccd,
        bin=bin,
        flux=flux,
        flux_err=np.ones_like(flux),
        time_start=time - 0.25,
        time_stop=time + 0.25,
        meta={"creator": "tests", "note": "registry test cube"},
    )


def publish(directory: Path, names: list[str]) -> dict[str, Path]:
    """Write a cube for each file name into ``directory``; returns name -> path."""
    paths = {}
    for i, name in enumerate(names):
        spec = parse_cube_filename(name)
        cube = make_cube(spec.sector, spec.camera, spec.ccd, spec.bin, seed=i)
        paths[name] = cube.write(Path(directory) / name)
    return paths


def write_registry(path: Path, files: dict[str, Path], base_url: str | None = None) -> Path:
    """Write a pooch registry of ``files`` (name -> local copy), as `publish` would.

    Each line is ``name sha256:HASH url`` with url ``base_url/name``; without
    ``base_url`` the URL field is left out.
    """
    lines = ["# test registry: name sha256:HASH url"]
    for name, local in files.items():
        line = f"{name} sha256:{pooch.file_hash(str(local))}"
        if base_url is not None:
            line += f" {base_url.rstrip('/')}/{name}"
        lines.append(line)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def clear_registry_env(monkeypatch) -> None:
    """Remove the caller's cache, URL, registry and timeout settings for this test."""
    for var in (CACHE_ENV, URL_ENV, REGISTRY_ENV, TIMEOUT_ENV):
        monkeypatch.delenv(var, raising=False)
