"""The ``lk_scatterlight.model`` package: one job per module, every old name still importable.

``model.py`` became a package; these tests pin what its users import.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import lk_scatterlight.model as model

#: Where each public name of ``lk_scatterlight.model`` is defined.
HOMES = {
    "features": (
        "FEATURES ORBIT_GAP camera_azimuth earth_brightness earth_illuminated_fraction "
        "earth_lit_longitude geometry_features segment_ids"
    ),
    "ensemble": (
        "TARGET_OFFSET NETWORK_INPUTS TreeEnsemble Network network_inputs stack_networks blend"
    ),
    "fileformat": (
        "MODEL_VERSION MODEL_KIND DEFAULT_MODEL MODEL_KEYS NETWORK_KEYS EPHEMERIS_KEYS "
        "ModelFormatError default_model_path"
    ),
    "ephemeris": "TableEphemeris",
    "core": "GRID_STEP ScatterLightModel ModelField",
    "calibration": (
        "MIN_ORBIT Calibration CalibratedBackground fit_calibration calibrate background_pixels"
    ),
    "tpf": "sector_from_time tpf_position ModelBackground",
}


@pytest.mark.parametrize("module", sorted(HOMES))
def test_every_public_name_is_reexported_from_its_module(module):
    home = importlib.import_module(f"lk_scatterlight.model.{module}")
    for name in HOMES[module].split():
        assert getattr(model, name) is getattr(home, name), name
        assert name in model.__all__, name


def test_all_lists_exactly_the_public_names():
    listed = {name for names in HOMES.values() for name in names.split()}
    assert set(model.__all__) == listed | {"ModelNotFoundError"}
    assert model.ModelNotFoundError.__module__ == "lk_scatterlight.exceptions"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("_check_keys", "lk_scatterlight.model.fileformat.check_keys"),
        ("_bilinear", "lk_scatterlight.model.core._bilinear"),
        ("_merge_short_segments", "lk_scatterlight.model.calibration._merge_short_segments"),
        ("_position_shift", "lk_scatterlight.model.tpf._position_shift"),
    ],
)
def test_private_names_of_the_old_module_resolve_with_a_warning(old, new):
    home, _, name = new.rpartition(".")
    with pytest.warns(DeprecationWarning, match=f"use {new}"):
        found = getattr(model, old)
    assert found is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="has no attribute '_nothing'"):
        _ = model._nothing


def test_importing_the_model_stays_light():
    """No scipy, lightkurve, tesswcs or builder until a prediction needs them."""
    code = (
        "import sys, lk_scatterlight.model; "
        "print(sorted(m for m in ('scipy', 'lightkurve', 'tesswcs', 'sklearn', "
        "'lk_scatterlight.builder', 'lk_scatterlight.geometry') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
