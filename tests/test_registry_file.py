"""`lk_scatterlight.registry_file`: one owner of the registry file's location."""

from __future__ import annotations

from pathlib import Path

import pytest

from lk_scatterlight import ScatterLightError
from lk_scatterlight.builder import publish
from lk_scatterlight.registry_file import (
    REGISTRY_ENV,
    default_registry,
    merge_registry,
    registry_file,
)


def test_downloads_read_the_file_publish_writes(monkeypatch):
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    written, in_checkout = default_registry()
    assert Path(str(registry_file())).resolve() == written
    assert written.is_file()
    assert in_checkout  # the tests run from a source checkout
    assert publish.default_registry is default_registry  # the old name still works


def test_override_and_its_error(monkeypatch, tmp_path):
    mine = tmp_path / "registry.txt"
    mine.write_text("# empty\n")
    monkeypatch.setenv(REGISTRY_ENV, str(mine))
    assert registry_file() == mine
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "missing.txt"))
    with pytest.raises(ScatterLightError, match="not a file; fix the path or unset"):
        registry_file()


def test_merge_keeps_comments_and_permissions(tmp_path):
    path = tmp_path / "registry.txt"
    path.write_text("# mine\na.fits sha256:1 http://x/a\nb.fits sha256:2 http://x/b\n")
    path.chmod(0o640)
    merge_registry(path, ["b.fits sha256:3 http://y/b", "c.fits sha256:4 http://y/c"])
    assert path.read_text().splitlines() == [
        "# mine",
        "a.fits sha256:1 http://x/a",
        "b.fits sha256:3 http://y/b",
        "c.fits sha256:4 http://y/c",
    ]
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["registry.txt"]  # no temporary left
