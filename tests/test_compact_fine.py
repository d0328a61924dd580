"""A compact cube's fine layer carries what the compression loses in its tiles (#19).

A full-CCD cube of 16-px bins holds a smooth, low-rank field plus noise and, in
the middle of one 64-px tile, a 32 x 32 px box whose brightness flickers from
plane to plane by about the noise: no component follows it, so the rank rule
drops it and the compact planes miss it there. The fine layer of that tile is
made as the builder makes it, from the frames minus the dense planes at the
fine bin centres (stored block by block, or factored by `compress_tile`).
"""

import copy

import numpy as np
import pytest
from cube_helpers import make_cube

from lk_scatterlight import ScatterLightCube
from lk_scatterlight.compactfine import carry_compression
from lk_scatterlight.finelayer import FINE_PRECISION, FineLayer, compress_tile

NT, NB, COARSE = 40, 128, 16  # planes, bins per side, bin [px]
PB, TILE = 4, 16  # fine bin [px], fine bins per tile side: 64-px tiles
SIDE = PB * TILE
TR, TC = 10, 12  # the kept tile
NOISE, FINE_NOISE = 0.1, 0.05  # e-/s per bin and per fine bin
FLICKER = 0.1  # e-/s: as much as the rank rule lets go
ROW0, COL0 = 1 + SIDE * TR, 45 + SIDE * TC  # the tile's first pixel
ROWS = ROW0 + np.arange(-8, SIDE + 8)  # the tile and 8 px on either side
COLS = COL0 + np.arange(-8, SIDE + 8)
CENTRE = (slice(None), slice(24, 56), slice(24, 56))  # the box, in ROWS x COLS


def truth(row, col, seed=0):
    """The scattered light [e-/s] at 1-based pixels ``row`` x ``col``, shape (NT, nrow, ncol)."""
    rng = np.random.default_rng(seed)
    flicker = rng.normal(0, FLICKER, NT)
    y, x = (np.asarray(row, float)[:, None] - 1) / 2048, (np.asarray(col, float)[None] - 45) / 2048
    images = np.stack([np.sin(3 * x + 2 * y), np.cos(2 * x - y)])
    series = np.column_stack([np.linspace(0, 20, NT), 5 * np.sin(np.arange(NT) / 4)])
    inside = (np.abs(row - (ROW0 + 31.5))[:, None] < 16) & (np.abs(col - (COL0 + 31.5)) < 16)
    return 100 + np.einsum("tk,krc->trc", series, images) + flicker[:, None, None] * inside


def dense_planes():
    """Bin means of the truth plus noise, and their errors, shape (NT, NB, NB)."""
    rng = np.random.default_rng(1)
    centres = COARSE * np.arange(NB) + (COARSE - 1) / 2
    # The box covers 2 x 2 bins exactly and the field is smooth: bin means ~ centre values.
    flux = truth(1 + centres, 45 + centres)
    flux += rng.normal(0, NOISE, flux.shape)
    return flux.astype(np.float32), np.full(flux.shape, NOISE, np.float32)


def layer(dense: ScatterLightCube, factored: bool) -> FineLayer:
    """The tile's blocks as the builder makes them: frames minus dense planes, fine grid."""
    rng = np.random.default_rng(2)
    rows = ROW0 + PB * np.arange(TILE) + (PB - 1) / 2
    cols = COL0 + PB * np.arange(TILE) + (PB - 1) / 2
    coarse = dense.evaluate(dense.btjd, rows, cols).flux.value.astype(float)
    data = truth(rows, cols) + rng.normal(0, FINE_NOISE, (NT, TILE, TILE)) - coarse
    place = dict(tile_row=[TR] * NT, tile_col=[TC] * NT, plane=np.arange(NT))
    error = np.full(NT, FINE_NOISE)
    if not factored:
        return FineLayer.from_blocks(PB, TILE, data=data, error=error, **place)
    coef, basis = compress_tile(data, error)
    assert coef is not None
    k = basis.shape[0]
    return FineLayer(
        PB, TILE, **place, error=error, basis=basis, basis_start=np.zeros(NT, int),
        rank=np.full(NT, k), coef=coef.ravel(), coef_start=k * np.arange(NT),
    )  # fmt: skip


def cube(fine=None):
    flux, flux_err = dense_planes()
    return make_cube(NT, NB, NB, bin=COARSE, flux=flux, flux_err=flux_err, fine=fine)


def at_planes(c):
    """``cube.evaluate`` at every plane centre on ROWS x COLS, float64."""
    return c.evaluate(c.btjd, ROWS, COLS).flux.value.astype(float)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


@pytest.fixture(scope="module", params=[False, True], ids=["raw", "factored"])
def cubes(request):
    dense = cube()
    dense = cube(layer(dense, request.param))
    return dense, dense.compress()


def error(c):
    """RMS of ``c`` minus the truth over the box, per pixel."""
    return rms((at_planes(c) - truth(ROWS, COLS))[CENTRE])


def test_the_compression_loses_the_flicker(cubes):
    """The premise: without the carried loss, the compact cube misses the flicker."""
    dense, compact = cubes
    plain = cube()
    assert rms((at_planes(plain.compress()) - at_planes(plain))[CENTRE]) > 0.7 * FLICKER
    assert compact.rank < 10


def test_compact_as_accurate_as_dense_in_the_kept_tile(cubes):
    """With the loss carried, the compact cube is as close to the truth over the box as
    the dense one (within 10 %); without it, it was ~2x further (the flicker)."""
    dense, compact = cubes
    before = copy.copy(compact)
    before.fine = dense.fine  # the layer as built, against the dense planes
    assert error(compact) < 1.1 * error(dense)
    assert error(before) > 1.5 * error(dense)


def test_no_step_at_the_tile_sides(cubes):
    """Pixel-to-pixel changes across the tile's sides stay within the dense cube's."""
    dense, compact = cubes
    sides = np.r_[4:12, SIDE + 4 : SIDE + 12]
    for axis in (1, 2):
        step = [np.abs(np.diff(at_planes(c), axis=axis)).take(sides, axis=axis) for c in cubes]
        assert step[1].max() < 1.2 * step[0].max()


def test_compact_unchanged_away_from_the_tile(cubes):
    """Away from kept tiles the compact cube is its coarse factors alone, as before."""
    _, compact = cubes
    without = cube().compress()
    rows, cols = np.arange(100, 120), np.arange(1500, 1520)
    a = compact.evaluate(compact.btjd, rows, cols)
    b = without.evaluate(without.btjd, rows, cols)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.flux_err, b.flux_err)


def test_layer_keeps_its_blocks_errors_and_storage(cubes):
    """Only the stored values change: same blocks, planes, errors and basis size; a
    factored tile takes the loss's least-squares share in its own basis images."""
    dense, compact = cubes
    old, new = dense.fine, compact.fine
    for name in ("tile_row", "tile_col", "plane", "error", "basis_start", "rank", "coef_start"):
        np.testing.assert_array_equal(getattr(new, name), getattr(old, name))
    assert new.basis.shape == old.basis.shape
    carried = (new.blocks() - old.blocks()).reshape(NT, -1).astype(float)
    if old.rank[0] > 1:  # the carried blocks lie in the span of the tile's basis
        span = old.basis.reshape(old.rank[0], -1).astype(float)
        inside = carried @ np.linalg.pinv(span) @ span
        np.testing.assert_allclose(inside, carried, atol=1e-4)
    assert rms(carried) > 0.3 * FLICKER


def test_loss_within_noise_leaves_the_layer_alone():
    """A compression that loses nothing above the noise returns the layer itself."""
    dense = cube()
    fine = layer(dense, factored=False)
    flux, flux_err = dense_planes()
    tile = slice(4 * TR, 4 * TR + 4), slice(4 * TC, 4 * TC + 4)
    flux[:, tile[0], tile[1]] = flux[:, 4 * TR + 8 : 4 * TR + 12, tile[1]]  # no box
    lowrank = make_cube(NT, NB, NB, bin=COARSE, flux=flux, flux_err=flux_err).compress()._lowrank
    out = carry_compression(fine, lowrank, flux, flux_err, dense.row, dense.column)
    assert out is fine


def test_round_trip(cubes, tmp_path):
    """The carried layer is written and read like any other: rounded within its bound."""
    _, compact = cubes
    read = ScatterLightCube.read(compact.write(tmp_path / "compact.fits"))
    rounding = read.fine.blocks() - compact.fine.blocks()
    assert rms(rounding) <= FINE_PRECISION * compact.fine.error.max()
    assert rms(at_planes(read) - at_planes(compact)) < 0.1 * NOISE
