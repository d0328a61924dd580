"""Shared pytest configuration and fixtures for lk_scatterlight."""

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")  # no display in tests

#: Real TESS reference data, read-only, next to the repository (``../shared/data``).
#: Never copy these files into the repository.
SHARED_DATA_DIR = Path(__file__).parents[1].parent / "shared" / "data"

BACKML_CUBE = "tess-backml_sl_cube_s0002_1-1_bin128_test.fits"


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
