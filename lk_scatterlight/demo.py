"""The offline demo behind ``lk-scatterlight demo``: the whole chain on simulated data.

1. **simulate**: a sector of FFIs of sector 1 camera 1 CCD 1 at the 30-minute
   cadence (stars, straps, sky, scattered light with a known truth, noise,
   defects under quality flags), and a TESSCut-like TPF (background still in
   FLUX) of a star near the CCD centre.
2. **build**: a scattered-light cube of the TPF's neighbourhood with the real
   builder, a regional build (`lk_scatterlight.ondemand.tpf_build_region`):
   the simulator generates only that region of each frame, so no full-size
   FFI is made or written and the build takes seconds.
3. **publish**: the cube goes to a throw-away local registry, a pooch registry
   file plus an HTTP server on 127.0.0.1 standing in for Zenodo.
4. **fetch**: ``tpf.to_corrector("scatterlight")`` with no cube given finds
   the cube through that registry and downloads it (hash-checked, cached).
5. **correct**: the corrected light curve and TPF.
6. **figure**: the scattered light left against the injected truth and a
   before/after figure (`plot_demo`).

The cube models the light *above its darkest frames* (the builder's static
scene is their median), not the static sky: a corrected background keeps the
light of those frames as a constant floor. The demo measures the model against
the injected light above the same frames, and reports the floor.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import tempfile
import threading
import time as timer
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import simulate
from .ccd import SCIENCE_COLUMNS, SCIENCE_ROWS
from .utils import atomic_write

__all__ = ["run_demo", "DemoResult", "plot_demo"]

SHAPE = (15, 15)
#: Pixel bin of the demo's cube [px]: 32 px bins resolve the simulated field's
#: smooth gradients to ~0.003 % of their range over time (16-px bins: ~0.1 %).
PIXEL_BIN = 32


@dataclass
class DemoResult:
    """Numbers and output of one demo run (fluxes in e-/s per pixel unless stated).

    Attributes
    ----------
    figure : `~pathlib.Path`
    ncadences : int
        Cadences of the light curve (lightkurve's default quality mask).
    injected_range : float
        p1-p99 range of the injected scattered light on the TPF.
    model_rms : float
        RMS over the TPF's pixels and cadences of the cube's model minus the
        injected light above the cube's darkest frames, each pixel's mean
        difference removed: what changes the light curve's shape.
    model_offset : float
        Mean of that difference: the cube's level error (its static scene is
        the median of a few noisy dark frames).
    floor : float
        Median injected light of the darkest frames on the TPF's pixels: what
        a corrected background keeps.
    before_rms, after_rms : float
        RMS about their median of background pixels minus the static scene,
        before and after correction (photon noise included).
    lc_before_rms : float
        Aperture light curve [e-/s]: RMS of the original about the true stellar flux.
    lc_after_rms : float
        Aperture light curve [e-/s]: RMS of the corrected one about its median.
    lc_offset : float
        Median corrected minus true stellar flux of the aperture [e-/s]: the
        floor summed over the aperture.
    aperture_pixels : int
    cube_file : str
    region : str
        The pixels the cube was built from.
    corner : (int, int)
        Row and column of the TPF's lower-left pixel (1-based CCD pixels).
    timings : dict of str to float
        Wall time of each step [s].
    """

    figure: Path
    ncadences: int
    injected_range: float
    model_rms: float
    model_offset: float
    floor: float
    before_rms: float
    after_rms: float
    lc_before_rms: float
    lc_after_rms: float
    lc_offset: float
    aperture_pixels: int
    cube_file: str
    region: str
    corner: tuple[int, int]
    timings: dict[str, float]

    def summary(self) -> str:
        """Human-readable report."""
        pct = 100 * self.after_rms / self.injected_range
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        return "\n".join(
            [
                f"Simulated FFIs -> regional cube {self.cube_file} -> local registry -> "
                "tpf.to_corrector('scatterlight').",
                f"TPF: {SHAPE[0]}x{SHAPE[1]} pixels at row {self.corner[0]}, column "
                f"{self.corner[1]}, {self.ncadences} FFI cadences, sector 1 camera 1 CCD 1; "
                f"cube built from {self.region}.",
                f"Injected scattered light: range {self.injected_range:.1f} e-/s per pixel "
                "(p1-p99).",
                f"Model vs injected light above the cube's darkest frames: RMS "
                f"{self.model_rms:.3f} e-/s ({100 * self.model_rms / self.injected_range:.3f}% "
                f"of the range) over time, level off by {self.model_offset:+.2f} e-/s.",
                "Background pixels, scattered light left (RMS over time and pixels):",
                f"  before correction: {self.before_rms:8.2f} e-/s per pixel",
                f"  after correction:  {self.after_rms:8.2f} e-/s per pixel "
                f"({pct:.2f}% of the injected range; photon noise included)",
                f"  plus a constant floor of {self.floor:.1f} e-/s per pixel: the light of "
                "the darkest frames, which the cube does not model.",
                "Aperture light curve:",
                f"  before: RMS {self.lc_before_rms:8.1f} e-/s about the true stellar flux",
                f"  after:  RMS {self.lc_after_rms:8.1f} e-/s about its median, which is "
                f"{self.lc_offset:+.0f} e-/s off the true stellar flux (the floor)",
                f"Timings: {steps}.",
                f"Figure: {self.figure}",
            ]
        )


class _Clock:
    """Times the demo's steps and reports one line as each ends."""

    def __init__(self, report: Callable[[str], None] | None):
        self.report = report or (lambda line: None)
        self.timings: dict[str, float] = {}
        self.start = self._last = timer.perf_counter()

    def lap(self, step: str, what: str) -> None:
        now = timer.perf_counter()
        self.timings[step] = now - self._last
        self._last = now
        self.report(f"{step:<9}{self.timings[step]:5.1f} s  {what}")

    def total(self) -> float:
        return timer.perf_counter() - self.start


def run_demo(
    out: str | os.PathLike = "lk_scatterlight_demo.png",
    seed: int = 42,
    *,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole chain offline and write the before/after figure to ``out``.

    Parameters
    ----------
    out : path-like
        PNG to write (atomically).
    seed : int
        Seeds the simulated sky, stars and noise.
    progress : bool
        Show the builder's progress bars (tqdm, on stderr).
    report : callable, optional
        Called with one line per step (its name, wall time and what it did)
        as the step ends; the CLI writes them to stderr.

    Returns
    -------
    result : `DemoResult`
    """
    import pooch

    from .builder.pipeline import BuildConfig, build_cube
    from .builder.sources import SimulatedFFISource
    from .ccd import Region
    from .ondemand import tpf_build_region
    from .registry import cube_filename
    from .registry_file import merge_registry, registry_line

    clock = _Clock(report)
    simulator = simulate.FFISimulator(
        simulate.ScatteredLightField(seed=seed), seed=seed, n_stars=10000
    )
    corner = _target_corner(simulator)
    tpf = _cut_tpf(simulator, corner, seed)
    clock.lap(
        "simulate",
        f"{len(simulator)} FFIs of sector 1 camera 1 CCD 1 (30-min cadence) and a "
        f"{SHAPE[0]}x{SHAPE[1]} TPF at row {corner[0]}, column {corner[1]}",
    )

    config = BuildConfig(pixel_bin=PIXEL_BIN)
    region = tpf_build_region(Region(*corner, *SHAPE), config)
    with tempfile.TemporaryDirectory(prefix="lk-scatterlight-demo-") as tmp:
        tmp = Path(tmp)
        site = tmp / "zenodo"
        site.mkdir()
        name = cube_filename(simulator.sector, simulator.camera, simulator.ccd, PIXEL_BIN)
        build_cube(
            SimulatedFFISource(simulator, region),
            config,
            out=site / name,
            work_dir=tmp / "work",
            progress=progress,
        )
        clock.lap("build", f"cube {name} from {region}, {PIXEL_BIN}-px bins")

        registry = tmp / "registry.txt"
        with _local_registry(site) as url:
            merge_registry(
                registry, [registry_line(name, pooch.file_hash(site / name), f"{url}/{name}")]
            )
            clock.lap("publish", f"registry {registry.name} -> {url}/{name}")
            env = {"LK_SCATTERLIGHT_REGISTRY": str(registry), "LK_SCATTERLIGHT_CACHE": str(tmp)}
            with _environment(**env):
                # Fetched through the registry.
                corrector = tpf.to_corrector("scatterlight", progress=progress)
            clock.lap("fetch", "tpf.to_corrector('scatterlight'): cube from the registry")
        lc = corrector.correct()
        corrected_tpf = corrector.correct_tpf()
        npix = int(corrector.aperture_mask.sum())
        clock.lap("correct", f"{len(lc)} cadences, {npix}-pixel aperture")

    dark_light = _dark_light(simulator, tpf, corrector)
    numbers = _measure(simulator, tpf, corrector, corrected_tpf, corner, dark_light)
    with atomic_write(out) as part:
        plot_demo(tpf, corrector, dark_light).savefig(part, dpi=100)
    clock.lap("figure", str(out))
    return DemoResult(
        figure=Path(out),
        cube_file=name,
        region=str(region),
        corner=corner,
        timings=dict(clock.timings, total=clock.total()),
        **numbers,
    )


def _dark_light(simulator: simulate.FFISimulator, tpf, corrector) -> np.ndarray:
    """Injected light of the cube's darkest frames on the TPF's pixels, shape (nrow, ncol).

    The builder's static scene is the median of those frames, so the cube
    models the light above this level.
    """
    names = [simulator.filename(i) for i in range(len(simulator))]
    dark = [names.index(n) for n in corrector.cube.meta["dark_frames"]]
    truth = tpf.hdu["SL_TRUTH"].data  # all the simulator's frames, quality mask not applied
    return np.median(truth[dark].astype(float), axis=0)


def _measure(simulator, tpf, corrector, corrected_tpf, corner, dark_light) -> dict:
    """The demo's numbers against the injected truth (`DemoResult`'s fields)."""
    row, column = corner
    r0, c0 = row - SCIENCE_ROWS[0], column - SCIENCE_COLUMNS[0]  # 0-based science pixels
    static = simulator.static_scene()[r0 : r0 + SHAPE[0], c0 : c0 + SHAPE[1]]
    background = static <= np.percentile(static, 33)  # the faintest third of the pixels
    # Injected light of the cadences lightkurve keeps (its default quality mask).
    truth = tpf.hdu["SL_TRUTH"].data[tpf.quality_mask].astype(float)
    difference = corrector.model.flux.value - (truth - dark_light)
    offset = difference.mean(axis=0)
    before = tpf.flux.value[:, background] - static[background]
    after = corrected_tpf.flux.value[:, background] - static[background]
    aperture = corrector.aperture_mask
    original, corrected = corrector.original_lc.flux.value, corrector.corrected_lc.flux.value
    true_star = original - truth[:, aperture].sum(axis=1)
    return dict(
        ncadences=len(original),
        injected_range=float(np.ptp(np.percentile(truth, [1, 99]))),
        model_rms=float(np.sqrt(np.mean((difference - offset) ** 2))),
        model_offset=float(offset.mean()),
        floor=float(np.median(dark_light)),
        before_rms=_rms_about_median(before),
        after_rms=_rms_about_median(after),
        lc_before_rms=float(np.sqrt(np.mean((original - np.median(true_star)) ** 2))),
        lc_after_rms=_rms_about_median(corrected),
        lc_offset=float(np.nanmedian(corrected - true_star)),
        aperture_pixels=int(aperture.sum()),
    )


def _rms_about_median(values: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean((values - np.nanmedian(values)) ** 2)))


def _target_corner(simulator: simulate.FFISimulator) -> tuple[int, int]:
    """Lower-left pixel of a TPF centred on a Tmag 10-11.5 star near the CCD centre."""
    stars = simulator.stars
    ok = (stars["tmag"] > 10) & (stars["tmag"] < 11.5)
    ok &= (np.abs(stars["row"] - 1024) < 800) & (np.abs(stars["column"] - 1068) < 800)
    distance = np.hypot(stars["row"] - 1024, stars["column"] - 1068)
    best = np.flatnonzero(ok)[np.argmin(distance[ok])]
    half = SHAPE[0] // 2
    return int(round(stars["row"][best])) - half, int(round(stars["column"][best])) - half


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


def plot_demo(tpf, corrector, dark_light: np.ndarray):
    """The demo's figure: a scattered-light ramp before/after with the truth, and images.

    Parameters
    ----------
    tpf : `lightkurve.TessTargetPixelFile`
        The simulated TPF, with the injected light in its ``SL_TRUTH`` extension.
    corrector : `~lk_scatterlight.ScatterLightCorrector`
        After `~lk_scatterlight.ScatterLightCorrector.correct`.
    dark_light : ndarray, shape (nrow, ncol)
        Injected light of the cube's darkest frames [e-/s per pixel].

    Returns
    -------
    figure : `matplotlib.figure.Figure`
        Top: the light curve over the sector and a zoom on its strongest ramp;
        bottom: TPF, model, injected light and TPF - model at that cadence.
    """
    from matplotlib.figure import Figure

    truth = tpf.hdu["SL_TRUTH"].data[tpf.quality_mask].astype(float)
    model = corrector.model.flux.value
    strong = int(np.nanargmax(np.nanmedian(model, axis=(1, 2))))
    fig = Figure(figsize=(15, 10), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.15, 1])
    _plot_light_curves(top, tpf.time.value, corrector, truth, strong)
    _plot_images(bottom, tpf, corrector, truth, dark_light, strong)
    return fig


def _plot_light_curves(subfigure, time, corrector, truth, strong: int) -> None:
    """The sector's light curve and a zoom on the ramp around cadence ``strong``."""
    from .plotting import plot_recovery

    aperture = corrector.aperture_mask
    original = corrector.original_lc.flux.value
    corrected = corrector.corrected_lc.flux.value
    true_flux = original - truth[:, aperture].sum(axis=1)
    floor = float(np.median(corrected - true_flux))
    window = _ramp_window(time, strong)
    grid = subfigure.add_gridspec(2, 2, width_ratios=[1, 1.35], height_ratios=[3, 1])
    overview = subfigure.add_subplot(grid[:, 0])
    zoom = subfigure.add_subplot(grid[0, 1])
    error = subfigure.add_subplot(grid[1, 1], sharex=zoom)
    overview.plot(time, original, ".", ms=2, c="0.6", label="original")
    overview.plot(time, corrected, ".", ms=2, c="k", label="corrected")
    overview.axvspan(*window, color="C3", alpha=0.12, lw=0, label="zoom")
    overview.set(
        xlabel="Time [BTJD]",
        ylabel="Aperture flux [e$^-$/s]",
        title=f"Sector 1, {aperture.sum()}-pixel aperture",
    )
    overview.legend(loc="upper center", fontsize="small")
    plot_recovery(
        time, original, corrected, true_flux, floor=floor, window=window, ax=[zoom, error]
    )
    zoom.set(title="One scattered-light ramp, with the injected truth", xlabel="")
    zoom.tick_params(labelbottom=False)
    zoom.annotate(
        f"the floor: {aperture.sum()} pixels x {floor / aperture.sum():.1f} e$^-$/s, the light "
        "of the cube's\ndarkest frames, which it does not model (it models the light above them)",
        xy=(window[1], float(np.median(true_flux)) + floor),
        xytext=(0.98, 0.35),
        textcoords="axes fraction",
        ha="right",
        fontsize="small",
        arrowprops={"arrowstyle": "->", "color": "C3"},
    )


def _plot_images(subfigure, tpf, corrector, truth, dark_light, strong: int) -> None:
    """TPF, model, injected light above the darkest frames and TPF - model at ``strong``."""
    from .plotting import plot_model_images

    flux = tpf.flux.value[strong]
    model = corrector.model.flux.value[strong]
    injected = truth[strong] - dark_light
    images = subfigure.subplots(1, 4)
    plot_model_images(flux, model, ax=images[[0, 1, 3]])
    shown = images[2].imshow(injected, origin="lower", cmap="viridis")
    subfigure.colorbar(shown, ax=images[2], label="e$^-$/s")
    both = np.concatenate([model.ravel(), injected.ravel()])
    for image in (images[1].images[0], shown):  # one scale for model and injected light
        image.set_clim(both.min(), both.max())
    for ax in images[[0, 3]]:  # the data's scale, from zero
        ax.images[0].set_clim(0.0, float(np.nanpercentile(flux, 95)))
    titles = ("TPF", "cube model", "injected light above\nthe darkest frames", "TPF $-$ model")
    for ax, title in zip(images, titles, strict=True):
        ax.set_title(title, fontsize="medium")
    outside = ~corrector.aperture_mask
    subfigure.suptitle(
        f"BTJD {tpf.time.value[strong]:.3f}, the cadence of strongest scattered light"
    )
    subfigure.supxlabel(
        "TPF and TPF $-$ model share a colour scale, model and injected light another. "
        f"Outside the aperture the background drops from {np.median(flux[outside]):.0f} to "
        f"{np.median((flux - model)[outside]):.0f} e$^-$/s per pixel:\nwhat is left is the "
        f"static sky, faint stars and the {np.median(dark_light):.1f} e$^-$/s of the darkest "
        "frames, which the cube does not model.",
        fontsize="medium",
    )


def _ramp_window(time: np.ndarray, peak: int, before: float = 0.5, after: float = 1.5):
    """BTJD range of the ramp around cadence ``peak``, within its run of contiguous cadences."""
    gaps = np.flatnonzero(np.diff(time) > 0.5)
    start = time[0] if not np.any(gaps < peak) else time[gaps[gaps < peak][-1] + 1]
    stop = time[-1] if not np.any(gaps >= peak) else time[gaps[gaps >= peak][0]]
    return max(start, time[peak] - before), min(stop, time[peak] + after)
