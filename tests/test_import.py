"""A cheap ``import lk_scatterlight``: what it imports, and the lightkurve hooks it still adds.

Each test runs a fresh interpreter (``sys.modules`` of this one already holds
lightkurve). Timing is measured in benchmarks, not asserted here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Modules `import lk_scatterlight` (and `lk-scatterlight --help`) must not import.
HEAVY = ("lightkurve", "matplotlib", "requests", "pooch", "scipy.signal", "pandas")


def run(code: str) -> str:
    """Run ``code`` in a new interpreter importing this checkout; return its stdout."""
    env = dict(os.environ)
    root = str(Path(__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_is_light_and_registers_when_lightkurve_arrives():
    out = run(
        f"""
        import sys
        import lk_scatterlight
        heavy = [name for name in {HEAVY!r} if name in sys.modules]
        assert not heavy, heavy
        hooks = [f for f in sys.meta_path if hasattr(f, "_lk_scatterlight_post_import_hook")]
        assert len(hooks) == 1, sys.meta_path

        import lightkurve as lk
        from lk_scatterlight.accessor import ScatterLightAccessor

        assert lk_scatterlight.is_registered()
        assert getattr(lk.TessTargetPixelFile.to_corrector, "_lk_scatterlight_hook", False)
        assert lk.TessTargetPixelFile.scatterlight is ScatterLightAccessor
        assert not any(hasattr(f, "_lk_scatterlight_post_import_hook") for f in sys.meta_path)
        # lightkurve keeps its own loader (package data, reload).
        assert type(lk.__spec__.loader).__name__ != "_RegisteringLoader"

        import importlib
        importlib.reload(lk_scatterlight)  # never stacks hooks or wrappers
        importlib.reload(lk)
        assert lk_scatterlight.is_registered()
        assert not any(hasattr(f, "_lk_scatterlight_post_import_hook") for f in sys.meta_path)
        original = lk.targetpixelfile.TargetPixelFile.to_corrector
        assert lk.TessTargetPixelFile.to_corrector.__wrapped__ is original

        from lk_scatterlight import ScatterLightCorrector, ScatterLightCube, fetch_cube
        assert "ScatterLightCorrector" in dir(lk_scatterlight)
        assert lk_scatterlight.registry.fetch_cube is fetch_cube  # submodules as attributes
        print("ok")
        """
    )
    assert out == "ok\n"


def test_lightkurve_imported_first_registers_at_once():
    out = run(
        """
        import sys
        import lightkurve as lk
        import lk_scatterlight
        assert lk_scatterlight.is_registered()
        assert hasattr(lk.TessTargetPixelFile, "scatterlight")
        assert not any(hasattr(f, "_lk_scatterlight_post_import_hook") for f in sys.meta_path)
        print("ok")
        """
    )
    assert out == "ok\n"


def test_find_spec_alone_keeps_the_hook():
    """Asking whether lightkurve is installed does not spend the hook."""
    out = run(
        """
        import importlib.util, sys
        import lk_scatterlight
        assert importlib.util.find_spec("lightkurve") is not None
        assert "lightkurve" not in sys.modules
        import lightkurve
        assert lk_scatterlight.is_registered()
        print("ok")
        """
    )
    assert out == "ok\n"


def test_unknown_attribute():
    import lk_scatterlight

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lk_scatterlight.nope  # noqa: B018


def test_cli_help_imports_no_heavy_module():
    out = run(
        f"""
        import sys
        from lk_scatterlight.cli import main
        try:
            main(["--help"])
        except SystemExit as exit:
            assert exit.code == 0
        for argv in (["build", "--help"], ["fetch", "--help"], ["dataset", "--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
        loaded = [m for m in {HEAVY!r} + ("lk_scatterlight.builder",) if m in sys.modules]
        assert not loaded, loaded
        print("ok")
        """
    )
    assert out.endswith("ok\n")


@pytest.fixture(scope="module")
def info_modules(tmp_path_factory):
    """The modules loaded by `lk-scatterlight info CUBE` in a fresh interpreter."""
    from registry_helpers import make_cube

    path = make_cube(3, 2, 4).write(tmp_path_factory.mktemp("info") / "cube.fits")
    out = run(
        f"""
        import sys
        from lk_scatterlight.cli import main
        assert main(["info", {str(path)!r}]) == 0
        print(" ".join(sorted(sys.modules)))
        """
    )
    return set(out.splitlines()[-1].split())


def test_cli_info_imports_no_builder(info_modules):
    assert "lk_scatterlight.cube" in info_modules
    assert not {m for m in info_modules if m.startswith("lk_scatterlight.builder")}


def test_cli_info_imports_no_heavy_module(info_modules):
    assert not [m for m in (*HEAVY, "scipy.sparse") if m in info_modules]
