"""Shared pytest configuration and fixtures for lk_scatterlight."""

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # no display in tests

#: Real TESS reference data, read-only, next to the repository (``../shared/data``).
#: Never copy these files into the repository.
SHARED_DATA_DIR = Path(__file__).parents[1].parent / "shared" / "data"

BACKML_CUBE = "tess-backml_sl_cube_s0002_1-1_bin128_test.fits"
#: JPL Horizons vector table of TESS, sectors 1-5.
HORIZONS = "horizons_tess_ssb_2018-06-01_to_2018-12-31.csv"


@pytest.fixture(scope="session")
def shared_data():
    """Return a function ``shared_data(name) -> Path`` for a real data file.

    The test is skipped, naming the missing file, when the file is absent.
    """

    def get(name: str) -> Path:
        path = SHARED_DATA_DIR / name
        if not path.is_file():
            pytest.skip(f"real data file {name} not found in {SHARED_DATA_DIR}")
        return path

    return get


@pytest.fixture(scope="session")
def backml_cube_path(shared_data) -> Path:
    """The real tess-backml 0.2 cube (sector 2, camera 1, CCD 1, 20 planes, 16x16 bins)."""
    return shared_data(BACKML_CUBE)


@pytest.fixture(scope="session")
def horizons_path(shared_data) -> Path:
    """The real JPL Horizons vector table of TESS (sectors 1-5)."""
    return shared_data(HORIZONS)


@pytest.fixture(scope="session")
def horizons(horizons_path):
    """That table as a `~lk_scatterlight.geometry.HorizonsEphemeris`, read once."""
    from lk_scatterlight import geometry

    return geometry.HorizonsEphemeris.read(horizons_path)


@pytest.fixture(scope="session")
def field():
    """The simulated scattered-light field of seed 3 (smooth, no structure)."""
    from lk_scatterlight import simulate

    return simulate.ScatteredLightField(seed=3)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated registry settings: a tmp cache, no caller overrides, no waits between
    download retries. Yields the cache folder."""
    import pooch
    from registry_helpers import clear_registry_env

    from lk_scatterlight import conf
    from lk_scatterlight.registry import CACHE_ENV, TIMEOUT_ENV

    clear_registry_env(monkeypatch)
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv(TIMEOUT_ENV, "10")
    monkeypatch.setattr(pooch.core.time, "sleep", lambda seconds: None)
    with conf.set_temp("cache_dir", ""), conf.set_temp("registry_url", ""):
        yield cache


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 standing in for Zenodo (`registry_helpers.CubeServer`)."""
    from registry_helpers import CubeServer

    srv = CubeServer(tmp_path / "remote")
    yield srv
    srv.stop()
