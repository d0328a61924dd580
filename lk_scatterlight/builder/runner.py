"""Running the stages of a planned build: in this process or through a runner.

`run_build` loads or computes the static scene, streams the frames that are
not done yet through the runner, assembles and writes the cube and removes the
work area. `SerialRunner` runs the stages here; the Dask build
(`lk_scatterlight.builder.distributed.DaskRunner`) passes its own runner to the
same `run_build`, which is why both give the same cube.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cube import ScatterLightCube
from .assembly import assemble, bin_planes
from .config import BuildConfig
from .framepass import FrameContext, make_context, process_frame
from .plan import BuildPlan, WorkArea
from .scene import static_scene

if TYPE_CHECKING:  # pragma: no cover
    from .sources import FFISource


__all__ = [
    "SerialRunner",
    "run_build",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- drivers
class SerialRunner:
    """Runs the stages in this process (the default of `build_cube`)."""

    def static_scene(
        self, source: FFISource, good: np.ndarray, config: BuildConfig, progress: bool
    ) -> tuple[np.ndarray, list[int]]:
        return static_scene(source, good, config, progress)

    def process(
        self,
        source: FFISource,
        todo: list[int],
        context: FrameContext,
        dark: Sequence[int],
        work: WorkArea,
        config: BuildConfig,
        bar: Any,
    ) -> None:
        """One streaming pass with read-ahead; a checkpoint every ``config.chunk`` frames."""
        processed = 0
        try:
            for info, flux, flux_err in source.iter_read(todo, prefetch=config.prefetch):
                work.store(info.index, process_frame(flux, context, flux_err))
                processed += 1
                bar.update()
                if processed % config.chunk == 0:
                    work.flush()
        finally:
            work.flush()

    bin_planes = staticmethod(bin_planes)

    def close(self) -> None:
        pass


def run_build(
    source: FFISource,
    config: BuildConfig,
    plan: BuildPlan,
    runner: Any,
    progress: bool,
) -> ScatterLightCube:
    """Run a planned build's stages with ``runner`` (serial or Dask); write the cube."""
    from tqdm.auto import tqdm

    work = plan.open_work()
    static = work.load_or_none("static")
    dark = work.load_or_none("dark")
    if static is None or dark is None:
        static, dark_list = runner.static_scene(source, plan.good, config, progress)
        dark = np.asarray(dark_list)
        work.save("static", static)
        work.save("dark", dark)
    context = make_context(static, config, plan.region)

    good = plan.good
    todo = [int(i) for i in np.flatnonzero(good & ~work["done"])]
    log.info(
        "%s: %d frames, %d good, %d left to process",
        plan.description,
        len(plan.frames),
        int(good.sum()),
        len(todo),
    )
    bar = tqdm(
        total=int(good.sum()),
        initial=int(good.sum()) - len(todo),
        desc=f"s{plan.sector:04d} {plan.camera}-{plan.ccd}",
        unit="frame",
        disable=not progress,
    )
    with bar:
        runner.process(source, todo, context, dark, work, config, bar)

    cube = assemble(plan, config, work, context, dark, binner=runner.bin_planes)
    if plan.out_path is not None:
        cube.write(plan.out_path, overwrite=plan.overwrite)
        log.info("Wrote %s", plan.out_path)
    work.remove()
    return cube
