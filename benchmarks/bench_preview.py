"""Benchmark ``lk-scatterlight dataset --sparse N`` against the dense training set.

Both run on the same simulated FFIs of sector 1 camera 4 CCD 3 (``FFISimulator``
with the default `~lk_scatterlight.simulate.ScatteredLightField`, frames spread
over the sector), generated once and held in memory so that frame generation
is not timed. For each, the CPU time (``time.process_time``, this process;
median of ``--repeat`` runs) of:

* **dense**: `~lk_scatterlight.builder.pipeline.build_cube` with the settings
  ``lk-scatterlight dataset`` uses by default (16-px bins, no fine layer: the
  training set keeps the binned planes; ``--fine-layer`` times the builder's
  default 2-px layer as well), then
  `~lk_scatterlight.builder.dataset.make_dataset` (geometry maps of all
  128 x 128 bins) and ``write_dataset``;
* **sparse**: `~lk_scatterlight.builder.preview.sparse_preview` of ``--npix``
  bins (same bins, same estimator, geometry at their centres) and
  ``write_preview``.

It prints both medians, their ratio and the file sizes. The real JPL Horizons
table of ``../shared/data`` provides the ephemeris (the script stops with a
message if it is absent). Frames are read whole by both, so with a source that
reads from disk or network the ratio is smaller than here.

Run: ``python benchmarks/bench_preview.py [--frames 24] [--npix 500] [--repeat 3]``
(about 2-3 minutes and 1 GB on 2 cores). Prints numbers; asserts nothing.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lk_scatterlight import geometry, simulate
from lk_scatterlight.builder import dataset, preview
from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
from lk_scatterlight.builder.sources import FFISource, SimulatedFFISource

HORIZONS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "horizons_tess_ssb_2018-06-01_to_2018-12-31.csv"
)


class MemorySource(FFISource):
    """The frames of another source, read once and kept in memory."""

    def __init__(self, source: FFISource):
        super().__init__(
            source.sector, source.camera, source.ccd, source.frames, source.description
        )
        self._frames = [source.read(i) for i in range(len(source))]

    def read(self, index: int):
        flux, err = self._frames[self._check_index(index)]
        return flux.copy(), err.copy()


def cpu(func, repeat: int):
    """Median CPU time [s] of ``func()`` and its last result."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        result = func()
        times.append(time.process_time() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--npix", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--fine-layer",
        action="store_true",
        help="build the dense cube with the builder's default fine layer (dataset --fine-bin 2)",
    )
    args = parser.parse_args()
    if not HORIZONS.is_file():
        sys.exit(f"needs the JPL Horizons table {HORIZONS}")
    ephemeris = geometry.HorizonsEphemeris.read(HORIZONS)
    pointing = geometry.CCDPointing.from_sector(1, 4, 3)
    times = simulate.sector_times(1)
    pick = np.linspace(30, times.size - 1, args.frames).astype(int)
    simulator = simulate.FFISimulator(
        simulate.ScatteredLightField(), sector=1, camera=4, ccd=3, time=times[pick]
    )
    source = MemorySource(SimulatedFFISource(simulator))
    sparse_config = BuildConfig(n_candidates=min(40, args.frames), prefetch=1, fine_bin=0)
    config = (
        BuildConfig(n_candidates=min(40, args.frames), prefetch=1)
        if args.fine_layer
        else sparse_config
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def dense():
            cube = build_cube(source, config, progress=False)
            data = dataset.make_dataset(cube, ephemeris, pointing)
            return dataset.write_dataset(data, folder / "dense.npz", overwrite=True)

        def sparse():
            data = preview.sparse_preview(source, sparse_config, args.npix, ephemeris, pointing)
            return preview.write_preview(data, folder / "sparse.npz", overwrite=True)

        t_dense, dense_path = cpu(dense, args.repeat)
        t_sparse, sparse_path = cpu(sparse, args.repeat)
        size_dense = dense_path.stat().st_size / 1e6
        size_sparse = sparse_path.stat().st_size / 1e6
    print(f"{args.frames} simulated frames in memory, sector 1 camera 4 CCD 3")
    layer = "2-px fine layer" if args.fine_layer else "no fine layer"
    print(
        f"dense dataset (128 x 128 bins, {layer}): CPU median {t_dense:.1f} s, "
        f"file {size_dense:.1f} MB"
    )
    print(
        f"sparse preview ({args.npix} bins): CPU median {t_sparse:.1f} s, file {size_sparse:.2f} MB"
    )
    print(
        f"ratio dense / sparse: CPU {t_dense / t_sparse:.1f}x, file {size_dense / size_sparse:.0f}x"
    )


if __name__ == "__main__":
    main()
