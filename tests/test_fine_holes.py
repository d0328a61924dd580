"""The fine layer's filled bins (issue 19): the fill error the builder measures, how
blocks quote it on their holes, and how files store it (``FINE_HOLES``, ``FILLERR``,
``HOLES``; files without them read and evaluate as before)."""

import numpy as np
import pytest
from astropy.io import fits
from cube_helpers import make_cube

from lk_scatterlight import CubeFormatError, ScatterLightCube
from lk_scatterlight.builder.fine import (
    FILL_CLASSES,
    MISFIT_COLUMNS,
    assemble_fine,
    depth_class,
    make_fine_context,
)
from lk_scatterlight.builder.fine.assemble import (
    _mean_squared_weight,
)
from lk_scatterlight.builder.fine.fill import (
    _fill_along_structure,
    _fill_isotropic,
    _fill_profiles,
)
from lk_scatterlight.builder.fine.misfit import (
    _fill_amplitude,
    _fill_misfit,
    _fill_scale,
)
from lk_scatterlight.finelayer import FineLayer

PB, TILE = 4, 16
SIDE = PB * TILE
NT = 3
NT_HOLED = 512 // SIDE  # tiles per side of `holed_context`


def holed_layer(fill=2.0):
    """Two blocks of tile (3, 4) at planes 0 and 1 (error 0.3), the second with a 4 x 4-bin
    hole quoting ``fill``; a block of tile (3, 5) without holes."""
    rng = np.random.default_rng(2)
    data = rng.normal(0, 3, (3, TILE, TILE)).astype(np.float32)
    hole = np.zeros((1, TILE, TILE), bool)
    hole[0, 5:9, 6:10] = True
    return FineLayer(
        PB,
        TILE,
        tile_row=[3, 3, 3],
        tile_col=[4, 4, 5],
        plane=[0, 1, 1],
        error=[0.3, 0.3, 0.3],
        basis=data,
        basis_start=[0, 1, 2],
        rank=[1, 1, 1],
        coef=np.ones(3),
        coef_start=None,
        fill_error=[0.0, fill, 0.0],
        hole_index=[-1, 0, -1],
        holes=hole,
    )


def plain(layer):
    """The same layer without its holes."""
    return FineLayer(
        layer.pixel_bin,
        layer.tile,
        layer.tile_row,
        layer.tile_col,
        layer.plane,
        layer.error,
        layer.basis,
        layer.basis_start,
        layer.rank,
        layer.coef,
        layer.coef_start,
    )


def at_centres(layer, plane):
    """The layer at the fine bin centres of tiles (3, 4) and (3, 5), one plane."""
    rows = 1 + SIDE * 3 + PB * np.arange(TILE) + (PB - 1) / 2
    cols = 45 + SIDE * 4 + PB * np.arange(2 * TILE) + (PB - 1) / 2
    one = np.array([plane])
    return layer.evaluate(one, one, np.zeros(1), rows, cols)


def test_filled_bins_quote_the_fill_error():
    """At the bin centres (Keys weights 1 there, 0 elsewhere) the variance is ``ERROR**2``
    plus ``FILLERR**2`` on the holes, nothing more elsewhere; the values do not change."""
    layer = holed_layer(fill=2.0)
    flux, var = at_centres(layer, 1)
    flux0, var0 = at_centres(plain(layer), 1)
    np.testing.assert_array_equal(flux, flux0)
    expected = np.zeros((TILE, 2 * TILE))
    expected[5:9, 6:10] = 2.0**2
    np.testing.assert_allclose(var[0] - var0[0], expected, atol=1e-5)
    # plane 0 of the same tile has no hole quoted
    np.testing.assert_array_equal(at_centres(layer, 0)[1], at_centres(plain(layer), 0)[1])


def cube_with(fine):
    rng = np.random.default_rng(0)
    flux = 40 + rng.uniform(0, 2, (NT, 32, 32)).astype(np.float32)
    err = rng.uniform(0.05, 0.2, (NT, 32, 32)).astype(np.float32)
    return make_cube(NT, 32, 32, 0.02, 1500.0, sector=1, bin=64, flux=flux, flux_err=err, fine=fine)


@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
def test_holes_round_trip(tmp_path, compact):
    cube = cube_with(holed_layer())
    cube = cube.compress() if compact else cube
    path = tmp_path / "cube.fits"
    cube.write(path)
    with fits.open(path) as hdul:
        assert "FINE_HOLES" in hdul
    again = ScatterLightCube.read(path).fine
    np.testing.assert_array_equal(again.hole_index, [-1, 0, -1])
    np.testing.assert_array_equal(again.holes, cube.fine.holes)
    np.testing.assert_allclose(again.fill_error, cube.fine.fill_error, rtol=2.0**-8)
    rows, cols = np.arange(190, 260), np.arange(290, 340)
    times = 1500.0 + 0.02 * np.arange(NT)
    a, b = cube.evaluate(times, rows, cols), ScatterLightCube.read(path).evaluate(times, rows, cols)
    np.testing.assert_allclose(b.flux_err, a.flux_err, rtol=2.0**-8)


def test_holes_round_trip_float_layout():
    layer = holed_layer()
    hdus = layer.to_hdus(precision=None)
    assert [h.name for h in hdus] == ["FINE", "FINE_INDEX", "FINE_COEF", "FINE_HOLES"]
    again = FineLayer.from_hdul(fits.HDUList([fits.PrimaryHDU(), *hdus]), "x.fits")
    for name in FineLayer.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(again, name), getattr(layer, name))


def test_layer_without_holes_writes_and_reads_as_before():
    """No quoted hole: no FINE_HOLES, no FILLERR or HOLES row; read back without holes."""
    layer = holed_layer(fill=0.0)  # the builder gives such tiles hole index -1
    layer = FineLayer(**{**layer.__dict__, "hole_index": [-1, -1, -1]})
    assert "HOLES" not in layer.to_hdus()[2].header.values()  # the index image's row names
    hdus = layer.to_hdus(precision=None)
    assert [h.name for h in hdus] == ["FINE", "FINE_INDEX", "FINE_COEF"]
    assert "HOLES" not in hdus[1].columns.names
    again = FineLayer.from_hdul(fits.HDUList([fits.PrimaryHDU(), *hdus]), "x.fits")
    assert again.holes is None
    assert again.fill_error is None


def test_damaged_holes_refused(tmp_path):
    path, bad = tmp_path / "cube.fits", tmp_path / "bad.fits"
    cube_with(holed_layer()).write(path)
    with fits.open(path) as hdul:
        hdul.pop("FINE_HOLES")
        hdul.writeto(bad)
    with pytest.raises(CubeFormatError, match="FINE_HOLES extension and the FILLERR"):
        ScatterLightCube.read(bad)


def test_invalid_hole_index_refused():
    layer = holed_layer()
    layer = FineLayer(**{**layer.__dict__, "hole_index": [-1, 1, -1]})
    assert layer.validate(NT) == ["fine layer hole indices must lie in -1..0"]
    with pytest.raises(ValueError, match="give all three or none"):
        FineLayer(**{**layer.__dict__, "holes": None})


# ---------------------------------------------------------------------- the builder
@pytest.fixture(scope="module")
def holed_context():
    """512 x 512 px: a bleed column 12 px (3 fine bins) wide and a star halo 20 x 20 bins."""
    weights = np.ones((512, 512), np.float32)
    weights[:, 200:212] = 0
    weights[260:340, 340:420] = 0
    return make_fine_context(weights, coarse_bin=16, pixel_bin=4, tile=16, threshold=2.0)


def ridge_fills(context, amplitude, width=3.0, frames=8):
    """`_fill_misfit` of every tile and the actual squared fill error of every hole bin, over
    ``frames`` fine-grid residuals: an arc-shaped ridge (``width`` bins) crossing both holes,
    moving by 4 bins a frame, plus unit noise. Returns the probe, shape (frames, ntiles**2,
    1 + 2 * FILL_CLASSES), and the actual errors, shape (frames, nholes)."""
    ok = context.ok
    i, j = np.mgrid[: ok.shape[0], : ok.shape[1]].astype(float)
    model = np.zeros(ok.shape, np.float32)
    noise = np.ones(ok.shape, np.float32)
    kept = np.arange(context.ntiles**2, dtype=np.int32)
    rows, cols = np.nonzero(~ok)
    rng = np.random.default_rng(1)
    probe, actual = [], []
    for k in range(frames):
        truth = amplitude * np.exp(-0.5 * ((np.hypot(i - 40 - 4 * k, j - 30) - 60) / width) ** 2)
        r = (truth + rng.standard_normal(truth.shape)).astype(np.float32)
        r[~ok] = 0
        _fill_isotropic(r, ok, copy=False)
        _fill_along_structure(r, ok, model, rows, cols)
        _fill_profiles(r, ok, model, noise, context.threshold)
        probe.append(_fill_misfit(r, ok, model, kept, context, noise, 1.0))
        actual.append((r - truth)[rows, cols] ** 2)
    return np.array(probe), np.array(actual)


def fill_errors(context, amplitude, width=3.0, frames=8):
    """Estimated (`_fill_misfit`'s tile means) and actual mean squared fill error per hole
    bin, pooled over the frames of `ridge_fills`."""
    probe, actual = ridge_fills(context, amplitude, width, frames)
    rows, cols = np.nonzero(~context.ok)
    per_tile = np.bincount((rows // TILE) * context.ntiles + cols // TILE, minlength=NT_HOLED**2)
    return np.sum(probe[:, :, 0] * per_tile) / actual.size, actual.mean()


def test_fill_misfit_measures_the_fill_error(holed_context):
    """A ridge 20 x the noise crossing the holes: the filled bins miss it by ~2x the noise
    variance, and the estimate from hidden known bins around the holes matches within 2x
    in variance (1.4x in error: a term 2x off fails)."""
    estimated, actual = fill_errors(holed_context, amplitude=20.0)
    assert actual > 1.0  # the fills really miss the ridge (measured 2.25)
    assert 0.5 < estimated / actual < 2.0  # measured 0.73


def test_fill_misfit_on_noise_is_the_fill_noise(holed_context):
    """Pure noise: nothing to miss, the estimate is the fills' own noise (an average of
    valid bins), a fraction of one bin's variance, as the actual is."""
    estimated, actual = fill_errors(holed_context, amplitude=0.0)
    assert actual < 0.3  # measured 0.13
    assert estimated < 0.3  # measured 0.10


def test_assemble_fine_quotes_the_fill_error_on_the_holes(holed_context):
    """Per tile the pooled fill error over the blocks' power, times each block's mean
    square (over the mean squared Keys weight), on the tile's holes; 0 pooled: no holes."""
    context = holed_context
    nt, t = context.ntiles, context.tile
    tile = 3 * nt + 3  # rows 192..255, columns 192..255: the bleed column crosses it
    fine = np.zeros((2, nt * nt, t, t), np.float32)
    fine[0, tile], fine[1, tile] = 1.0, 2.0
    kept = np.zeros((2, nt * nt), bool)
    kept[:, tile] = True
    sigma = np.full((2, nt * nt), 0.1, np.float32)
    misfit = np.zeros((2, nt * nt, 3), np.float32)
    misfit[:, tile, 2] = [0.5, 1.5]
    used = np.arange(2)
    groups = [np.array([0]), np.array([1])]
    layer = assemble_fine(fine, kept, sigma, used, groups, context, misfit=misfit)
    hole = ~context.ok[3 * t : 4 * t, 3 * t : 4 * t]
    assert hole.any()
    np.testing.assert_array_equal(layer.holes, [hole])
    np.testing.assert_array_equal(layer.hole_index, [0, 0])
    gamma = (0.5 + 1.5) / (1.0 + 4.0)  # pooled fill error over the blocks' power
    expected = np.sqrt(gamma * np.array([1.0, 4.0]) / _mean_squared_weight(PB))
    np.testing.assert_allclose(layer.fill_error, expected, rtol=1e-5)
    misfit[:, tile, 2] = [0.5, -0.5]  # pooled 0: nothing quoted
    layer = assemble_fine(fine, kept, sigma, used, groups, context, misfit=misfit)
    np.testing.assert_array_equal(layer.hole_index, [-1, -1])


# ---------------------------------------------------------------------- depth of a bin
def test_depth_classes():
    """1 next to a measured bin, then by doubling depth up to the last class."""
    depth = [1, 1.4, 2, 2.2, 4, 5, 8, 16, 17, 100]
    np.testing.assert_array_equal(depth_class(depth), [1, 2, 2, 3, 3, 4, 4, 5, 6, 6])
    assert FILL_CLASSES == 6


def test_quoted_fill_error_follows_the_depth(holed_context):
    """A ridge 20 x the noise crossing a bleed column and a star halo 20 bins wide: the
    fills next to a measured bin miss it by less than the noise, those 4+ bins in by
    several times more (measured 0.31 and 6.1 (e-/s)**2). The error quoted per depth
    class (the probe's shape times its amplitude) matches both within 2x in variance,
    where one number for every filled bin (the pooled mean) is 4x off next to the edge."""
    probe, actual = ridge_fills(holed_context, amplitude=20.0)
    classes = holed_context.hole_class[~holed_context.ok]
    scale = _fill_scale(probe[..., 1:])
    quoted = _fill_amplitude(probe[..., 1:], scale) * scale[classes - 1]
    shallow, deep = classes == 1, classes >= 3
    act_shallow, act_deep = actual[:, shallow].mean(), actual[:, deep].mean()
    assert act_deep > 8 * act_shallow  # the error really grows with the depth
    assert 0.5 < quoted[shallow].mean() / act_shallow < 2.0  # measured 0.81
    assert 0.5 < quoted[deep].mean() / act_deep < 2.0  # measured 0.60
    one_number = np.sum(probe[..., 1 : 1 + FILL_CLASSES]) / np.sum(probe[..., 1 + FILL_CLASSES :])
    assert one_number / act_shallow > 3.0  # what the tile-wide error quoted there


def test_fill_scale_compares_classes_within_the_same_holes():
    """The growth from one class to the next is measured over the rows (tiles) that probe
    both, never below 1, and continues past the deepest measured class (at most 4x); the
    scale's mean over the probe bins is 1."""
    rows = np.zeros((2, 2 * FILL_CLASSES))
    rows[0, :3] = [100.0, 200.0, 1600.0]  # a star halo: classes 1..3, 100 bins each
    rows[0, FILL_CLASSES : FILL_CLASSES + 3] = 100
    rows[1, 0], rows[1, FILL_CLASSES] = 5000.0, 100  # a bleed column: class 1 only, larger
    shape = np.array([1, 2, 16, 64, 256, 1024], float)
    counts = np.array([200, 100, 100, 0, 0, 0])
    expected = shape * counts.sum() / (counts @ shape)
    np.testing.assert_allclose(_fill_scale(rows), expected, rtol=1e-6)
    rows[0, 2] = 100.0  # class 3 no worse than class 1: deeper ones stay at class 2's
    got = _fill_scale(rows)
    np.testing.assert_allclose(got[2:] / got[1], 1.0, rtol=1e-6)
    rows[:, :FILL_CLASSES] *= -1  # nothing to quote
    assert _fill_scale(rows) is None


def test_assemble_fine_quotes_depth_classes(holed_context):
    """With per-class probes the hole image holds each bin's depth class, the layer the
    measured scale, and FILLERR the tile's error per frame and unit of scale over the
    blocks' mean square per frame."""
    context = holed_context
    nt, t = context.ntiles, context.tile
    tile = 4 * nt + 5  # rows 256..319, columns 320..383: the star halo's corner
    fine = np.ones((2, nt * nt, t, t), np.float32)
    kept = np.zeros((2, nt * nt), bool)
    kept[:, tile] = True
    misfit = np.zeros((2, nt * nt, MISFIT_COLUMNS), np.float32)
    misfit[:, tile, 5 : 5 + 3] = [40.0, 80.0, 320.0]  # classes 1..3, 40 bins each, per frame
    misfit[:, tile, 5 + FILL_CLASSES : 5 + FILL_CLASSES + 3] = 40
    groups = [np.array([0]), np.array([1])]
    sigma = np.ones((2, nt * nt))
    layer = assemble_fine(fine, kept, sigma, np.arange(2), groups, context, 0.01, None, misfit)
    depth = context.hole_class[4 * t : 5 * t, 5 * t : 6 * t]
    assert depth.max() >= 3
    np.testing.assert_array_equal(layer.holes, [depth])
    mean = 440.0 / 120
    np.testing.assert_allclose(layer.fill_scale[:4], np.array([1, 2, 8, 32]) / mean, rtol=1e-6)
    # per frame 440 / (40 * (1 + 2 + 8) / mean) = mean, over an all-ones block's power of 1
    expected = np.sqrt(mean / _mean_squared_weight(PB))
    np.testing.assert_allclose(layer.fill_error, [expected, expected], rtol=1e-5)


def depth_layer():
    """`holed_layer` whose hole has depth classes 1 (its rim) and 2, with a scale per class."""
    layer = holed_layer(fill=2.0)
    holes = layer.holes.astype(np.uint8)
    holes[0, 6:8, 7:9] = 2
    return FineLayer(**{**layer.__dict__, "holes": holes, "fill_scale": [0.25, 4.0]})


def test_depth_classes_scale_the_quoted_fill_error(tmp_path):
    """At the bin centres the fill variance is ``FILLERR**2`` times the bin's class scale;
    a file keeps the classes and the scales (FILLVARn), and evaluates alike."""
    layer = depth_layer()
    var = at_centres(layer, 1)[1][0] - at_centres(plain(layer), 1)[1][0]
    expected = np.zeros((TILE, 2 * TILE))
    expected[5:9, 6:10] = 4.0 * 0.25
    expected[6:8, 7:9] = 4.0 * 4.0
    np.testing.assert_allclose(var, expected, atol=1e-5)
    path = tmp_path / "cube.fits"
    cube_with(layer).write(path)
    with fits.open(path) as hdul:
        assert hdul["FINE_HOLES"].header["FILLVAR2"] == 4.0
    again = ScatterLightCube.read(path).fine
    np.testing.assert_array_equal(again.holes, layer.holes)
    np.testing.assert_array_equal(again.fill_scale, layer.fill_scale)
    var_again = at_centres(again, 1)[1][0] - at_centres(plain(again), 1)[1][0]
    np.testing.assert_allclose(var_again, expected, rtol=2.0**-7, atol=1e-5)


def test_files_without_depth_classes_evaluate_as_before(tmp_path):
    """A file written before the depth classes (hole images of 1, no FILLVARn) quotes
    ``FILLERR`` on every filled bin, exactly as it did."""
    layer = holed_layer(fill=2.0)
    path = tmp_path / "cube.fits"
    cube_with(layer).write(path)
    with fits.open(path) as hdul:
        assert "FILLVAR1" not in hdul["FINE_HOLES"].header
        assert set(np.unique(hdul["FINE_HOLES"].data)) == {0, 1}
    again = ScatterLightCube.read(path).fine
    assert again.fill_scale is None
    var = at_centres(again, 1)[1][0] - at_centres(plain(again), 1)[1][0]
    expected = np.zeros((TILE, 2 * TILE))
    expected[5:9, 6:10] = float(again.fill_error[1]) ** 2
    np.testing.assert_array_equal(var, expected.astype(np.float32))


def test_invalid_depth_classes_refused():
    layer = depth_layer()
    bad = FineLayer(**{**layer.__dict__, "fill_scale": [0.25]})
    assert bad.validate(NT) == ["fine layer hole depth classes must lie in 0..1"]
    bad = FineLayer(**{**layer.__dict__, "fill_scale": [0.25, -1.0]})
    assert bad.validate(NT) == ["fine layer fill variance factors must be finite and non-negative"]
    fields = {**plain(layer).__dict__, "fill_scale": [1.0]}
    with pytest.raises(ValueError, match="fill_scale needs holes"):
        FineLayer(**fields)
