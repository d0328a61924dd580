"""Assertions shared by tests that compare cubes built in different ways."""

import numpy as np

from lk_scatterlight.finelayer import FINE_PRECISION


def assert_same_fine(cube, reference, atol: float = 1e-4, stored: bool = False) -> None:
    """Both cubes have no fine layer, or layers with the same blocks and values.

    The default ``atol`` [e-/s] (a thousandth of a fine bin's noise) absorbs the float32
    rounding by which two builds of the same frames differ in different processes.
    ``stored``: ``cube`` was read from a file, whose fine values are rounded to steps
    tied to each block's error (`FineLayer.quantum`: RMS <= `FINE_PRECISION` = 10 % of it,
    measured 6.7 %); the differences must then stay within that RMS, and no value off by
    twice its block's error (a rounded coefficient times a peaked basis image reached ~0.7
    of it at a few bins in 10**6 on the structured simulated field with 5 % steps).
    """
    assert (cube.fine is None) == (reference.fine is None)
    if cube.fine is None:
        return
    a, b = cube.fine, reference.fine
    assert (a.pixel_bin, a.tile) == (b.pixel_bin, b.tile)
    for name in ("tile_row", "tile_col", "plane"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    if stored:
        diff = a.blocks() - b.blocks()
        error = np.asarray(b.error)[:, None, None]
        assert np.sqrt(np.mean(diff**2)) <= FINE_PRECISION * np.sqrt(np.mean(error**2))
        assert np.all(np.abs(diff) <= atol + 2 * error)
    else:
        np.testing.assert_allclose(a.blocks(), b.blocks(), rtol=1e-5, atol=atol)
    # A file stores the errors within 2**-8 (`error_step`).
    np.testing.assert_allclose(a.error, b.error, rtol=2.0**-8 if stored else 1e-5)


def assert_stored_flux(read, exact) -> None:
    """``read`` (a compact cube read from a file) equals ``exact`` within the rounding of
    the stored factors: flux RMS <= 5 % of the quoted error (`LowRank.quantum`), errors
    within 2**-8 (`error_step`)."""
    ratio = (read.flux - exact.flux).value / exact.flux_err.value
    assert np.sqrt(np.mean(ratio**2)) <= 0.05
    np.testing.assert_allclose(read.flux_err.value, exact.flux_err.value, rtol=2.0**-8)
