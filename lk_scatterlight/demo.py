"""The offline demo behind ``lk-scatterlight demo``: the whole chain on simulated data.

1. Simulate full-size FFIs of sector 1 camera 1 CCD 1 (stars, straps, sky,
   scattered light with a known truth, noise, defects under quality flags).
2. Build a compact scattered-light cube from them with the builder.
3. Publish it to a throw-away local registry: a pooch registry file plus an
   HTTP server on 127.0.0.1 standing in for Zenodo.
4. Cut a TESSCut-like TPF (background still in FLUX) from the same field.
5. Correct it with ``tpf.to_corrector("scatterlight")`` with no cube given,
   so the cube is fetched through the registry (hash-checked, cached).
6. Report the scattered light left against the injected truth and write a
   before/after figure.

The frames are the first and last day of the sector (the two perigees, where
the scattered light is strongest) at the 30-minute FFI cadence, so the chain
runs in well under a minute.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import tempfile
import threading
import time as timer
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import simulate
from .ccd import SCIENCE_COLUMNS, SCIENCE_ROWS
from .utils import atomic_write

__all__ = ["run_demo", "DemoResult"]

SHAPE = (15, 15)


@dataclass
class DemoResult:
    """Numbers and output of one demo run (fluxes in e-/s per pixel)."""

    figure: Path
    ncadences: int
    injected_range: float
    model_rms: float
    before_rms: float
    after_rms: float
    lc_before_rms: float
    lc_after_rms: float
    cube_file: str = ""
    corner: tuple[int, int] = (0, 0)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable report."""
        pct = 100 * self.after_rms / self.injected_range
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        return "\n".join(
            [
                f"Simulated FFIs -> cube {self.cube_file} -> local registry -> "
                "tpf.to_corrector('scatterlight').",
                f"TPF: {SHAPE[0]}x{SHAPE[1]} pixels at row {self.corner[0]}, column "
                f"{self.corner[1]}, "
                f"{self.ncadences} FFI cadences, sector 1 camera 1 CCD 1.",
                f"Injected scattered light: range {self.injected_range:.1f} e-/s per pixel "
                "(p1-p99).",
                f"Model vs injected truth on the TPF pixels: RMS {self.model_rms:.3f} e-/s "
                f"({100 * self.model_rms / self.injected_range:.3f}% of the range; per-pixel "
                "constant removed).",
                "Background pixels, scattered light left (RMS over time and pixels):",
                f"  before correction: {self.before_rms:8.2f} e-/s per pixel",
                f"  after correction:  {self.after_rms:8.2f} e-/s per pixel "
                f"({pct:.2f}% of the injected range; photon noise included)",
                "Aperture light curve, RMS about the true stellar flux:",
                f"  before: {self.lc_before_rms:10.1f} e-/s   after: {self.lc_after_rms:8.1f} e-/s",
                f"Timings: {steps}.",
                f"Figure: {self.figure}",
            ]
        )


def _demo_times() -> np.ndarray:
    """Sector 1 at the FFI cadence: 18 h after the first perigee, 12 h in mid-orbit
    (where the darkest frames are) and the 18 h before the last perigee."""
    times = simulate.sector_times(1)
    middle = times[0] + 6.5
    keep = (times < times[0] + 0.75) | (times > times[-1] - 0.75)
    return times[keep | (np.abs(times - middle) < 0.25)]


def _target_corner(simulator: simulate.FFISimulator) -> tuple[int, int]:
    """Lower-left pixel of a TPF centred on a Tmag 10-11.5 star near the CCD centre."""
    stars = simulator.stars
    ok = (stars["tmag"] > 10) & (stars["tmag"] < 11.5)
    ok &= (np.abs(stars["row"] - 1024) < 800) & (np.abs(stars["column"] - 1068) < 800)
    distance = np.hypot(stars["row"] - 1024, stars["column"] - 1068)
    best = np.flatnonzero(ok)[np.argmin(distance[ok])]
    half = SHAPE[0] // 2
    return int(round(stars["row"][best])) - half, int(round(stars["column"][best])) - half


@contextlib.contextmanager
def _local_registry(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
        pass


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_demo(out: str | os.PathLike = "lk_scatterlight_demo.png", seed: int = 42) -> DemoResult:
    """Run the whole chain offline and write the before/after figure to ``out``.

    Returns
    -------
    result : `DemoResult`
    """
    import pooch

    from .builder.pipeline import BuildConfig, build_cube
    from .builder.sources import SimulatedFFISource
    from .registry import cube_filename
    from .registry_file import merge_registry, registry_line

    timings = {}
    start = timer.perf_counter()
    sky_field = simulate.ScatteredLightField(seed=seed)
    simulator = simulate.FFISimulator(sky_field, time=_demo_times(), seed=seed, n_stars=10000)
    with tempfile.TemporaryDirectory(prefix="lk-scatterlight-demo-") as tmp:
        tmp = Path(tmp)
        site = tmp / "zenodo"
        site.mkdir()
        config = BuildConfig(pixel_bin=32, n_candidates=16, n_dark=4)
        cube = build_cube(SimulatedFFISource(simulator), config, out=site, progress=False)
        timings["simulate + build"] = timer.perf_counter() - start

        name = cube_filename(cube.sector, cube.camera, cube.ccd, config.pixel_bin)
        registry = tmp / "registry.txt"
        with _local_registry(site) as url:
            merge_registry(
                registry, [registry_line(name, pooch.file_hash(site / name), f"{url}/{name}")]
            )
            corner = _target_corner(simulator)
            tpf = _cut_tpf(simulator, corner, seed)
            # Injected light of the cadences lightkurve keeps (its default quality mask).
            truth = tpf.hdu["SL_TRUTH"].data[tpf.quality_mask].astype(float)
            step = timer.perf_counter()
            env = {"LK_SCATTERLIGHT_REGISTRY": str(registry), "LK_SCATTERLIGHT_CACHE": str(tmp)}
            with _environment(**env):
                corrector = tpf.to_corrector("scatterlight")  # fetched through the registry
            timings["fetch + correct"] = timer.perf_counter() - step
        lc = corrector.correct()
        corrected_tpf = corrector.correct_tpf()

    row, column = corner
    r0, c0 = row - SCIENCE_ROWS[0], column - SCIENCE_COLUMNS[0]  # 0-based science pixels
    static = simulator.static_scene()[r0 : r0 + SHAPE[0], c0 : c0 + SHAPE[1]]
    background = static <= np.percentile(static, 33)  # the faintest third of the pixels
    flux = tpf.flux.value
    before = flux[:, background] - static[background]
    after = corrected_tpf.flux.value[:, background] - static[background]
    model = corrector.model.flux.value
    residual = model - truth
    residual -= residual.mean(axis=0)  # the cube cannot see the darkest frames' light
    true_star = corrector.original_lc.flux.value - truth[:, corrector.aperture_mask].sum(axis=1)
    true_level = np.median(true_star)
    after_centred = after - np.median(after)
    result = DemoResult(
        figure=Path(out),
        ncadences=len(tpf),
        injected_range=float(np.ptp(np.percentile(truth, [1, 99]))),
        model_rms=float(np.sqrt(np.mean(residual**2))),
        before_rms=float(np.sqrt(np.mean((before - np.median(before)) ** 2))),
        after_rms=float(np.sqrt(np.mean(after_centred**2))),
        lc_before_rms=float(np.sqrt(np.mean((corrector.original_lc.flux.value - true_level) ** 2))),
        lc_after_rms=float(np.sqrt(np.nanmean((lc.flux.value - np.nanmedian(lc.flux.value)) ** 2))),
        cube_file=name,
        corner=corner,
        timings=timings,
    )
    _figure(tpf, corrected_tpf, corrector, background, static, Path(out))
    result.timings["total"] = timer.perf_counter() - start
    return result


def _cut_tpf(simulator: simulate.FFISimulator, corner: tuple[int, int], seed: int):
    """A TESSCut-like TPF of the simulated FFIs' stars, sky and scattered light."""
    row, column = corner
    r0, c0 = row - SCIENCE_ROWS[0], column - SCIENCE_COLUMNS[0]  # 0-based science pixels
    rows = slice(r0, r0 + SHAPE[0])
    columns = slice(c0, c0 + SHAPE[1])
    static = simulator.static_scene()[rows, columns]
    response = simulator.column_response[columns]

    def scattered_light(time, row, column):
        return simulator.field(time, row, column) * response

    return simulate.make_tpf(
        scattered_light,
        row=row,
        column=column,
        shape=SHAPE,
        time=simulator.time,
        static=static,
        quality=simulator.quality,
        seed=seed,
    )


def _figure(tpf, corrected_tpf, corrector, background, static, out: Path) -> None:
    """Before/after light curves, background and images; written atomically."""
    from matplotlib.figure import Figure

    time = tpf.time.value
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    ax.plot(time, corrector.original_lc.flux.value, ".", ms=3, c="0.6", label="original")
    ax.plot(time, corrector.corrected_lc.flux.value, ".", ms=3, c="k", label="corrected")
    ax.set(xlabel="Time [BTJD]", ylabel="Aperture flux [e$^-$/s]", title="Light curve")
    ax.legend()
    ax = axes[0, 1]
    sky = static[background]
    ax.plot(
        time, np.median(tpf.flux.value[:, background] - sky, axis=1), ".", c="0.6", label="before"
    )
    after = np.median(corrected_tpf.flux.value[:, background] - sky, axis=1)
    ax.plot(time, after, ".", c="k", label="after")
    ax.set(
        xlabel="Time [BTJD]",
        ylabel="Background - static sky [e$^-$/s/pixel]",
        title="Median background pixel",
    )
    ax.legend()
    frame = int(np.nanargmax(np.nanmedian(tpf.flux.value[:, background], axis=1)))
    for ax, data, title in (
        (axes[1, 0], tpf.flux.value[frame], "TPF at peak scattered light"),
        (axes[1, 1], corrected_tpf.flux.value[frame], "after correction"),
    ):
        vmin, vmax = np.percentile(tpf.flux.value[frame], [1, 99])
        image = ax.imshow(data, origin="lower", cmap="viridis", vmin=vmin - 100, vmax=vmax)
        fig.colorbar(image, ax=ax, label="e$^-$/s")
        ax.set_title(f"{title}, BTJD {time[frame]:.2f}")
    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=100)
