"""From calibrated FFIs to a `ScatterLightCube`.

The build, for one sector/camera/CCD (`build_cube`):

1. **Frames.** Drop frames that ``bitmask`` (lightkurve's
   ``TessQualityFlags.DEFAULT_BITMASK`` by default) flags; keep frames flagged
   only as stray light.
2. **Static scene.** Read ``n_candidates`` good frames spread evenly over the
   sector, rank them by their median level and take the pixel-wise median of
   the ``n_dark`` darkest: stars plus the steady sky (plus the little scattered
   light of the darkest frames; the cube is the light *above* that level).
3. **Masks.** Stars and saturation bleeds from the static scene, the strap
   columns (TESS Instrument Handbook Table A.3) and any ``bad_columns``.
4. **One streaming pass** over the good frames: subtract the static scene,
   fit a robust local plane in every ``pixel_bin`` bin
   (`~lk_scatterlight.builder.binning.bin_plane_fit`), fill bins without enough
   pixels from their neighbours, remove the curvature bias, and accumulate the
   strap columns' response against their unmasked neighbours. With ``fine_bin``
   (2 px by default), keep the residual against that plane on a finer grid in
   the tiles (32 px by default) where it stands out of the noise: the fine layer, for
   structure narrower than a bin (`lk_scatterlight.builder.fine`). Results go to
   memory-mapped arrays in a work folder, checkpointed every ``chunk`` frames,
   so memory does not grow with the number of frames and an interrupted build
   resumes where it stopped.
5. **Cube.** One plane per good FFI by default; with ``time_bin`` the planes
   are averaged in bins of that duration that never cross a data gap. A compact
   cube of one plane per frame is compressed straight from the memory-mapped
   work area, block by block of frames, so this stage's memory does not grow
   with the number of frames either; so is the fine layer, tile by tile
   (`~lk_scatterlight.builder.fine.assemble_fine`). The cube is written
   atomically and the work folder removed.

Each step is a function of its own, in a module of its own, shared by the
serial build and the Dask build (`lk_scatterlight.builder.distributed`), which
run the same per-frame code and therefore give the same cube:

* `lk_scatterlight.builder.config`: `BuildConfig`, the build parameters;
* `lk_scatterlight.builder.plan`: `plan_build`, frame selection, output path,
  work folder (`~lk_scatterlight.builder.plan.WorkArea`) and resume identity;
  the region of a regional build;
* `lk_scatterlight.builder.scene`: `candidate_frames`, `frame_level`,
  `combine_dark` (`static_scene` serially): the static scene and its dark frames;
* `lk_scatterlight.builder.framepass`: `make_context`, masks and everything the
  per-frame work needs (`FrameContext`); `process_frame` / `process_chunk`,
  per-frame results (`FrameResult`, `ChunkResult`: binned values, errors, pixel
  counts, strap sums);
* `lk_scatterlight.builder.strap_photometry`: the strap columns' response
  against their neighbours;
* `lk_scatterlight.builder.assembly`: `time_planes` / `bin_planes`, planes of
  the cube; `assemble`, the cube and its provenance from the work area;
* `lk_scatterlight.builder.runner`: the serial runner of the stages and
  `~lk_scatterlight.builder.runner.run_build`, which the Dask build shares.

This module holds `build_cube` and re-exports the names above, so
``from lk_scatterlight.builder.pipeline import BuildConfig, build_cube`` keeps working.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..utils import moved_names
from .assembly import assemble, bin_planes, time_planes
from .config import BuildConfig, PlaneBinner
from .framepass import (
    ChunkResult,
    FrameContext,
    FrameResult,
    make_context,
    process_chunk,
    process_frame,
)
from .plan import (
    BuildPlan,
    plan_build,
    region_grid,
    region_tag,
    regional_margin,
    source_region,
)
from .runner import SerialRunner, run_build
from .scene import candidate_frames, combine_dark, frame_level, select_dark, static_scene

if TYPE_CHECKING:  # pragma: no cover
    from ..cube import ScatterLightCube
    from .sources import FFISource

__all__ = [
    "BuildConfig",
    "build_cube",
    "BuildPlan",
    "FrameContext",
    "FrameResult",
    "ChunkResult",
    "plan_build",
    "region_grid",
    "region_tag",
    "regional_margin",
    "source_region",
    "candidate_frames",
    "frame_level",
    "select_dark",
    "combine_dark",
    "static_scene",
    "make_context",
    "process_frame",
    "process_chunk",
    "time_planes",
    "bin_planes",
    "assemble",
    "PlaneBinner",
]


def build_cube(
    source: FFISource,
    config: BuildConfig | None = None,
    out: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    client: Any = None,
) -> ScatterLightCube:
    """Build the scattered-light cube of one sector/camera/CCD from its FFIs.

    Parameters
    ----------
    source : `~lk_scatterlight.builder.sources.FFISource`
        Where the frames come from (tesscube, local files, the simulator).
    config : `BuildConfig`, optional
    out : path-like, optional
        Write the cube here (a folder gets the standard `cube_filename`).
    work_dir : path-like, optional
        Folder for checkpoints; default next to ``out`` (or the current folder).
        Re-running the same build with the same work folder resumes it.
    progress : bool
        Show progress bars.
    overwrite : bool
        Replace an existing output file.
    client : ``distributed.Client``, optional
        Run the frame work as tasks on this Dask cluster
        (`lk_scatterlight.builder.distributed.build_cube_dask` with its
        defaults); the cube is the same as without.

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`

    Raises
    ------
    ScatterLightError
        If no frame is usable.
    """
    config = config or BuildConfig()
    if client is not None:
        from .distributed import build_cube_dask

        return build_cube_dask(
            source,
            config,
            client=client,
            out=out,
            work_dir=work_dir,
            progress=progress,
            overwrite=overwrite,
        )
    plan = plan_build(source, config, out, work_dir, overwrite)
    return run_build(source, config, plan, SerialRunner(), progress)


_static_scene = static_scene  # the names benchmarks and older code use
_time_planes = time_planes

#: Private names that moved with the split of this module: old -> new.
__getattr__ = moved_names(
    __name__,
    {
        "_SerialRunner": "lk_scatterlight.builder.runner.SerialRunner",
        "_run_build": "lk_scatterlight.builder.runner.run_build",
        "_WorkArea": "lk_scatterlight.builder.plan.WorkArea",
        "_strap_columns": "lk_scatterlight.builder.strap_photometry.strap_columns",
        "_strap_geometry": "lk_scatterlight.builder.strap_photometry.strap_geometry",
        "_flatten_straps": "lk_scatterlight.builder.strap_photometry.flatten_straps",
        "_strap_rows": "lk_scatterlight.builder.strap_photometry.strap_rows",
        "_strap_sums": "lk_scatterlight.builder.strap_photometry.strap_sums",
        "_assemble_compact": "lk_scatterlight.builder.assembly._assemble_compact",
    },
)
