"""Registration of the lightkurve hooks and the ``tpf.scatterlight`` accessor."""

import importlib

import lightkurve as lk
import numpy as np
import pytest
from lightkurve.correctors import PLDCorrector

import lk_scatterlight
from lk_scatterlight import ScatterLightCorrector, ScatterLightWarning, simulate
from lk_scatterlight import accessor as accessor_module

ORIGINAL = lk.targetpixelfile.TargetPixelFile.to_corrector


@pytest.fixture(scope="module")
def field():
    return simulate.ScatteredLightField(seed=5)


@pytest.fixture(scope="module")
def cube(field):
    return simulate.make_cube(field, pixel_bin=128, seed=5)


@pytest.fixture(scope="module")
def tpf(field, cube):
    return simulate.make_tpf(field, row=300, column=400, seed=5)


@pytest.fixture
def registered():
    """Leave the hooks registered after each test, whatever it did."""
    yield
    lk_scatterlight.register()


def test_import_registers():
    assert lk_scatterlight.is_registered()
    assert lk.TessTargetPixelFile.to_corrector.__wrapped__ is ORIGINAL


@pytest.mark.usefixtures("registered")
def test_register_is_idempotent_and_unregister_restores():
    hook = lk.TessTargetPixelFile.__dict__["to_corrector"]
    lk_scatterlight.register()
    lk_scatterlight.register()
    assert lk.TessTargetPixelFile.__dict__["to_corrector"] is hook
    lk_scatterlight.unregister()
    assert not lk_scatterlight.is_registered()
    assert lk.TessTargetPixelFile.to_corrector is ORIGINAL
    assert "to_corrector" not in lk.TessTargetPixelFile.__dict__
    assert not hasattr(lk.TessTargetPixelFile, "scatterlight")
    lk_scatterlight.unregister()  # twice is harmless
    lk_scatterlight.register()
    assert lk_scatterlight.is_registered()


@pytest.mark.usefixtures("registered")
def test_reload_never_stacks_wrappers():
    importlib.reload(accessor_module)
    accessor_module.register()
    importlib.reload(lk_scatterlight)
    hook = lk.TessTargetPixelFile.__dict__["to_corrector"]
    assert hook.__wrapped__ is ORIGINAL


def test_kepler_untouched():
    assert "to_corrector" not in lk.KeplerTargetPixelFile.__dict__
    assert lk.KeplerTargetPixelFile.to_corrector is ORIGINAL
    assert not hasattr(lk.KeplerTargetPixelFile, "scatterlight")


def test_lightkurve_methods_unchanged(tpf):
    assert isinstance(tpf.to_corrector("pld"), PLDCorrector)
    assert isinstance(tpf.to_corrector(), PLDCorrector)
    with pytest.raises(ValueError, match="'sff' method requires a `LightCurve`") as sff:
        tpf.to_corrector("sff")
    with pytest.raises(ValueError, match="'sff' method requires a `LightCurve`") as sff_original:
        ORIGINAL(tpf, "sff")
    assert str(sff.value) == str(sff_original.value)
    with pytest.raises(ValueError, match="Unrecognized method 'foo'") as unknown:
        tpf.to_corrector("foo")
    assert "scatterlight" in str(unknown.value)
    assert "pld" in str(unknown.value)
    lc = tpf.to_lightcurve(method="pld")
    assert len(lc) == len(tpf)


@pytest.mark.usefixtures("registered")
def test_warns_when_accessor_name_taken():
    lk_scatterlight.unregister()
    lk.TessTargetPixelFile.scatterlight = "someone else's"
    try:
        with pytest.warns(ScatterLightWarning, match="already defined"):
            lk_scatterlight.register()
        assert lk_scatterlight.is_registered()
    finally:
        lk_scatterlight.unregister()
        if "scatterlight" in lk.TessTargetPixelFile.__dict__:
            del lk.TessTargetPixelFile.scatterlight


def test_accessor(tpf, cube):
    assert lk.TessTargetPixelFile.scatterlight is accessor_module.ScatterLightAccessor
    model = tpf.scatterlight.model(cube=cube)
    assert model.shape == tpf.shape
    expected = cube.evaluate(tpf.time, 300 + np.arange(11), 400 + np.arange(11)).flux
    np.testing.assert_allclose(model.value, expected.value)

    corrected = tpf.scatterlight.correct(cube=cube, fuse=False)
    assert isinstance(corrected, lk.TessTargetPixelFile)
    np.testing.assert_allclose(
        corrected.flux.value, tpf.flux.value - model.value, rtol=1e-5, atol=1e-3
    )
    lc = tpf.scatterlight.to_lightcurve(cube=cube, aperture_mask="all", fuse=False)
    direct = ScatterLightCorrector(tpf, cube=cube, aperture_mask="all", fuse=False).correct()
    np.testing.assert_allclose(lc.flux.value, direct.flux.value)
    axes = tpf.scatterlight.plot(frame=2, cube=cube)
    assert len(axes) == 3
