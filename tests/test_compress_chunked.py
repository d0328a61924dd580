"""Compression streamed in blocks of planes (``lowrank.compress_planes`` over ``lowrank.Planes``):
equal to the exact SVD and the in-memory path, independent of the block size, and
used by a compact build straight from its memory-mapped work area."""

import numpy as np
import pytest
from cube_helpers import make_cube

from lk_scatterlight import CubeFormatError, ScatterLightCube, simulate
from lk_scatterlight.builder import assembly, pipeline
from lk_scatterlight.builder.pipeline import BuildConfig
from lk_scatterlight.builder.runner import SerialRunner
from lk_scatterlight.builder.sources import SimulatedFFISource
from lk_scatterlight.lowrank import Planes, compress_planes, is_file_map

NT, NB = 520, 48  # 1.2 M values: above the size where the exact SVD is used


def signal_cube(nt=NT, nb=NB, rank=6, seed=1):
    """A smooth rank-``rank`` signal plus noise whose size varies in time and space."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, nt)
    y, x = np.mgrid[0:nb, 0:nb] / nb
    images = [np.cos(np.pi * (i + 1) * x) * np.cos(np.pi * (i % 3) * y) for i in range(rank)]
    series = [np.sin(2 * np.pi * (i + 1) * t + i) for i in range(rank)]
    amplitude = 20 * 0.5 ** np.arange(rank)
    flux = 60 + 10 * x + np.einsum("i,it,irc->trc", amplitude, series, images)
    err = 0.05 * (1 + 0.5 * t)[:, None, None] * (1 + y)[None]
    flux = flux + rng.normal(size=flux.shape) * err
    return flux.astype(np.float32), err.astype(np.float32)


def reconstruct(lowrank):
    return lowrank.flux_coef @ lowrank.flux_comp.reshape(lowrank.flux_comp.shape[0], -1)


def exact_rank(flux, err, tolerance=0.01, max_rank=64):
    """The documented rank rule applied to an exact (LAPACK) SVD."""
    nt = flux.shape[0]
    x = flux.reshape(nt, -1).astype(float)
    x -= x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    noise_bin = np.mean(err.reshape(nt, -1).astype(float) ** 2, axis=0)
    centred_bin = np.mean(x**2, axis=0)
    target = (1 + tolerance) * np.sqrt(noise_bin.mean())
    allowed = (1 + max(0.5, 5 / np.sqrt(2 * nt))) ** 2 * noise_bin
    for k in range(min(max_rank, nt - 1) + 1):
        residual = np.sqrt(max(0.0, np.mean(x**2) - np.sum(s[:k] ** 2) / x.size))
        kept_bin = np.sum((s[:k, None] * vt[:k]) ** 2, axis=0) / nt
        if residual <= target and np.all(centred_bin - kept_bin <= allowed):
            return k
    return min(max_rank, nt - 1)


@pytest.fixture(scope="module")
def cube_arrays():
    return signal_cube()


@pytest.fixture(scope="module")
def work_file(cube_arrays, tmp_path_factory):
    """The cube in .npy files laid out like a work area: every third frame is unused
    (NaN, which the compression must never read)."""
    flux, err = cube_arrays
    folder = tmp_path_factory.mktemp("work")
    total = flux.shape[0] + flux.shape[0] // 2
    used = np.flatnonzero(np.arange(total) % 3 != 2)[: flux.shape[0]]
    for name, data in (("value", flux), ("error", err)):
        array = np.lib.format.open_memmap(
            folder / f"{name}.npy", "w+", np.float32, (total,) + data.shape[1:]
        )
        array[:] = np.nan
        array[used] = data
        array.flush()
        del array
    return folder, used


def open_planes(work_file, chunk=None):
    folder, used = work_file
    value = np.load(folder / "value.npy", mmap_mode="r")
    error = np.load(folder / "error.npy", mmap_mode="r")
    return Planes(value, used, chunk), Planes(error, used, chunk)


@pytest.mark.slow
def test_chunked_compression_matches_the_exact_svd(cube_arrays):
    flux, err = cube_arrays
    lowrank = compress_planes(Planes(flux, chunk=64), Planes(err, chunk=64), 0.01, 64)
    k = exact_rank(flux, err)
    assert lowrank.rank == k > 2
    # Against the exact rank-k truncation: the same to a small fraction of the noise.
    x = flux.reshape(NT, -1).astype(float)
    mean = x.mean(axis=0)
    u, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    exact = mean + (u[:, :k] * s[:k]) @ vt[:k]
    diff = np.abs(reconstruct(lowrank) - exact) / err.reshape(NT, -1)
    assert diff.max() < 0.05
    info = lowrank.info
    assert info.residual_rms <= 1.01 * info.noise_rms
    assert info.noise_rms == pytest.approx(np.sqrt(np.mean(err.astype(float) ** 2)), rel=1e-6)
    assert info.err_model_max < 1e-5  # the errors are exactly rank 1


@pytest.mark.slow
def test_memmap_planes_equal_the_in_memory_compress(cube_arrays, work_file):
    flux, err = cube_arrays
    dense = make_cube(NT, NB, NB, flux=flux, flux_err=err)
    memory = dense.compress()._lowrank
    mapped = compress_planes(*open_planes(work_file), 0.01, 64)
    assert mapped.rank == memory.rank
    assert np.abs(reconstruct(mapped) - reconstruct(memory)).max() < 1e-3 * err.min()
    np.testing.assert_allclose(mapped.err_scale, memory.err_scale, rtol=1e-5)
    np.testing.assert_allclose(tuple(mapped.info), tuple(memory.info), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "chunk",
    [pytest.param(1, marks=pytest.mark.slow), pytest.param(7, marks=pytest.mark.slow), 1000],
)
def test_block_size_changes_only_rounding(work_file, chunk):
    reference = compress_planes(*open_planes(work_file, chunk=100), 0.01, 64)
    other = compress_planes(*open_planes(work_file, chunk=chunk), 0.01, 64)
    assert other.rank == reference.rank
    # float32 factors: differences at the level of float32 rounding of the flux (~60 e-/s)
    assert np.abs(reconstruct(other) - reconstruct(reference)).max() < 1e-4
    np.testing.assert_allclose(other.mean, reference.mean, rtol=1e-6)
    np.testing.assert_allclose(tuple(other.info), tuple(reference.info), rtol=1e-5, atol=1e-5)


def test_planes_read_the_file_not_the_mapping(work_file):
    planes, _ = open_planes(work_file, chunk=10)
    assert is_file_map(planes.array)
    folder, used = work_file
    direct = np.load(folder / "value.npy")[used]
    np.testing.assert_array_equal(
        np.concatenate([b for _, b in planes.blocks()]).ravel(), direct.ravel()
    )


def test_bad_values_in_used_planes_are_reported(work_file):
    planes, errors = open_planes(work_file)
    first = Planes(planes.array, np.arange(errors.ntime))  # includes unused (NaN) frames
    with pytest.raises(CubeFormatError, match="NaN or infinite"):
        compress_planes(first, errors, 0.01, 64)
    with pytest.raises(IndexError):
        Planes(planes.array, [planes.array.shape[0]])


# ---------------------------------------------------------------------- in the builder
class _NoBar:
    def update(self, n=1):
        pass


@pytest.fixture(scope="module")
def finished_work(tmp_path_factory):
    """The work area of a small build whose streaming pass is done (not assembled)."""
    times = simulate.sector_times(1)[:10]
    sim = simulate.FFISimulator(simulate.ScatteredLightField(seed=5), time=times, seed=5)
    source = SimulatedFFISource(sim)
    config = BuildConfig(pixel_bin=64, n_candidates=8, n_dark=3)
    plan = pipeline.plan_build(source, config, work_dir=tmp_path_factory.mktemp("w") / "w")
    work = plan.open_work()
    static, dark = pipeline.static_scene(source, plan.good, config, False)
    context = pipeline.make_context(static, config)
    todo = [int(i) for i in np.flatnonzero(plan.good)]
    SerialRunner().process(source, todo, context, dark, work, config, _NoBar())
    return plan, config, work, context, dark


@pytest.mark.slow
def test_compact_build_compresses_from_the_memory_map(finished_work, monkeypatch):
    plan, config, work, context, dark = finished_work
    dense = pipeline.assemble(
        plan, BuildConfig(**{**vars(config), "compact": False}), work, context, dark
    )
    expected = dense.compress(tolerance=config.compact_tolerance)
    seen = []

    def spy(flux, flux_err, tolerance, max_rank, exclude=None):
        seen.append((is_file_map(flux.array), is_file_map(flux_err.array)))
        return compress_planes(flux, flux_err, tolerance, max_rank, exclude)

    def refuse(*args, **kwargs):
        raise AssertionError("the compact build must not make a dense cube")

    monkeypatch.setattr(assembly, "compress_planes", spy)
    monkeypatch.setattr(ScatterLightCube, "compress", refuse)
    monkeypatch.setattr(ScatterLightCube, "from_arrays", refuse)
    cube = pipeline.assemble(plan, config, work, context, dark)
    assert seen == [(True, True)]
    assert cube.is_compact
    assert cube.rank == expected.rank
    np.testing.assert_allclose(cube.flux, expected.flux, rtol=0, atol=1e-3 * dense.flux_err.min())
    np.testing.assert_allclose(cube.flux_err, expected.flux_err, rtol=1e-5)
    for name in ("btjd", "time_start", "time_stop", "row", "column", "npix", "nframes"):
        np.testing.assert_array_equal(getattr(cube, name), getattr(dense, name))
    np.testing.assert_array_equal(cube.strap_response, dense.strap_response)
    # Identical provenance apart from the build time stamp (the builds ran apart).
    assert {k: v for k, v in cube.meta.items() if k != "built"} == {
        k: v for k, v in dense.meta.items() if k != "built"
    }
