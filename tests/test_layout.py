"""The package's import layout: the core never imports the builder, and no import cycles.

Reads the imports with `ast` (``docs/import_graph.py``, which also draws the
graph in ``docs/developer.rst``), so nothing is imported and the test is cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

#: Known exceptions, each with the reason it is still there; anything else fails.
KNOWN_CORE_TO_BUILDER: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = []


@pytest.fixture(scope="module")
def import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "docs" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph(import_graph):
    return import_graph.package_imports(ROOT / "lk_scatterlight")


def test_the_graph_sees_lazy_and_relative_imports(import_graph, tmp_path):
    """The checks below can fail: a cycle through a function-level import is found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import X\n"
        "def f():\n    from .. import a\n"
    )
    (package / "c.py").write_text("from . import sub\n")
    graph = import_graph.package_imports(package)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}  # lazy counts, TYPE_CHECKING does not
    assert graph["pkg.c"] == {"pkg.sub"}
    assert import_graph.cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    assert import_graph.package_imports(package, top_level=True)["pkg.sub.b"] == set()


def test_core_never_imports_the_builder(import_graph, graph):
    found = set(import_graph.core_to_builder(graph))
    assert found - KNOWN_CORE_TO_BUILDER == set()


def test_drivers_import_the_builder_only_inside_functions(import_graph):
    """cli, demo and ondemand run the builder, but importing them must stay cheap."""
    top = import_graph.package_imports(ROOT / "lk_scatterlight", top_level=True)
    eager = [
        (name, target)
        for name, targets in top.items()
        if import_graph.layer(name) == "driver"
        for target in targets
        if import_graph.layer(target) == "builder"
    ]
    assert eager == []


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("lk_scatterlight.geometry", "core"),
        ("lk_scatterlight.geometry.pointing", "core"),
        ("lk_scatterlight.simulate.ffi", "core"),
        ("lk_scatterlight.finelayer.fileformat", "core"),
        ("lk_scatterlight.builder.publish", "builder"),
        ("lk_scatterlight.builder.publish.cubes", "builder"),
        ("lk_scatterlight.cli.build", "driver"),
        ("lk_scatterlight.demo", "driver"),
    ],
)
def test_modules_of_a_subpackage_share_its_layer(import_graph, graph, module, expected):
    assert module in graph  # the module exists, so the check below is about a real file
    assert import_graph.layer(module) == expected


def test_no_import_cycles(import_graph, graph):
    found = import_graph.cycles(graph)
    assert [c for c in found if c not in KNOWN_CYCLES] == []


@pytest.mark.parametrize(
    ("module", "old", "new"),
    [
        ("lk_scatterlight.cube", "_compress", "lk_scatterlight.lowrank.compress_planes"),
        ("lk_scatterlight.cube", "_compact_cube", "lk_scatterlight.cube.compact_cube"),
        (
            "lk_scatterlight.builder.pipeline",
            "_run_build",
            "lk_scatterlight.builder.runner.run_build",
        ),
        (
            "lk_scatterlight.builder.pipeline",
            "_strap_sums",
            "lk_scatterlight.builder.strap_photometry.strap_sums",
        ),
        (
            "lk_scatterlight.builder.publish",
            "_publish",
            "lk_scatterlight.builder.publish.workflow._publish",
        ),
        (
            "lk_scatterlight.builder.publish",
            "_load_state",
            "lk_scatterlight.builder.publish.state._load_state",
        ),
        ("lk_scatterlight.geometry", "_wcs_los", "lk_scatterlight.geometry.pointing._wcs_los"),
        ("lk_scatterlight.geometry", "_angles", "lk_scatterlight.geometry.angles._angles"),
        ("lk_scatterlight.simulate", "_barycorr", "lk_scatterlight.simulate.spoc._barycorr"),
        ("lk_scatterlight.simulate", "_spill", "lk_scatterlight.simulate.render._spill"),
        (
            "lk_scatterlight.fusion",
            "_clipped_sums",
            "lk_scatterlight.fusion.local._clipped_sums",
        ),
        (
            "lk_scatterlight.finelayer",
            "_integer_column",
            "lk_scatterlight.finelayer.fileformat._integer_column",
        ),
        (
            "lk_scatterlight.finelayer",
            "_gram_eigen",
            "lk_scatterlight.finelayer.compress._gram_eigen",
        ),
        ("lk_scatterlight.finelayer", "_SCIENCE", "lk_scatterlight.finelayer.core._SCIENCE"),
    ],
)
def test_moved_private_names_still_resolve_with_a_warning(module, old, new):
    home, _, name = new.rpartition(".")
    with pytest.warns(DeprecationWarning, match=f"use {new}"):
        found = getattr(importlib.import_module(module), old)
    assert found is getattr(importlib.import_module(home), name)
    with pytest.raises(AttributeError, match="has no attribute '_nothing'"):
        _ = importlib.import_module(module)._nothing


def test_public_names_stay_where_they_were():
    from lk_scatterlight.builder import publish, straps
    from lk_scatterlight.builder.pipeline import BuildConfig
    from lk_scatterlight.cube import ENCODINGS, FORMAT_VERSION, CompressionInfo  # noqa: F401
    from lk_scatterlight.finelayer import FINE_EXTENSIONS, FINE_PRECISION, fileformat
    from lk_scatterlight.fusion import MIN_PIXELS, core
    from lk_scatterlight.registry import REGISTRY_ENV

    assert publish.ZenodoClient.__module__ == "lk_scatterlight.builder.zenodo"
    assert publish.merge_registry.__module__ == "lk_scatterlight.registry_file"
    assert straps.strap_groups.__module__ == "lk_scatterlight.straps"
    assert BuildConfig.__module__ == "lk_scatterlight.builder.config"
    assert REGISTRY_ENV == "LK_SCATTERLIGHT_REGISTRY"
    assert MIN_PIXELS == core.MIN_PIXELS  # a constant of the module before its split
    assert FINE_PRECISION is fileformat.FINE_PRECISION
    assert FINE_EXTENSIONS == ("FINE", "FINE_INDEX", "FINE_COEF")


#: Names of the modules split into packages, as other modules, tests and benchmarks
#: import them from the old path (with no warning), and the module now defining each.
SPLIT_NAMES = [
    ("lk_scatterlight.builder.publish", "publish_cubes", "cubes"),
    ("lk_scatterlight.builder.publish", "publish_model", "models"),
    ("lk_scatterlight.builder.publish", "PublishResult", "workflow"),
    ("lk_scatterlight.builder.publish", "state_file", "state"),
    ("lk_scatterlight.geometry", "CCDPointing", "pointing"),
    ("lk_scatterlight.geometry", "HorizonsEphemeris", "ephemeris"),
    ("lk_scatterlight.geometry", "compute_geometry", "angles"),
    ("lk_scatterlight.geometry", "_builtin_body", "ephemeris"),  # model.py, builder/training.py
    ("lk_scatterlight.geometry", "_as_jd_tdb", "ephemeris"),  # tessvectors.py
    ("lk_scatterlight.simulate", "FFISimulator", "ffi"),
    ("lk_scatterlight.simulate", "ScatteredLightField", "field"),
    ("lk_scatterlight.simulate", "make_tpf", "tpf"),
    ("lk_scatterlight.simulate", "_render_stars", "render"),  # benchmarks/bench_fusion.py
    ("lk_scatterlight.fusion", "fuse", "core"),
    ("lk_scatterlight.fusion", "background_pixels", "local"),
    ("lk_scatterlight.fusion", "Fusion", "result"),
    ("lk_scatterlight.finelayer", "FineLayer", "core"),
    ("lk_scatterlight.finelayer", "compress_tile", "compress"),  # builder/fine/assemble.py
]


@pytest.mark.parametrize(("module", "name", "home"), SPLIT_NAMES)
def test_split_modules_keep_their_names(module, name, home):
    """Warnings are errors in the tests: these names must not go through `moved_names`."""
    found = getattr(importlib.import_module(module), name)
    assert found.__module__ == f"{module}.{home}"
