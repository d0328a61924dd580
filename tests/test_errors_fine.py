"""Honest errors where the fine layer works (issue 19): the misfit it measures per tile
and the errors a cube built from a structured field quotes against the truth."""

import dataclasses

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from lk_scatterlight.builder.fine import (
    MISFIT_COLUMNS,
    MISFIT_WIDTH,
    assemble_fine,
    fine_residual,
    make_fine_context,
)
from lk_scatterlight.builder.fine.assemble import _significant_lags
from lk_scatterlight.builder.fine.context import (
    _bin_sums,
)
from lk_scatterlight.builder.fine.misfit import (
    _tile_misfit,
)
from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
from lk_scatterlight.builder.sources import SimulatedFFISource
from lk_scatterlight.cube import ScatterLightCube
from lk_scatterlight.exceptions import CubeFormatError
from lk_scatterlight.finelayer import FineLayer
from lk_scatterlight.simulate import ORBIT_DAYS, FFISimulator, ScatteredLightField, sector_times

N, SIGMA = 2048, 2.0


@pytest.fixture(scope="module")
def context():
    """Every tile kept (threshold below any statistic): tests choose the tiles."""
    weights = np.ones((N, N), np.float32)
    return make_fine_context(weights, coarse_bin=16, pixel_bin=4, tile=16, threshold=-1.0)


def misfit(frame, context, kept, sigma=SIGMA):
    """`_tile_misfit` of the ``kept`` tiles, the frame's coarse plane its 16-px bin means
    and its fine grid what `fine_residual` measures."""
    plane = _bin_sums(frame, 16) / 256
    err = np.full((128, 128), sigma / 16, np.float32)
    unc = np.full((N, N), sigma, np.float32)
    fine = fine_residual(frame, plane, err, np.full((128, 128), 256), context, uncertainty=unc)
    r = fine.blocks.reshape(32, 32, 16, 16).transpose(0, 2, 1, 3).reshape(512, 512)
    tile_sigma = np.full((32, 32), sigma * np.sqrt(fine.calibration), np.float32)
    return _tile_misfit(frame, plane, r, kept, context, unc, tile_sigma)


def shadow_edge(scale=1.36):
    """A 40 e-/s logistic step along column 1000.3 (~6 px wide, as the simulator's)."""
    column = np.arange(N, dtype=float)
    step = 20 * (1 + np.tanh((column - 1000.3) / (2 * scale)))  # 40 / (1 + exp(-x / scale))
    return np.broadcast_to(step, (N, N)).astype(np.float32)


def test_misfit_is_zero_on_noise_beyond_the_uncertainty(context):
    """White noise 1.3x larger than the uncertainty image says (as the static scene's own
    noise makes it) on a smooth field: the misfit of a third of the tiles is ~0 (the
    excess noise would give 0.69 sigma**2)."""
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[:N, :N].astype(np.float32)
    field = 30 * np.sin(rows / 400) + 20 * np.cos(cols / 300)
    frame = field + rng.normal(0, 1.3 * SIGMA, (N, N)).astype(np.float32)
    got = misfit(frame, context, np.arange(0, 1024, 3, dtype=np.int32))
    assert got.shape == (342, 8)  # along rows, along columns; the same at lags 2, 3, 4
    np.testing.assert_array_less(np.abs(np.mean(got, axis=0)), 0.01 * SIGMA**2)
    np.testing.assert_array_less(np.std(got, axis=0), 0.05 * SIGMA**2)


def test_misfit_finds_an_edge_sharper_than_a_bin(context):
    """A step ~6 px wide, which 4-px bins cannot hold: on the tiles it crosses, the misfit
    with noise is that of the same model without noise (noise removed, structure kept),
    well above the noise; the next tiles show none."""
    edge = shadow_edge()
    kept = (32 * np.arange(32) + 15).astype(np.int32)  # the column of tiles at 960..1023
    kept = np.concatenate([kept, kept + 2])  # and one at 1088..1151, 90 px from the edge
    noise = np.random.default_rng(6).normal(0, SIGMA, (N, N)).astype(np.float32)
    noisy = misfit(edge + noise, context, kept)
    clean = misfit(edge, context, kept, sigma=1e-3)
    on, off = slice(0, 32), slice(32, None)
    # The edge follows the rows: row neighbours share all its misfit, column ones less.
    assert np.mean(clean[on, 0]) > 0.04 * SIGMA**2  # what the layer misses (measured 0.05)
    assert np.mean(clean[on, 1]) < 0.9 * np.mean(clean[on, 0])  # measured 0.73
    assert np.mean(noisy[on, 0]) == pytest.approx(np.mean(clean[on, 0]), rel=0.25)
    np.testing.assert_array_less(np.abs(np.mean(noisy[off], axis=0)), 0.01 * SIGMA**2)


def lag_rows(rng, ntiles, nframes, misfit, noise):
    """`FineFrame.misfit` rows of ``ntiles`` tiles over ``nframes`` frames: every lag
    covariance ``misfit`` plus Gaussian scatter ``noise``, the fill columns 1."""
    rows = np.ones((ntiles, nframes, MISFIT_WIDTH))
    lags = [0, 1, 3, 4, *range(MISFIT_COLUMNS, MISFIT_WIDTH)]
    rows[:, :, lags] = misfit + rng.normal(0, noise, (ntiles, nframes, len(lags)))
    return rows, lags


def test_pooled_lag_covariances_lose_their_noise_not_their_structure():
    """A tile's lag covariances pooled over 11 frames: where they are noise alone (scatter
    0.01 per frame), the larger direction's sum, which the layer quotes as misfit, is
    +0.019 on average (0.56 of its standard error 0.033) and drops below a third of that
    (measured 0.004); where every frame measures 0.02 (sum 0.22, 6.6 standard errors),
    over 3/4 stays (measured 0.18: 1.25 standard errors go).
    The fill columns are untouched, and with 2 frames (no scatter to measure) or no
    shrinking (layers not smoothed along the structure) nothing changes."""
    rng = np.random.default_rng(11)
    noise, lags = lag_rows(rng, 400, 11, 0.0, 0.01)
    before = np.maximum(*noise[:, :, :2].sum(axis=1).T)
    after = np.array([np.maximum(*_significant_lags(r)[:, :2].sum(axis=0)) for r in noise])
    assert np.mean(before) == pytest.approx(0.56 * 0.033, rel=0.2)
    assert np.mean(after) < np.mean(before) / 3
    signal, _ = lag_rows(rng, 400, 11, 0.02, 0.01)
    kept = np.array([_significant_lags(r)[:, lags].sum(axis=0) for r in signal])
    assert np.mean(kept) > 0.75 * 0.22
    fill = [c for c in range(MISFIT_WIDTH) if c not in lags]
    np.testing.assert_array_equal(_significant_lags(signal[0])[:, fill], signal[0][:, fill])
    np.testing.assert_array_equal(_significant_lags(signal[0][:2]), signal[0][:2])
    tile = signal[0]
    assert _significant_lags(tile, 0.0) is tile  # as for 4-px bins: untouched


# ---------------------------------------------------------------------- aperture sums
def speckle_cube(context):
    """A one-plane cube whose fine layer was built from a frame with structure ~2 px
    across (white noise smoothed by a 1.5-px Gaussian, RMS 1 e-/s) in the tile columns
    14..17, and pixel noise of 0.25 e-/s: the fine bins cannot follow that structure, so
    what they miss changes sign every few pixels. Returns the cube and the true field."""
    truth = ndimage.gaussian_filter(np.random.default_rng(1).normal(0, 1, (N, N)), 1.5)
    truth = truth / truth[:, 896:1152].std()
    truth[:, :896] = truth[:, 1152:] = 0
    sigma = 0.25
    frame = (truth + np.random.default_rng(6).normal(0, sigma, (N, N))).astype(np.float32)
    plane = _bin_sums(frame, 16) / 256
    err = np.full((128, 128), sigma / 16, np.float32)
    unc = np.full((N, N), sigma, np.float32)
    fine = fine_residual(frame, plane, err, np.full((128, 128), 256), context, uncertainty=unc)
    ntiles = context.ntiles**2
    blocks = np.zeros((1, ntiles, context.tile, context.tile), np.float32)
    blocks[0, fine.tiles] = fine.blocks
    kept = np.zeros((1, ntiles), bool)
    kept[0, fine.tiles] = (fine.tiles % context.ntiles >= 14) & (fine.tiles % context.ntiles < 18)
    sigmas = np.zeros((1, ntiles), np.float32)
    sigmas[0, fine.tiles] = fine.sigma
    misfits = np.zeros((1, ntiles, MISFIT_WIDTH), np.float32)
    misfits[0, fine.tiles] = fine.misfit
    one = [np.array([0])]
    layer = assemble_fine(blocks, kept, sigmas, one[0], one, context, misfit=misfits)
    centres = 16 * np.arange(128) + 7.5
    cube = ScatterLightCube.from_arrays(
        1, 1, 1, [1500.0], 1 + centres, 45 + centres, plane[None], err[None],
        time_start=[1499.9], time_stop=[1500.1], fine=layer,
    )  # fmt: skip
    return cube, truth


def sum_honesty(cube, truth):
    """RMS actual over RMS quoted error of single pixels and of 3 x 3 sums, over 3 x 3
    apertures at random places in the structured tiles."""
    rng = np.random.default_rng(2)
    acc = np.zeros(4)
    for row in range(100, 1900, 7):
        rows, cols = row + np.arange(3), int(rng.integers(900, 1140)) + np.arange(3)
        true = truth[np.ix_(rows, cols)]
        total = cube.evaluate_sum([1500.0], rows + 1, cols + 45)
        pixels = cube.evaluate([1500.0], rows + 1, cols + 45)
        acc += [
            np.sum((pixels.flux.value[0] - true) ** 2),
            np.sum(pixels.flux_err.value[0].astype(float) ** 2),
            (total.flux.value[0] - true.sum()) ** 2,
            total.flux_err.value[0] ** 2,
        ]
    return np.sqrt(acc[0] / acc[1]), np.sqrt(acc[2] / acc[3])


def test_aperture_sum_adds_the_misfit_as_it_decorrelates(context):
    """Structure finer than the fine bins leaves a misfit that changes sign within a
    bin: the 3 x 3 sum's quoted error must be as honest as a single pixel's (within
    15 %), not add the misfit as if the nine pixels shared it. Measured: pixels 1.09,
    sums 1.07 (ratio 0.98; builder's lag-2 / lag-1 covariance ~0.35); adding all of
    the error as shared (files without the misfit), sums 0.84 (ratio 0.77)."""
    cube, truth = speckle_cube(context)
    layer = cube.fine
    assert layer.misfit is not None
    assert np.all(layer.misfit <= layer.error * 1.0001)
    # What the builder measured: ~2-px structure decorrelates fast in both directions.
    assert np.all(np.median(layer.misfit_corr, axis=0) < 0.6)
    pixel, total = sum_honesty(cube, truth)
    assert total / pixel == pytest.approx(1.0, abs=0.15)
    shared = dataclasses.replace(
        layer, misfit=None, misfit_corr=None, long_misfit=None, long_corr=None
    )
    cube_shared = ScatterLightCube.from_arrays(
        1, 1, 1, [1500.0], cube.row, cube.column, cube.flux.value, cube.flux_err.value,
        time_start=[1499.9], time_stop=[1500.1], fine=shared,
    )  # fmt: skip
    pixel_shared, total_shared = sum_honesty(cube_shared, truth)
    assert pixel_shared == pytest.approx(pixel, rel=1e-4)  # single pixels: unchanged
    assert total_shared / pixel_shared < 0.87


def two_part_field():
    """A misfit field like a ridge's (1024 x 1024 px): a part shared over several pixels
    (white noise smoothed by a Gaussian of 6 px between rows and 3 px between columns,
    variance 1) plus a larger part changing along each row (variance 2, covariance 0 at
    1 px and -0.4 at 2 px, as a profile's misfit from bin to bin)."""
    rng = np.random.default_rng(7)
    wide = ndimage.gaussian_filter(rng.normal(0, 1, (1024, 1024)), (6, 3))
    wide /= wide.std()
    white = rng.normal(0, 1, (1024, 1026))
    u, v = np.sqrt(0.8), np.sqrt(0.2)  # u v = 0.4, u**2 + v**2 = 1
    return wide + np.sqrt(2) * (u * white[:, 2:] - v * white[:, :-2])


def quoted_from_lags(field, context, width):
    """Quoted 1-sigma of a pixel and of a 3 x 3 sum where a layer's misfit was measured
    as ``field``'s covariances at lags 1 .. 4 (rows, columns; ``width``: the misfit
    columns the builder gave, `MISFIT_WIDTH` or the older `MISFIT_COLUMNS` with lags
    1 and 2 only), on blocks of 1 e-/s with no noise."""
    pairs = [(field[:-d] * field[d:], field[:, :-d] * field[:, d:]) for d in (1, 2, 3, 4)]
    lags = np.array([[np.mean(a), np.mean(b)] for a, b in pairs])
    ntiles = context.ntiles**2
    kept = np.zeros((1, ntiles), bool)
    kept[0, 300:310] = True  # tile row 9, columns 12..21
    rows = np.zeros(width, np.float32)
    rows[[0, 1, 3, 4]] = lags[:2].ravel()
    rows[MISFIT_COLUMNS:] = lags[2:].ravel()[: width - MISFIT_COLUMNS]
    misfits = np.broadcast_to(rows, (1, ntiles, width))
    blocks = np.ones((1, ntiles, context.tile, context.tile), np.float32)
    one = [np.array([0])]
    sigma = np.full((1, ntiles), 1e-6, np.float32)
    layer = assemble_fine(blocks, kept, sigma, one[0], one, context, misfit=misfits)
    centres = 16 * np.arange(128) + 7.5
    cube = ScatterLightCube.from_arrays(
        1, 1, 1, [1500.0], 1 + centres, 45 + centres, np.zeros((1, 128, 128)),
        np.full((1, 128, 128), 1e-6), time_start=[1499.9], time_stop=[1500.1], fine=layer,
    )  # fmt: skip
    pixel, total = [], []
    for corner in range(800, 1200, 5):  # inside the kept tiles (rows 576..639)
        r, c = 600 + corner % 3 + np.arange(3), corner + np.arange(3)
        pixel.append(cube.evaluate([1500.0], r + 1, c + 45).flux_err.value.astype(float) ** 2)
        total.append(cube.evaluate_sum([1500.0], r + 1, c + 45).flux_err.value ** 2)
    return layer, np.sqrt(np.mean(pixel)), np.sqrt(np.mean(total))


def test_aperture_sum_adds_a_shared_misfit_as_shared(context):
    """A misfit with a part shared over several pixels and one changing sign within a
    bin (`two_part_field`): fitted through the lags of 2 to 4 px, the shared part keeps
    its slow decorrelation (``long_corr`` 0.98 between row neighbours and 0.92 between
    column neighbours, as made) and a 3 x 3 sum is quoted honestly (measured
    actual/quoted 1.07); a Gaussian through lags 1 and 2 (files from before,
    `MISFIT_COLUMNS` wide) takes the other part's drop at 2 px for the whole misfit's
    (``misfit_corr`` 0.10 between column neighbours) and under-quotes the sum (1.43).
    Single pixels are quoted alike (1.72: the part that does not correlate at 1 px is
    invisible to both)."""
    field = two_part_field()
    smooth = ndimage.uniform_filter(field, 3, mode="constant")[2:-2, 2:-2]
    actual = np.sqrt(np.mean(smooth**2)) * 9
    layer, pixel, total = quoted_from_lags(field, context, MISFIT_WIDTH)
    assert layer.long_misfit is not None
    np.testing.assert_allclose(np.median(layer.long_corr, axis=0), [0.979, 0.920], atol=0.03)
    assert np.all(layer.misfit < 0.2 * layer.long_misfit)  # no lag-1 covariance beyond it
    assert 1 / 1.2 < actual / total < 1.2
    _, pixel_old, total_old = quoted_from_lags(field, context, MISFIT_COLUMNS)
    assert actual / total_old > 1.3
    assert pixel == pytest.approx(pixel_old, rel=0.05)


def test_long_misfit_round_trip_and_old_files(context, tmp_path):
    """The two parts are written (rounded as the misfit is) and read back; without the
    long part, or with it zero, aperture sums are what they were; a file with only some
    of its columns, or a layer with bad values, is refused."""
    layer, _, _ = quoted_from_lags(two_part_field(), context, MISFIT_WIDTH)
    path = tmp_path / "cube.fits"
    centres = 16 * np.arange(128) + 7.5
    cube = ScatterLightCube.from_arrays(
        1, 1, 1, [1500.0], 1 + centres, 45 + centres, np.zeros((1, 128, 128)),
        np.full((1, 128, 128), 1e-6), time_start=[1499.9], time_stop=[1500.1], fine=layer,
    )  # fmt: skip
    cube.write(path)
    read = ScatterLightCube.read(path).fine
    np.testing.assert_allclose(read.long_misfit, layer.long_misfit, rtol=2.0**-8)
    np.testing.assert_allclose(read.long_corr, layer.long_corr, atol=5e-4)
    hdus = {h.name: h for h in layer.to_hdus(precision=None)}
    table = FineLayer.from_hdul(hdus, path)
    np.testing.assert_array_equal(table.long_misfit, layer.long_misfit)
    np.testing.assert_array_equal(table.long_corr, layer.long_corr)

    rows, cols = np.arange(600, 603), np.arange(900, 903)
    args = ([0], [0], [0.0], rows + 1.0, cols + 45.0, np.ones((3, 3)))
    one = dataclasses.replace(layer, long_misfit=None, long_corr=None)
    zero = dataclasses.replace(
        layer, long_misfit=np.zeros(len(layer)), long_corr=np.zeros((len(layer), 2))
    )
    np.testing.assert_allclose(zero.evaluate_sum(*args)[1], one.evaluate_sum(*args)[1], rtol=1e-6)

    columns = [c for c in hdus["FINE_INDEX"].columns if c.name != "LCORR_COL"]
    hdus["FINE_INDEX"] = fits.BinTableHDU.from_columns(columns, name="FINE_INDEX")
    with pytest.raises(CubeFormatError, match="LMISFIT, LCORR_ROW, LCORR_COL index columns"):
        FineLayer.from_hdul(hdus, path)
    with pytest.raises(ValueError, match="long_misfit needs misfit"):
        dataclasses.replace(layer, misfit=None, misfit_corr=None)
    bad = dataclasses.replace(layer, long_corr=layer.long_corr + 1)
    assert bad.validate(1) == ["fine layer long misfit correlations must lie in 0..1"]


# ---------------------------------------------------------------------- end to end
PATCH = 15


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    """12 frames after perigee of the structured field (ridge and shadow edge), 4-px fine bins."""
    sim = FFISimulator(
        ScatteredLightField(structured=True),
        time=sector_times(1)[:12],
        seed=3,
        n_stars=4000,
        defects={},
    )
    config = BuildConfig(pixel_bin=16, n_candidates=8, n_dark=3, compact=False, fine_bin=4)
    work = tmp_path_factory.mktemp("work")
    cube = build_cube(SimulatedFFISource(sim), config, work_dir=work, progress=False)
    truth = np.stack([sim.truth(i) for i in range(len(sim))])
    return sim, cube, truth


def honesty(cube, truth, corners):
    """RMS actual error (each pixel's time mean removed) over RMS quoted error, pooled."""
    actual, quoted = [], []
    for row, column in corners:
        rows, cols = row + np.arange(PATCH), column + np.arange(PATCH)
        ev = cube.evaluate(cube.btjd, rows, cols)
        miss = ev.flux.value.astype(float) - truth[:, rows - 1][:, :, cols - 45]
        actual.append(miss - miss.mean(axis=0))
        quoted.append(ev.flux_err.value.astype(float))
    return float(np.sqrt(np.mean(np.square(actual)) / np.mean(np.square(quoted))))


_SHADOW = [(300, 1311), (1000, 1311), (1700, 1311)]
_SKY = [(523, 1387), (1404, 603), (341, 322)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "corners", "compact"),
    [
        ("shadow edge", _SHADOW, False),
        ("shadow edge", _SHADOW, True),
        ("sky", _SKY, False),
        ("sky", _SKY, True),
    ],
    ids=["shadow edge-dense", "shadow edge-compact", "sky-dense", "sky-compact"],
)
def test_quoted_errors_match_the_actual_ones(structured, kind, corners, compact):
    """Where the fine layer keeps a shadow edge and in ordinary sky, dense and compact:
    the actual error over the quoted one is within 1/1.6 .. 1.6, so a 2x error either
    way fails. Measured on these 12 bright frames: shadow edge 0.93 (dense), 1.04
    (compact); sky 0.87, 0.65 (compact). While the frames measured the misfit and fill
    errors of the candidate tiles too (noise, mostly, dropped at assembly): shadow edge
    0.92, 1.02; sky 0.84, 0.59 (compact: failed). Before the layer kept the edge's faint
    frames (`persistent_blocks`): shadow edge 1.33, 1.72 (compact: failed); sky 0.92,
    0.82. Before factored tiles quoted only the noise they keep, the bin noise they quoted
    whole covered part of the edge's misfit: shadow edge 1.15, 1.37; sky 0.84, 0.67."""
    _, cube, truth = structured
    cube = cube.compress() if compact else cube
    assert 1 / 1.6 < honesty(cube, truth, corners) < 1.6


@pytest.mark.slow
@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
def test_quoted_errors_beside_a_shadow_edge(structured, compact):
    """At the pixels within 4 px of the shadow edge (column 1318.5), where what the fine
    bins cannot follow sits, the actual error over the quoted one is within 1/1.6 .. 1.6,
    so quoting them 2x too small fails. Measured on these 12 frames: 1.01 (dense), 1.19
    (compact); before the layer kept the edge's faint frames (`persistent_blocks`) 1.39
    and 1.85 (compact: failed; 1.22 and 1.49 when factored tiles quoted their whole bin noise),
    against 1.33 and 1.72 over whole 15 x 15 patches on the edge: each block
    quotes its misfit evenly over its 64 x 64 pixels, and the misfit sits beside the edge
    (on 93 frames spread over sector 1: 2.0-2.6 in the columns 1.5 and 2.5 px either side,
    ~0.4 in the rest of the tile; see docs/format.rst, "Where the misfit lies")."""
    _, cube, truth = structured
    cube = cube.compress() if compact else cube
    actual, quoted = [], []
    cols = np.arange(1315, 1323)
    for row in (300, 1000, 1700):
        rows = row + np.arange(PATCH)
        ev = cube.evaluate(cube.btjd, rows, cols)
        miss = ev.flux.value.astype(float) - truth[:, rows - 1][:, :, cols - 45]
        actual.append(miss - miss.mean(axis=0))
        quoted.append(ev.flux_err.value.astype(float))
    ratio = np.sqrt(np.mean(np.square(actual)) / np.mean(np.square(quoted)))
    assert 1 / 1.6 < ratio < 1.6


# ----------------------------------------------------------- end to end, 2-px fine bins
@pytest.fixture(scope="module")
def structured_fb2(structured, tmp_path_factory):
    """The same 12 frames built with 2-px fine bins, smoothed along the structure."""
    sim = structured[0]
    config = BuildConfig(pixel_bin=16, n_candidates=8, n_dark=3, compact=False, fine_bin=2)
    work = tmp_path_factory.mktemp("work_fb2")
    return build_cube(SimulatedFFISource(sim), config, work_dir=work, progress=False)


def ridge_corners(sim, cube):
    """Patch corners on the glint ridge (``0.6 dr + 0.8 dc = 300 - 400 sweep``, pixels
    from the CCD centre) at its median sweep over the cube's planes."""
    field = sim.field
    phase = np.mod(cube.btjd - field.t0, ORBIT_DAYS) / ORBIT_DAYS
    sweep = float(np.median(0.5 - 0.5 * np.cos(2 * np.pi * phase)))
    corners = []
    for dr in (-700.0, -250.0, 200.0, 650.0):
        dc = (300 - 400 * sweep - 0.6 * dr) / 0.8
        corners.append((round(1024.5 + dr - PATCH / 2), round(1068.5 + dc - PATCH / 2)))
    return corners


#: With 2-px bins the ridge's single pixels are quoted ~2.5x too large in a dense cube on these
#: 12 frames (0.40). They are 12 consecutive frames (5.5 h after perigee): the ridge moves 4 px,
#: so the structure the 2-px blocks miss beside it is nearly the same in every frame, and
#: `honesty` removes each pixel's time mean (a constant is no part of the model), while the
#: block error quotes that misfit in full (``(gamma + wide) * power`` in
#: `~lk_scatterlight.builder.fine.assemble`, measured per frame). Measured (helper scripts):
#: 76 % of the quoted variance is the blocks' ``error``; without the misfit term in it 0.76;
#: 12 frames 15 h apart (``sector_times(1)[:360:30]``, the ridge sweeping ~500 px) give 0.96, as 30
#: spread frames give 1.08 (``bench_errors.py --quick``). A fix belongs to the builder's misfit
#: (its part constant over the planes), not to the bins' or the compact cube's errors.
_RIDGE_OVER_QUOTED = pytest.mark.xfail(
    strict=True,
    reason="a near-static ridge's misfit (12 consecutive frames) is quoted, not seen once each "
    "pixel's time mean is removed: ~2.5x too large",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "compact"),
    [
        pytest.param("ridge", False, marks=_RIDGE_OVER_QUOTED),
        ("ridge", True),
        ("shadow edge", False),
        ("shadow edge", True),
    ],
    ids=["ridge-dense", "ridge-compact", "shadow edge-dense", "shadow edge-compact"],
)
def test_quoted_errors_with_two_pixel_bins(structured, structured_fb2, kind, compact):
    """With 2-px fine bins (kept tiles smoothed along the structure), on the glint ridge
    and on the shadow edge, single pixels: the actual error over the quoted one is
    within 1/1.6 .. 1.6, so a 2x error either way fails. Measured on these 12 frames:
    ridge 0.40 (dense: fails), 0.67; shadow edge 0.89, 1.40 (0.36, 0.65; 0.75, 1.29 before
    blocks took over the bins' noise they hold, `binsplit.noise_taken`, and compact cubes
    kept their uncovered bins' noise; on 30 frames, ``bench_errors.py --quick``, the dense
    ridge went 0.61 -> 1.08 with it). Before the layer kept the
    edge's faint frames (`persistent_blocks`): shadow edge 1.57, 2.46 (compact failed).
    Before the pooled lag covariances lost their noise (`_significant_lags`): ridge 0.31,
    0.51 (compact failed: the 16-px smoothing lowered the actual error, not the quote).
    Before single pixels dropped the bins' structure part and the fill error was measured
    on the smoothed fills (8-px smoothing): ridge 0.32, 0.68; shadow edge 1.47, 2.18."""
    sim, _, truth = structured
    cube = structured_fb2.compress() if compact else structured_fb2
    corners = ridge_corners(sim, structured_fb2) if kind == "ridge" else _SHADOW
    assert 1 / 1.6 < honesty(cube, truth, corners) < 1.6
