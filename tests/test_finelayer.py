"""The fine layer as users meet it: `FineLayer` on its own and inside a cube.

No builder here: layers are made by hand (`FineLayer.from_blocks`, or the
factors of `compress_tile` assembled into a layer) and added to small coarse
cubes covering the whole CCD with 64-px bins.
"""

import dataclasses
import warnings

import numpy as np
import pytest
from astropy.io import fits
from cube_helpers import edited, make_cube

from lk_scatterlight import CubeFormatError, ScatterLightCube
from lk_scatterlight.finelayer import FINE_PRECISION, FineLayer, compress_tile

PB, TILE = 4, 16  # fine bin [px], fine bins per tile side
SIDE = PB * TILE  # tile side [px]
NT = 6  # planes of the test cubes
T0, DT = 1500.0, 0.02
COARSE = 64  # coarse bin of the test cubes [px]


def bin_rows(i):
    """Fine bin centres (1-based CCD rows) of tile row ``i``."""
    return 1 + SIDE * i + PB * np.arange(TILE) + (PB - 1) / 2


def bin_cols(j):
    """Fine bin centres (1-based CCD columns) of tile column ``j``."""
    return 45 + SIDE * j + PB * np.arange(TILE) + (PB - 1) / 2


def whole(layer, plane):
    """Evaluate ``layer`` at one plane (no time interpolation); None if no block near."""
    one = np.array([plane])
    return lambda rows, cols, factor=None: layer.evaluate(one, one, np.zeros(1), rows, cols, factor)


def coarse_cube(fine=None, seed=0, **kwargs):
    """A full-CCD cube of 32 x 32 bins of 64 px, NT planes, smooth random flux."""
    rng = np.random.default_rng(seed)
    flux = 40 + rng.uniform(0, 2, (NT, 32, 32)).astype(np.float32)
    flux_err = rng.uniform(0.05, 0.2, (NT, 32, 32)).astype(np.float32)
    return make_cube(
        NT, 32, 32, DT, T0, sector=1, bin=COARSE, flux=flux, flux_err=flux_err, fine=fine, **kwargs
    )


# Blocks of the reference layer: (tile_row, tile_col, plane, error); tiles (3, 4) and
# (3, 5) are neighbours, (3, 4) has blocks at planes 0, 2 and 3, none at 1, 4, 5.
BLOCKS = [(3, 4, 0, 0.3), (3, 4, 2, 0.5), (3, 5, 2, 0.4), (3, 4, 3, 0.2), (20, 10, 5, 0.1)]


@pytest.fixture(scope="module")
def layer_data():
    rng = np.random.default_rng(1)
    data = rng.normal(0, 3, (len(BLOCKS), TILE, TILE)).astype(np.float32)
    tr, tc, plane, error = (np.array(c) for c in zip(*BLOCKS, strict=True))
    layer = FineLayer.from_blocks(PB, TILE, tr, tc, plane, data, error)
    return layer, data


def expected_planes(data, rows_tile, cols_tiles, component="value"):
    """Per plane, the stored values (or variances) on tiles ``rows_tile`` x ``cols_tiles``."""
    out = np.zeros((NT, TILE, TILE * len(cols_tiles)))
    for k, (tr, tc, plane, error) in enumerate(BLOCKS):
        if tr == rows_tile and tc in cols_tiles:
            j = cols_tiles.index(tc) * TILE
            out[plane, :, j : j + TILE] = data[k] if component == "value" else error**2
    return out


# ---------------------------------------------------------------------- the layer alone
def test_evaluate_at_bin_centres_reproduces_raw_blocks(layer_data):
    """Keys interpolates: at the fine bin centres the layer is the stored block, and
    its variance is the block's error squared."""
    layer, data = layer_data
    for k, (tr, tc, plane, error) in enumerate(BLOCKS):
        flux, var = whole(layer, plane)(bin_rows(tr), bin_cols(tc))
        np.testing.assert_array_equal(flux[0], data[k])
        np.testing.assert_allclose(var[0], error**2, rtol=1e-6)
    np.testing.assert_array_equal(layer.blocks(), data)


def test_evaluate_at_bin_centres_reproduces_factored_blocks():
    """A tile factored by `compress_tile` (several blocks sharing basis images) next to a
    raw block: evaluation at the centres gives ``coef @ basis`` of each block."""
    rng = np.random.default_rng(2)
    m, noise = 10, 0.05
    images = rng.normal(0, 1, (2, TILE, TILE))
    amplitude = rng.normal(0, 5, (m, 2))
    series = np.einsum("mk,kij->mij", amplitude, images) + rng.normal(0, noise, (m, TILE, TILE))
    coef, basis = compress_tile(series, np.full(m, noise))
    assert coef is not None
    assert coef.shape == (m, 2)
    assert basis.shape == (2, TILE, TILE)
    raw = rng.normal(0, 1, (1, TILE, TILE)).astype(np.float32)
    layer = FineLayer(
        PB, TILE,
        tile_row=[7] * m + [7], tile_col=[8] * m + [9], plane=list(range(m)) + [4],
        error=[noise] * m + [0.3],
        basis=np.concatenate([raw, basis]),  # raw block first: basis_start offsets matter
        basis_start=[1] * m + [0], rank=[2] * m + [1],
        coef=np.concatenate([[1.0], coef.ravel()]), coef_start=list(1 + 2 * np.arange(m)) + [0],
    )  # fmt: skip
    assert layer.validate(m) == []
    reconstructed = np.einsum("mk,kij->mij", coef.astype(float), basis.astype(float))
    np.testing.assert_allclose(reconstructed, series, atol=4 * noise)
    for plane in range(m):
        flux, _ = whole(layer, plane)(bin_rows(7), bin_cols(8))
        np.testing.assert_allclose(flux[0], reconstructed[plane], rtol=1e-5, atol=1e-5)
    flux, _ = whole(layer, 4)(bin_rows(7), np.r_[bin_cols(8), bin_cols(9)])
    np.testing.assert_array_equal(flux[0, :, TILE:], raw[0])


def quadratic(row, col):
    r, c = row - 660.0, col - 1330.0
    return 3 + 0.02 * r - 0.01 * c - 1e-4 * r**2 + 6e-5 * r * c + 2e-4 * c**2


def test_quadratic_field_reproduced_between_centres():
    """Keys is exact for quadratics: a quadratic stored in 3 x 3 tiles is reproduced at
    arbitrary positions inside the middle tile (whose neighbours are all present)."""
    tiles = [(i, j) for i in (9, 10, 11) for j in (19, 20, 21)]
    data = [quadratic(bin_rows(i)[:, None], bin_cols(j)[None, :]) for i, j in tiles]
    layer = FineLayer.from_blocks(
        PB, TILE, [t[0] for t in tiles], [t[1] for t in tiles], [0] * 9, data, [0.1] * 9
    )
    rng = np.random.default_rng(3)
    rows = np.sort(rng.uniform(1 + 10 * SIDE, 1 + 11 * SIDE - 1, 40))
    cols = np.sort(rng.uniform(45 + 20 * SIDE, 45 + 21 * SIDE - 1, 40))
    flux, _ = whole(layer, 0)(rows, cols)
    truth = quadratic(rows[:, None], cols[None, :])
    assert np.ptp(truth) > 1  # a field with real curvature
    np.testing.assert_allclose(flux[0], truth, atol=2e-5 * np.abs(truth).max())


def test_time_interpolation_between_blocks(layer_data):
    """Halfway between two planes holding blocks: their mean (variance with weights
    1/4); towards a plane without a block, that plane contributes zero."""
    layer, data = layer_data
    rows, cols = bin_rows(3), bin_cols(4)
    (a, ea), (b, eb), (c, ec) = ((data[k], BLOCKS[k][3]) for k in (0, 1, 3))
    flux, var = layer.evaluate(np.array([2, 0]), np.array([3, 1]), np.array([0.5, 0.5]), rows, cols)
    np.testing.assert_allclose(flux[0], (b + c) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var[0], (eb**2 + ec**2) / 4, rtol=1e-5)
    np.testing.assert_allclose(flux[1], a / 2, rtol=1e-5, atol=1e-6)  # plane 1 has no block
    np.testing.assert_allclose(var[1], ea**2 / 4, rtol=1e-5)
    flux, _ = layer.evaluate(np.array([3]), np.array([4]), np.array([0.25]), rows, cols)
    np.testing.assert_allclose(flux[0], 0.75 * c, rtol=1e-5, atol=1e-6)
    # Planes 4 and 5 have no block at this tile (plane 5 has one far away).
    none = layer.evaluate(np.array([4]), np.array([5]), np.array([0.5]), rows, cols)
    assert none is None or not np.any(none[0])


# ---------------------------------------------------------------------- inside a cube
@pytest.fixture(scope="module")
def cubes(layer_data):
    layer, _ = layer_data
    return coarse_cube(fine=layer), coarse_cube()


def cube_times():
    """Every plane centre and every midpoint between planes."""
    return T0 + DT * np.arange(0, NT - 0.75, 0.5)


def expected_fine(data, component="value"):
    """The layer at `cube_times` on tiles (3, 4) and (3, 5), from the blocks by hand."""
    planes = expected_planes(data, 3, [4, 5], component)
    out = []
    for t in np.arange(0, NT - 0.75, 0.5):
        p, w = int(t), t - int(t)
        if component == "value":
            out.append(planes[p] if w == 0 else (1 - w) * planes[p] + w * planes[p + 1])
        else:
            out.append(planes[p] if w == 0 else (1 - w) ** 2 * planes[p] + w**2 * planes[p + 1])
    return np.array(out)


@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
def test_cube_evaluate_adds_the_layer(cubes, layer_data, compact):
    """Cube with layer = cube without + layer, flux and variance, dense and compressed."""
    with_fine, without = cubes
    if compact:
        with_fine, without = with_fine.compress(), without.compress()
        assert with_fine.is_compact
        assert with_fine.fine is layer_data[0]
    rows, cols = bin_rows(3), np.r_[bin_cols(4), bin_cols(5)]
    a = with_fine.evaluate(cube_times(), rows, cols)
    b = without.evaluate(cube_times(), rows, cols)
    diff = a.flux.value.astype(float) - b.flux.value
    np.testing.assert_allclose(diff, expected_fine(layer_data[1]), atol=2e-5)
    dvar = a.flux_err.value.astype(float) ** 2 - b.flux_err.value.astype(float) ** 2
    np.testing.assert_allclose(dvar, expected_fine(layer_data[1], "var"), atol=1e-5)


def test_cube_evaluate_far_from_blocks_unchanged(cubes):
    """Where no block is near, the layer adds exactly nothing."""
    with_fine, without = cubes
    rows, cols = np.arange(1000, 1010), np.arange(1500, 1510)
    a = with_fine.evaluate(cube_times(), rows, cols)
    b = without.evaluate(cube_times(), rows, cols)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.flux_err, b.flux_err)


def test_strap_response_multiplies_the_fine_part(layer_data):
    """On a strap column the fine part is multiplied by the strap response, as the
    coarse part is; on other columns it is not."""
    layer, _ = layer_data
    strap, response = 45 + 4 * SIDE + 10, 1.1
    straps = dict(strap_column=[strap], strap_response=[response])
    rows, cols = bin_rows(3), np.arange(strap - 5, strap + 6)
    t = cube_times()[:6]

    def fine_part(**kwargs):
        a = coarse_cube(fine=layer, **kwargs).evaluate(t, rows, cols).flux.value
        return a.astype(float) - coarse_cube(**kwargs).evaluate(t, rows, cols).flux.value

    plain, strapped = fine_part(), fine_part(**straps)
    on = cols == strap
    assert np.abs(plain[..., on]).max() > 1  # the layer is there
    np.testing.assert_allclose(strapped[..., on], response * plain[..., on], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(strapped[..., ~on], plain[..., ~on], atol=1e-5)


@pytest.mark.parametrize("strapped", [False, True], ids=["plain", "strap"])
def test_evaluate_sum_with_layer(layer_data, strapped):
    """The aperture sum equals the sum of `evaluate` over the mask (layer and strap
    response included), and the layer only adds to the error of the sum."""
    layer, _ = layer_data
    kwargs = dict(strap_column=[300], strap_response=[1.08]) if strapped else {}
    with_fine, without = coarse_cube(fine=layer, **kwargs), coarse_cube(**kwargs)
    rows, cols = np.arange(180, 215), np.arange(290, 340)  # straddles tiles (2..3, 3..4)
    mask = np.random.default_rng(4).random((rows.size, cols.size)) < 0.6
    t = cube_times()
    total = with_fine.evaluate_sum(t, rows, cols, mask)
    pixels = with_fine.evaluate(t, rows, cols).flux.value.astype(float)
    np.testing.assert_allclose(total.flux.value, pixels[:, mask].sum(axis=1), rtol=2e-6)
    plain = without.evaluate_sum(t, rows, cols, mask)
    added = total.flux.value - plain.flux.value
    assert np.abs(added[:8]).max() > 1  # planes 0..3 hold blocks here
    np.testing.assert_allclose(added[8:], 0, atol=1e-9)  # planes 4, 5 do not
    np.testing.assert_allclose(total.flux_err.value[8:], plain.flux_err.value[8:], rtol=1e-12)
    assert np.all(total.flux_err.value >= plain.flux_err.value)
    assert np.any(total.flux_err.value > 1.01 * plain.flux_err.value)


def with_misfit(layer, corr=0.3):
    """``layer`` with 80 % of each block's error quoted as misfit, correlation ``corr``."""
    n = len(layer)
    return dataclasses.replace(layer, misfit=0.8 * layer.error, misfit_corr=np.full((n, 2), corr))


def test_misfit_changes_only_aperture_sums(layer_data):
    """A layer that splits its error into noise and misfit quotes the same single-pixel
    errors; an aperture sum's error is smaller (the misfit decorrelates) but never below
    what the noise part alone gives, and grows with the correlation."""
    layer, _ = layer_data
    shared, split = coarse_cube(fine=layer), coarse_cube(fine=with_misfit(layer))
    rows, cols = np.arange(200, 212), np.arange(300, 310)  # in tile (3, 4)
    t = cube_times()
    np.testing.assert_array_equal(
        split.evaluate(t, rows, cols).flux_err, shared.evaluate(t, rows, cols).flux_err
    )
    plain = coarse_cube().evaluate_sum(t, rows, cols).flux_err.value
    err = {}  # the layer's share of the sum's error
    for name, cube in {
        "shared": shared,
        "split": split,
        "longer": coarse_cube(fine=with_misfit(layer, corr=0.9)),
        "noise": coarse_cube(fine=dataclasses.replace(layer, error=0.6 * layer.error)),
    }.items():
        err[name] = np.sqrt(cube.evaluate_sum(t, rows, cols).flux_err.value ** 2 - plain**2)
    blocks = err["shared"] > 0.01 * plain  # times the blocks of tile (3, 4) touch
    assert blocks.sum() >= 6
    assert np.all(err["split"][blocks] < 0.8 * err["shared"][blocks])
    assert np.all(err["split"][blocks] > err["noise"][blocks])
    assert np.all(err["longer"][blocks] > 1.2 * err["split"][blocks])


def test_misfit_round_trip(layer_data, tmp_path):
    """The misfit and its correlations are written (rounded: errors to ``ERRSTEP``,
    correlations to thousandths) and read back; a layer without them stays without."""
    layer = with_misfit(layer_data[0], corr=0.3456)
    path = tmp_path / "cube.fits"
    coarse_cube(fine=layer).write(path)
    read = ScatterLightCube.read(path).fine
    np.testing.assert_allclose(read.misfit, layer.misfit, rtol=2.0**-8)
    np.testing.assert_allclose(read.misfit_corr, 0.346, atol=1e-6)
    table = FineLayer.from_hdul({h.name: h for h in layer.to_hdus(precision=None)}, path)
    np.testing.assert_array_equal(table.misfit, layer.misfit)
    np.testing.assert_array_equal(table.misfit_corr, layer.misfit_corr)
    coarse_cube(fine=layer_data[0]).write(path, overwrite=True)
    assert ScatterLightCube.read(path).fine.misfit is None


def test_index_with_every_optional_row(layer_data, tmp_path):
    """Holes and misfit give the index ten or more rows: their names are standard FITS
    keywords (``RNAMEi``, no HIERARCH warning), and a file that names them ``ROWNAMEi``,
    as files did before there could be ten, reads the same."""
    layer = with_misfit(layer_data[0])
    n, tile = len(layer), layer.tile
    holes = np.zeros((1, tile, tile), bool)
    holes[0, :2] = True
    layer = dataclasses.replace(
        layer, fill_error=np.full(n, 0.5), hole_index=np.zeros(n, int), holes=holes
    )
    path = tmp_path / "cube.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coarse_cube(fine=layer).write(path)
    with fits.open(path) as hdul:
        header = hdul["FINE_INDEX"].header
        nrows = hdul["FINE_INDEX"].data.shape[0]
    assert nrows >= 10
    assert [header[f"RNAME{i}"] for i in (1, nrows)] == ["TILE_ROW", "CORR_COL"]
    read = ScatterLightCube.read(path).fine

    def old_names(hdul):
        index = hdul["FINE_INDEX"].header
        for i in range(1, nrows + 1):
            index.set(f"ROWNAME{i}" if i < 10 else f"HIERARCH ROWNAME{i}", index[f"RNAME{i}"])
            del index[f"RNAME{i}"]

    old = edited(path, tmp_path / "old.fits", old_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        before = ScatterLightCube.read(old).fine
    np.testing.assert_array_equal(before.misfit_corr, read.misfit_corr)
    np.testing.assert_array_equal(before.fill_error, read.fill_error)
    np.testing.assert_array_equal(before.error, read.error)


def test_misfit_needs_its_correlation(layer_data):
    """``misfit`` without ``misfit_corr`` is refused, and so are invalid values."""
    layer = layer_data[0]
    with pytest.raises(ValueError, match="misfit and misfit_corr go together"):
        dataclasses.replace(layer, misfit=layer.error)
    bad = with_misfit(layer, corr=1.5)
    with pytest.raises(CubeFormatError, match="correlations must lie in 0..1"):
        coarse_cube(fine=bad)


# ---------------------------------------------------------------------- FITS
@pytest.mark.parametrize("compact", [False, True], ids=["dense", "compact"])
def test_fits_round_trip(cubes, tmp_path, compact):
    """Written and read back, a cube with a fine layer keeps its index exactly, its
    errors within 2**-8 (``ERRSTEP``) and its blocks within the stated rounding (RMS <=
    FINE_PRECISION x ERROR per block); evaluation differs by no more than that."""
    cube = cubes[0].compress() if compact else cubes[0]
    path = tmp_path / "cube.fits"
    cube.write(path)
    with fits.open(path) as hdul:
        names = [h.name for h in hdul]
        assert hdul["FINE"].data.dtype == np.int16
    assert {"FINE", "FINE_SCALE", "FINE_INDEX", "FINE_COEF"} <= set(names)
    again = ScatterLightCube.read(path)
    assert again.is_compact == compact
    for name in ("tile_row", "tile_col", "plane", "basis_start", "rank", "coef_start"):
        np.testing.assert_array_equal(getattr(again.fine, name), getattr(cube.fine, name))
    error = again.fine.error
    np.testing.assert_allclose(error, cube.fine.error, rtol=2.0**-8, atol=0)
    assert np.any(error != cube.fine.error)  # really rounded
    assert_rounded(cube.fine, again.fine)
    rows, cols = np.arange(180, 215), np.arange(290, 340)
    a, b = cube.evaluate(cube_times(), rows, cols), again.evaluate(cube_times(), rows, cols)
    assert np.abs(b.flux - a.flux).max().value <= 3 * FINE_PRECISION * cube.fine.error.max()
    np.testing.assert_allclose(a.flux_err, b.flux_err, rtol=2.0**-8)


def assert_rounded(exact, read):
    """Each block of ``read`` within the rounding ``FineLayer.quantum`` allows for."""
    diff = (read.blocks() - exact.blocks()).astype(float)
    ratio = np.sqrt((diff**2).mean(axis=(1, 2))) / exact.error
    # The bound holds for the expected RMS of uniform rounding; 256 bins scatter it.
    assert ratio.max() <= 1.3 * FINE_PRECISION
    assert ratio.mean() <= FINE_PRECISION
    assert ratio.max() > 0  # really rounded: the bound is not met by storing float32


def test_factored_tile_round_trip(tmp_path):
    """A factored tile (noise 0.05, signal ~5): basis images and coefficients are both
    rounded, together within the bound; the rounding is far below the noise."""
    rng = np.random.default_rng(4)
    m, noise = 30, 0.05
    images = rng.normal(0, 1, (3, TILE, TILE))
    series = np.einsum("mk,kij->mij", rng.normal(0, 5, (m, 3)), images)
    series += rng.normal(0, noise, series.shape)
    coef, basis = compress_tile(series, np.full(m, noise))
    k = basis.shape[0]
    layer = FineLayer(
        PB, TILE, tile_row=[7] * m, tile_col=[8] * m, plane=np.arange(m) % NT,
        error=np.full(m, noise), basis=basis, basis_start=[0] * m, rank=[k] * m,
        coef=coef.ravel(), coef_start=k * np.arange(m),
    )  # fmt: skip
    path = tmp_path / "cube.fits"
    coarse_cube(fine=layer).write(path)
    with fits.open(path) as hdul:
        index = hdul["FINE_INDEX"]
        names = [index.header[f"RNAME{i + 1}"] for i in range(index.data.shape[0])]
        assert "COEF" not in names  # implied by RANK
        assert hdul["FINE_COEF"].data.dtype == np.int32
        assert hdul["FINE_COEF"].header["COEFORD"] == "IMAGE"
        stored = hdul["FINE_COEF"].data
    # By basis image: the 30 coefficients of image 0, then those of image 1, ...
    coef_step = layer.quantum()[1]
    expected = np.rint(coef.T / coef_step[:k, None]).ravel()
    np.testing.assert_array_equal(stored, expected)
    read = ScatterLightCube.read(path).fine
    np.testing.assert_array_equal(read.coef_start, layer.coef_start)
    assert_rounded(layer, read)


def test_old_layout_read_exactly(cubes, tmp_path):
    """Files from before the rounded layout (float32 FINE, no FINE_SCALE, 64-bit index
    columns), as ``to_hdus(precision=None)`` still writes them, read exactly."""
    cube = cubes[0]
    path, old = tmp_path / "cube.fits", tmp_path / "old.fits"
    cube.write(path)

    def downgrade(hdul):
        for name in ("FINE", "FINE_SCALE", "FINE_INDEX", "FINE_COEF"):
            hdul.pop(name)
        hdus = cube.fine.to_hdus(precision=None)
        assert [h.name for h in hdus] == ["FINE", "FINE_INDEX", "FINE_COEF"]
        assert hdus[0].data.dtype == np.float32
        index = hdus[1].columns
        hdus[1] = fits.BinTableHDU.from_columns(  # as the old writer: J and K columns
            [fits.Column(c.name, "E" if c.name == "ERROR" else "K", array=c.array) for c in index],
            name="FINE_INDEX",
        )
        hdul.extend(hdus)

    edited(path, old, downgrade)
    again = ScatterLightCube.read(old)
    for name in FineLayer.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(again.fine, name), getattr(cube.fine, name))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda hdul: hdul.pop("FINE_SCALE"), "no FINE_SCALE"),
        (lambda hdul: hdul.__setitem__("FINE_SCALE", fits.BinTableHDU.from_columns(
            [fits.Column("FINE", "E", array=np.ones(2))], name="FINE_SCALE")), "FINE_SCALE"),
    ],
    ids=["missing", "short"],
)  # fmt: skip
def test_damaged_scale_refused(cubes, tmp_path, edit, message):
    """Integer basis images without (complete) steps: a format error, not a misread."""
    path, broken = tmp_path / "cube.fits", tmp_path / "broken.fits"
    cubes[0].write(path)
    edited(path, broken, edit)
    with pytest.raises(CubeFormatError, match=message):
        ScatterLightCube.read(broken)


def _delete_key(extname, key):
    def edit(hdul):
        del hdul[extname].header[key]

    return edit


def _set_key(extname, key, value):
    def edit(hdul):
        hdul[extname].header[key] = value

    return edit


def _long_coef(hdul):
    hdul["FINE_COEF"].data = np.append(hdul["FINE_COEF"].data, np.int32(0))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_delete_key("FINE_INDEX", "ERRSTEP"), "integer image with an ERRSTEP"),
        (_delete_key("FINE_INDEX", "RNAME3"), r"FINE_INDEX has no column\(s\) PLANE"),
        (_set_key("FINE_COEF", "COEFORD", "WAVELET"), "COEFORD = 'WAVELET'"),
        (_long_coef, "FINE_COEF holds .* coefficients but the blocks' RANK add up to"),
    ],
    ids=["errstep", "rowname", "coeford", "long-coef"],
)
def test_damaged_index_refused(cubes, tmp_path, edit, message):
    """A damaged compressed index or coefficient order: a format error naming it."""
    path, broken = tmp_path / "cube.fits", tmp_path / "broken.fits"
    cubes[0].write(path)
    edited(path, broken, edit)
    with pytest.raises(CubeFormatError, match=message):
        ScatterLightCube.read(broken)


def test_truncated_fine_layer_refused(cubes, tmp_path):
    """A file cut inside its compressed fine layer: a format error, not a misread."""
    path, broken = tmp_path / "cube.fits", tmp_path / "broken.fits"
    cubes[0].write(path)
    with fits.open(path) as hdul:
        cut = hdul.fileinfo(hdul.index_of("FINE_COEF"))["datLoc"] + 100
    broken.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(CubeFormatError, match="truncated or corrupt|cannot be read"):
        ScatterLightCube.read(broken)


def test_fits_without_fine_index_is_refused(cubes, tmp_path):
    """FINE without FINE_INDEX: a format error naming the missing extension."""
    path, broken = tmp_path / "cube.fits", tmp_path / "broken.fits"
    cubes[0].write(path)
    edited(path, broken, lambda hdul: hdul.pop("FINE_INDEX"))
    with pytest.raises(CubeFormatError, match="FINE_INDEX"):
        ScatterLightCube.read(broken)


def _edit(layer, **changes):
    fields = {name: getattr(layer, name) for name in FineLayer.__dataclass_fields__}
    for name, change in changes.items():
        fields[name] = change(np.array(fields[name]))
    return FineLayer(**fields)


def _set(index, value):
    def change(a):
        a[index] = value
        return a

    return change


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(plane=_set(-1, NT)), "planes must lie"),
        (dict(tile_row=_set(0, 32)), "tile_row must lie"),
        (dict(tile_col=_set(1, -1)), "tile_col must lie"),
        (dict(basis=_set((2, 5, 5), np.nan)), "NaN"),
        (dict(rank=_set(4, 2)), "outside its basis"),  # last block: basis 4..5 of 5
        (dict(error=_set(0, -1)), "non-negative"),
    ],
    ids=["plane", "tile_row", "tile_col", "nan", "rank", "error"],
)
def test_invalid_layer_refused(layer_data, changes, message):
    """`from_arrays` reports a malformed layer as a `CubeFormatError`."""
    with pytest.raises(CubeFormatError, match=message):
        coarse_cube(fine=_edit(layer_data[0], **changes))


# ---------------------------------------------------------------------- compress_tile
def test_compress_tile_rank_one_series():
    """A fixed image times a varying amplitude (+ noise): rank 1, reconstructed within
    ~3x the noise everywhere and far better than the noise in RMS."""
    rng = np.random.default_rng(5)
    m, noise = 24, 0.05
    y, x = np.mgrid[:TILE, :TILE]
    image = np.exp(-((x - 6.0) ** 2 + (y - 9.0) ** 2) / 18) + 0.3 * (x > 10)
    amplitude = 2 + 3 * np.sin(np.arange(m) / 3)
    clean = amplitude[:, None, None] * image
    coef, basis = compress_tile(clean + rng.normal(0, noise, clean.shape), np.full(m, noise))
    assert coef is not None
    assert coef.shape == (m, 1)
    assert basis.shape == (1, TILE, TILE)
    error = np.einsum("mk,kij->mij", coef, basis) - clean
    assert np.abs(error).max() < 3 * noise
    assert np.sqrt(np.mean(error**2)) < 0.5 * noise


def test_compress_tile_moving_ridge_needs_several_images():
    """A ridge sweeping through the tile is not one image times an amplitude."""
    rng = np.random.default_rng(6)
    m, noise = 20, 0.02
    y, x = np.mgrid[:TILE, :TILE]
    clean = np.stack([np.exp(-0.5 * ((x + 0.5 * y - s) / 1.3) ** 2) for s in np.linspace(0, 22, m)])
    coef, basis = compress_tile(clean + rng.normal(0, noise, clean.shape), np.full(m, noise))
    assert coef is not None
    assert coef.shape[1] > 1
    assert basis.shape[0] == coef.shape[1] < m
    error = np.einsum("mk,kij->mij", coef, basis) - clean
    assert np.sqrt(np.mean(error**2)) < 1.5 * noise


def test_compress_tile_keeps_a_drift_in_a_few_bins():
    """A slow drift in three corner bins (as at the edge of a star's hole, issue 21) holds
    too little power for the pooled budget and too little per block for the per-block one;
    the per-bin budget keeps it: those bins are reconstructed well within the drift."""
    rng = np.random.default_rng(11)
    m, noise = 20, 0.1
    y, x = np.mgrid[:TILE, :TILE]
    image = np.exp(-((x - 9.0) ** 2 + (y - 7.0) ** 2) / 30)
    clean = (5 + 2 * np.sin(np.arange(m) / 4))[:, None, None] * image
    corner = (y + x < 2) & (y < 2) & (x < 2)
    drift = 0.3 * np.cos(np.arange(m) / 3)
    clean[:, corner] += drift[:, None]
    coef, basis = compress_tile(clean + rng.normal(0, noise, clean.shape), np.full(m, noise))
    assert coef is not None
    assert coef.shape[1] <= 3
    error = np.einsum("mk,kij->mij", coef, basis) - clean
    assert np.sqrt(np.mean(error[:, corner] ** 2)) < 0.5 * np.sqrt(np.mean(drift**2))


@pytest.mark.parametrize("m", [12, 3 * TILE * TILE // 2])
def test_compress_tile_is_the_truncated_svd(m):
    """Fewer blocks than pixels (the blocks' Gram matrix) or more (the pixels'): either
    way the factors reproduce the SVD truncated at the same rank, with orthonormal
    basis images."""
    rng = np.random.default_rng(8)
    y, x = np.mgrid[:TILE, :TILE]
    images = np.stack([np.exp(-0.5 * ((x + 0.5 * y - s) / 1.3) ** 2) for s in (4, 9, 15)])
    blocks = rng.normal(0, 1, (m, 3)) @ images.reshape(3, -1)
    blocks += rng.normal(0, 0.01, blocks.shape)
    coef, basis = compress_tile(blocks.reshape(m, TILE, TILE), np.full(m, 0.01))
    assert coef is not None
    k = coef.shape[1]
    assert k == 3
    u, s, vt = np.linalg.svd(blocks, full_matrices=False)
    truncated = (u[:, :k] * s[:k]) @ vt[:k]
    flat = basis.reshape(k, -1).astype(float)
    np.testing.assert_allclose(coef @ flat, truncated, atol=1e-4 * np.abs(truncated).max())
    np.testing.assert_allclose(flat @ flat.T, np.eye(k), atol=1e-5)


@pytest.mark.parametrize("m", [1, 2])
def test_compress_tile_tiny_input_kept_raw(m):
    """Fewer than three blocks are returned as they are."""
    blocks = np.random.default_rng(7).normal(0, 1, (m, TILE, TILE))
    coef, basis = compress_tile(blocks, np.full(m, 0.1))
    assert coef is None
    np.testing.assert_array_equal(basis, blocks.astype(np.float32))
    assert basis.dtype == np.float32


def test_cli_info_reports_the_fine_layer(layer_data, tmp_path, capsys):
    """``lk-scatterlight info`` names the layer's bins, tiles, blocks and planes."""
    from lk_scatterlight.cli import main

    layer, _ = layer_data
    path = coarse_cube(fine=layer).write(tmp_path / "fine.fits")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("fine layer:"))
    assert f"{PB} px bins in {PB * TILE} px tiles: {len(BLOCKS)} blocks in 4 planes" in line
    path = coarse_cube().write(tmp_path / "plain.fits")
    assert main(["info", str(path)]) == 0
    assert "fine layer" not in capsys.readouterr().out
