"""Checks of the shipped registry against the real servers (run with ``--remote-data``)."""

from __future__ import annotations

import pytest
from registry_helpers import clear_registry_env

from lk_scatterlight import ScatterLightCube, available_cubes, conf
from lk_scatterlight.cube import FORMAT_VERSION
from lk_scatterlight.registry import get_pooch


@pytest.mark.remote_data
def test_every_published_cube_downloads_and_matches_its_hash(tmp_path, monkeypatch):
    """Each URL in the shipped registry answers with the file its hash and name promise."""
    clear_registry_env(monkeypatch)
    with conf.set_temp("registry_url", ""):
        table = available_cubes()
        if len(table) == 0:
            pytest.skip("the shipped registry lists no published cubes yet")
        pup = get_pooch(tmp_path)
        for row in table:
            # pooch downloads to a temporary file and raises unless its SHA256
            # matches the registry.
            path = pup.fetch(row["filename"], progressbar=False)
            if row["version"] > FORMAT_VERSION:
                continue  # a newer format: this package cannot open it
            cube = ScatterLightCube.read(path)
            found = (cube.sector, cube.camera, cube.ccd, cube.pixel_bin)
            expected = (row["sector"], row["camera"], row["ccd"], row["bin"])
            assert found == expected, row["filename"]
