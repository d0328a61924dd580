"""Training sets (`lk_scatterlight.builder.dataset`), ``lk-scatterlight dataset`` and animations.

The spacecraft ephemeris is the real JPL Horizons table of ``../shared/data``
(sectors 1-5); the cubes are simulated with `lk_scatterlight.simulate`.
"""

import json

import numpy as np
import pytest

from lk_scatterlight import geometry, simulate
from lk_scatterlight.builder import dataset
from lk_scatterlight.builder.sources import FrameInfo
from lk_scatterlight.cli import main
from lk_scatterlight.exceptions import ScatterLightError

pytest.importorskip("tesswcs", reason="tesswcs (the builder extra) provides the sector WCS")


@pytest.fixture(scope="module")
def cube():
    """Sector 1 camera 4 CCD 3, 8 x 8 bins of 256 px, 26 planes over the sector."""
    time = simulate.sector_times(1)[::50]
    return simulate.make_cube(simulate.ScatteredLightField(), 1, 4, 3, pixel_bin=256, time=time)


@pytest.fixture(scope="module")
def data(cube, horizons):
    pointing = geometry.CCDPointing.from_sector(1, 4, 3)
    return dataset.make_dataset(cube, horizons, pointing, cadenceno=np.arange(cube.shape[0]) * 50)


def test_keys_shapes_units(data, cube):
    nt, nrow, ncol = cube.shape
    assert set(dataset.DATASET_KEYS) <= set(data)
    legacy = ["scatter_cube", "time", "cadenceno"] + [
        f"{body}_{q}{suffix}"
        for body in ("earth", "moon")
        for q in ("alt", "az", "dist")
        for suffix in ("", "_map")
    ]
    assert set(legacy) <= set(data)  # the keys tess-backml users know
    for key, (shape, _, _) in dataset.DATASET_KEYS.items():
        expected = {"(ntime,)": (nt,), "(ntime, nrow, ncol)": (nt, nrow, ncol)}.get(shape)
        if expected is not None:
            assert data[key].shape == expected, key
        if shape == "(ntime, nrow, ncol)":
            assert data[key].dtype == np.float32, key
    assert np.array_equal(data["time"], cube.btjd)
    assert np.allclose(data["scatter_cube"], cube.flux.value)
    assert np.array_equal(data["row"], cube.row)
    assert (int(data["sector"]), int(data["camera"]), int(data["ccd"])) == (1, 4, 3)
    # Ranges and definitions: angles 0..180, azimuths 0..360, distances constant over the CCD.
    for body in ("earth", "moon"):
        assert 0 <= data[f"{body}_alt_map"].min()
        assert data[f"{body}_alt_map"].max() <= 180
        assert 0 <= data[f"{body}_az_map"].min()
        assert data[f"{body}_az_map"].max() < 360
        dist = data[f"{body}_dist_map"]
        assert np.allclose(dist, data[f"{body}_dist"][:, None, None].astype(np.float32))
        size = np.rad2deg(
            2 * np.arctan(geometry._RADIUS_KM[body] / (data[f"{body}_dist"] * 6378.137))
        )
        assert np.allclose(data[f"{body}_size"], size)
    assert 17 < data["earth_dist"].min()
    assert data["earth_dist"].max() < 62
    assert np.array_equal(data["cadenceno"], np.arange(nt) * 50)
    assert np.all(np.abs(data["spacecraft_time"] - data["time"]) * 86400 < 600)
    meta = json.loads(str(data["meta"]))
    assert meta["units"] == {k: unit for k, (_, unit, _) in dataset.DATASET_KEYS.items()}
    assert meta["units"]["earth_alt_map"] == "deg"
    assert meta["units"]["earth_dist"] == "Earth radii"
    assert "JPL Horizons" in meta["ephemeris"]
    assert meta["pixel_bin"] == 256


def test_boresight_consistent_with_maps(data, horizons):
    """A map evaluated at the boresight pixel gives the boresight values."""
    pointing = geometry.CCDPointing.from_sector(1, 4, 3)
    row, column = data["boresight_pixel"]
    geo = geometry.compute_geometry(data["time"], row, column, pointing, horizons)
    for body in ("earth", "moon"):
        assert np.allclose(geo[body].angle, data[f"{body}_alt"], atol=1e-9)
        assert np.allclose(geo[body].azimuth, data[f"{body}_az"], atol=1e-9)
        expected = geometry.to_tessvectors_azimuth(data[f"{body}_az"], pointing)
        assert np.allclose(data[f"{body}_az_tessvectors"], expected)


def test_round_trip(data, tmp_path):
    path = dataset.write_dataset(data, tmp_path)
    assert path.name == "lk-scatterlight_dataset_s0001_4-3_bin256.npz"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    back = dataset.read_dataset(path)
    for key, value in data.items():
        if key == "meta":
            assert back["meta"] == json.loads(str(value))
        else:
            assert np.array_equal(back[key], value), key
            assert back[key].dtype == value.dtype, key
    # Plain numpy reads it, without pickles.
    with np.load(path, allow_pickle=False) as npz:
        assert npz["earth_alt_map"].shape == data["earth_alt_map"].shape
    with pytest.raises(FileExistsError):
        dataset.write_dataset(data, path)
    raw = dataset.write_dataset(data, tmp_path / "raw.npz", compress=False)
    assert raw.stat().st_size > path.stat().st_size
    assert dataset.write_dataset(data, path, overwrite=True) == path


def test_write_is_atomic(data, tmp_path, monkeypatch):
    def broken(file, **arrays):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        dataset.write_dataset(data, tmp_path / "set.npz")
    assert list(tmp_path.iterdir()) == []


def test_read_rejects(data, tmp_path):
    with pytest.raises(FileNotFoundError):
        dataset.read_dataset(tmp_path / "missing.npz")
    old = dict(data, format_version=np.array(99))
    path = dataset.write_dataset(old, tmp_path / "old.npz")
    with pytest.raises(ScatterLightError, match="format version 99"):
        dataset.read_dataset(path)
    partial = {k: v for k, v in data.items() if k != "moon_az_map"}
    with pytest.raises(ScatterLightError, match="moon_az_map"):
        dataset.write_dataset(partial, tmp_path / "partial.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ScatterLightError, match="not a readable"):
        dataset.read_dataset(bad)


def test_cadence_numbers(cube, horizons):
    frames = [
        FrameInfo(i, float(t), float(t) - 0.01, float(t) + 0.01, 0, 1000 + i, f"f{i}")
        for i, t in enumerate(simulate.sector_times(1))
    ]
    assert np.array_equal(dataset.cadence_numbers(cube, frames), 1000 + np.arange(26) * 50)
    unknown = [FrameInfo(0, 0.0, -0.01, 0.01, 0, 5, "far")]
    assert np.all(dataset.cadence_numbers(cube, unknown) == -1)
    assert np.all(dataset.cadence_numbers(cube, []) == -1)
    with pytest.raises(ScatterLightError, match="cadenceno must have shape"):
        dataset.make_dataset(cube, horizons, None, cadenceno=[1, 2])


def test_cli_dataset_builds_no_fine_layer_unless_asked(
    tmp_path, capsys, horizons_path, monkeypatch
):
    """The training set keeps the binned planes only: the fine layer's cost is not paid
    unless --fine-bin asks for it."""
    from lk_scatterlight.builder import pipeline

    configs = []

    def record(source, config, **kwargs):
        configs.append(config)
        raise ScatterLightError("stopped after the configuration")

    monkeypatch.setattr(pipeline, "build_cube", record)
    argv = ["dataset", "--sector", "1", "--camera", "4", "--ccd", "3", "--no-progress"]
    argv += ["--source", "simulate", "4", "--ephemeris", "horizons", str(horizons_path)]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    assert main([*argv, "--out", str(tmp_path / "b"), "--fine-bin", "4"]) == 1
    assert "stopped after the configuration" in capsys.readouterr().err
    assert [c.fine_bin for c in configs] == [0, 4]


@pytest.mark.slow
def test_cli_dataset(tmp_path, capsys, horizons_path):
    horizons = str(horizons_path)
    argv = ["dataset", "--sector", "1", "--camera", "4", "--ccd", "3"]
    argv += ["--source", "simulate", "10", "--ephemeris", "horizons", horizons]
    argv += ["--pixel-bin", "256", "--out", str(tmp_path / "sets"), "--no-progress"]
    assert main(argv) == 0
    path = capsys.readouterr().out.strip()
    data = dataset.read_dataset(path)
    assert data["scatter_cube"].shape[1:] == (8, 8)
    assert data["earth_alt_map"].shape == data["scatter_cube"].shape
    sim_cadences = np.arange(10)  # the simulator numbers frames from the sector start
    assert set(data["cadenceno"]) <= set(sim_cadences)
    assert np.all(np.diff(data["cadenceno"]) > 0)
    assert [p.name for p in (tmp_path / "sets").iterdir()] == [path.split("/")[-1]]
    # Existing output: one line on stderr, exit code 1, nothing rebuilt.
    assert main(argv) == 1
    assert "exists" in capsys.readouterr().err
    bad = ["dataset", "--sector", "1", "--camera", "4", "--ccd", "3", "--ephemeris", "jpl"]
    assert main([*bad, "--source", "simulate", "10", "--out", str(tmp_path / "x")]) == 1
    assert "Unknown ephemeris 'jpl'" in capsys.readouterr().err
    # A sector the Horizons table does not cover fails before building anything.
    late = ["dataset", "--sector", "9", "--camera", "1", "--ccd", "1", "--source", "simulate"]
    code = main([*late, "10", "--ephemeris", "horizons", horizons, "--out", str(tmp_path / "y")])
    assert code == 1
    assert "outside the ephemeris" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_animations_and_figure(data, cube, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    from lk_scatterlight import plotting

    gif = tmp_path / "maps.gif"
    animation = plotting.animate_maps(data, step=10, path=gif, fps=5)
    assert isinstance(animation, FuncAnimation)
    assert gif.read_bytes()[:4] == b"GIF8"
    cube_gif = tmp_path / "cube.gif"
    animation = plotting.animate_cube(cube, step=13, path=cube_gif)
    assert isinstance(animation, FuncAnimation)
    assert cube_gif.read_bytes()[:4] == b"GIF8"
    _, own = plt.subplots()
    unsaved = plotting.animate_cube(data, step=10, ax=own)  # no file: draw it as a display would
    own.figure.canvas.draw()
    assert isinstance(unsaved, FuncAnimation)
    axes = plotting.plot_geometry_maps(data, index=3)
    assert axes.shape == (6,)
    assert axes[1].get_title() == "Earth angle"
    _, own = plt.subplots(2, 3)
    assert plotting.plot_geometry_maps(data, ax=own)[0] is own.ravel()[0]
    plt.close("all")


# ---------------------------------------------------------------------- previews
@pytest.fixture(scope="module")
def small_build():
    """Seven simulated frames spread over sector 1, camera 4 CCD 3, built densely (8 x 8 bins).

    Without the curvature correction and the fine layer, as a sparse preview measures.
    """
    from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
    from lk_scatterlight.builder.sources import SimulatedFFISource

    simulator = simulate.FFISimulator(
        simulate.ScatteredLightField(),
        sector=1,
        camera=4,
        ccd=3,
        time=simulate.sector_times(1)[25::180],
    )
    source = SimulatedFFISource(simulator)
    config = BuildConfig(
        pixel_bin=256,
        fine_bin=0,
        curvature_correction=False,
        compact=False,
        n_candidates=7,
        n_dark=3,
    )
    return source, config, build_cube(source, config, progress=False)


def test_sparse_preview_equals_dense_cube(small_build, horizons):
    import dataclasses

    from lk_scatterlight.builder import preview
    from lk_scatterlight.ccd import Region

    source, config, cube = small_build
    pointing = geometry.CCDPointing.from_sector(1, 4, 3)
    sparse = preview.sparse_preview(source, config, 10, horizons, pointing, seed=3)
    i, j = sparse["bins"].T
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 10
    assert sparse["scatter"].shape == (cube.shape[0], 10)
    assert np.array_equal(sparse["time"], cube.btjd)
    assert np.array_equal(sparse["row"], cube.row[i])
    assert np.array_equal(sparse["column"], cube.column[j])
    dense = cube.flux.value[:, i, j]
    assert np.abs(dense).max() > 1  # e-/s: there is scattered light to compare
    assert np.abs(sparse["scatter"] - dense).max() < 1e-5
    assert np.abs(sparse["scatter_err"] - cube.flux_err.value[:, i, j]).max() < 1e-5
    # The geometry is the dense training set's maps at those bins.
    data = dataset.make_dataset(cube, horizons, pointing)
    for key in ("earth_alt", "earth_az", "moon_alt", "moon_az"):
        assert np.abs(sparse[key] - data[f"{key}_map"][:, i, j]).max() < 1e-4, key
    assert np.allclose(sparse["earth_dist"], data["earth_dist"])
    meta = json.loads(str(sparse["meta"]))
    assert meta["dark_frames"] == cube.meta["dark_frames"]
    assert meta["seed"] == 3
    with pytest.raises(ScatterLightError, match="whole frames"):
        preview.sparse_preview(
            source.crop(Region(row=1, column=45, nrows=256, ncols=256)), config, 2
        )
    with pytest.raises(ScatterLightError, match="drop --time-bin"):
        preview.sparse_preview(source, dataclasses.replace(config, time_bin=0.1), 2)


def test_sparse_bins():
    from lk_scatterlight.builder import preview

    bins = preview.sparse_bins(50, 128, seed=1)
    assert bins.shape == (50, 2)
    assert len({tuple(b) for b in bins.tolist()}) == 50
    assert bins.min() >= 0
    assert bins.max() < 16
    assert np.array_equal(bins, preview.sparse_bins(50, 128, seed=1))
    assert not np.array_equal(bins, preview.sparse_bins(50, 128, seed=2))
    assert preview.sparse_bins(256, 128).shape == (256, 2)  # every bin
    with pytest.raises(ScatterLightError, match=r"npix \(--sparse\) must be 1-256"):
        preview.sparse_bins(257, 128)
    with pytest.raises(ScatterLightError, match="divide 2048"):
        preview.sparse_bins(5, 100)


def test_scene_masks(small_build):
    from lk_scatterlight.builder import preview
    from lk_scatterlight.builder.pipeline import make_context
    from lk_scatterlight.builder.straps import strap_mask

    source, config, cube = small_build
    static, dark = preview.dark_frame(source, config, cube.meta["dark_frames"])
    assert [source.frames[k].name for k in dark] == cube.meta["dark_frames"]
    assert static.shape == (2048, 2048)
    scene = preview.scene_masks(static, config)
    stars, bleeds, columns = scene["stars"], scene["bleeds"], scene["columns"]
    assert not (stars & bleeds).any()
    assert not (stars & columns).any()
    assert not (bleeds & columns).any()
    # Together: exactly the pixels the build gives no weight.
    context = make_context(static, config)
    assert np.array_equal(stars | bleeds | columns, context.weights == 0)
    assert bleeds.sum() > 0  # the simulator's saturated stars
    assert (static[bleeds] > 1e5).any()
    assert columns[:, strap_mask()].mean() > 0.5  # strap columns, outside the stars
    assert columns[:, ~strap_mask()].sum() == 0  # no bad columns configured
    with pytest.raises(ScatterLightError, match="not in"):
        preview.dark_frame(source, config, ["nope.fits"])


def _gif_frames(path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.n_frames


@pytest.mark.slow
def test_cli_dataset_plot_and_sparse(tmp_path, capsys, horizons_path):
    from lk_scatterlight.builder import preview

    argv = ["dataset", "--sector", "1", "--camera", "4", "--ccd", "3", "--no-progress"]
    argv += ["--source", "simulate", "10", "--ephemeris", "horizons", str(horizons_path)]
    argv += ["--pixel-bin", "256"]
    out = tmp_path / "sets"
    assert main([*argv, "--out", str(out), "--plot", "--plot-step", "2"]) == 0
    lines = capsys.readouterr().out.split()
    data = dataset.read_dataset(lines[0])
    ntime = data["scatter_cube"].shape[0]
    assert [name.rsplit("_", 1)[-1] for name in lines[1:]] == ["dark.png", "cube.gif", "angles.gif"]
    with open(lines[1], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for gif in lines[2:]:
        assert _gif_frames(gif) == -(-ntime // 2)  # every 2nd plane
    assert sorted(p.name for p in out.iterdir()) == sorted(p.split("/")[-1] for p in lines)
    # The fast preview: a small file and the dark frame; the same seed, the same bins.
    assert main([*argv, "--out", str(out), "--sparse", "5", "--plot"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0].endswith(preview.preview_filename(1, 4, 3, 256, 5))
    assert lines[1].endswith("_n5_dark.png")
    with np.load(lines[0]) as npz:
        assert npz["scatter"].shape == (ntime, 5)
        assert npz["earth_alt"].shape == (ntime, 5)
        assert np.array_equal(npz["bins"], preview.sparse_bins(5, 256, seed=0))
    # Existing figures are not overwritten without --overwrite; --sparse takes no --time-bin.
    assert main([*argv, "--out", str(out), "--sparse", "5", "--plot"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b"), "--sparse", "5", "--time-bin", "2h"]) == 2
    assert "drop --time-bin" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_plot_dark_frame():
    import matplotlib.pyplot as plt

    from lk_scatterlight import plotting

    static = np.full((64, 64), 100.0)
    scene = {"stars": np.zeros((64, 64), bool), "bleeds": np.zeros((64, 64), bool)}
    scene["stars"][10:12, 10:12] = True
    axes = plotting.plot_dark_frame(static, scene)
    assert axes.shape == (2,)
    assert "stars (0.0977 %)" in [t.get_text() for t in axes[1].get_legend().get_texts()]
    _, own = plt.subplots(1, 2)
    assert plotting.plot_dark_frame(static, scene, ax=own)[1] is own[1]
    plt.close("all")
