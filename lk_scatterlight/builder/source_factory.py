"""Frame sources from a short description, as ``--source`` gives them on the command line.

``["tesscube"]`` is MAST's FFI cubes on AWS
(`~lk_scatterlight.builder.tesscube_source.TessCubeSource`), ``["local", PATH]``
SPOC ``*ffic.fits`` files on disk (`~lk_scatterlight.builder.sources.LocalFFISource`;
``{sector}``, ``{camera}`` and ``{ccd}`` in PATH are filled in) and
``["simulate"]`` or ``["simulate", NFRAMES]`` synthetic frames
(`~lk_scatterlight.builder.sources.SimulatedFFISource`). `make_source` looks the
kind up in `SOURCE_KINDS` (name -> factory), so a new kind is one more entry.
The modules of each kind are imported only when it is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..exceptions import ScatterLightError

if TYPE_CHECKING:  # pragma: no cover
    from .sources import FFISource

__all__ = ["make_source", "SOURCE_KINDS", "SourceSpecError"]

log = logging.getLogger(__name__)


class SourceSpecError(ScatterLightError):
    """A source description that cannot work (a usage error on the command line)."""


def _local(args: Sequence[str], sector: int, camera: int, ccd: int) -> FFISource:
    from .sources import LocalFFISource

    if len(args) != 1:
        msg = "--source local needs one PATH (folder, glob or file)."
        raise ScatterLightError(msg)
    try:
        path = args[0].format(sector=sector, camera=camera, ccd=ccd)
    except (KeyError, IndexError, ValueError) as err:
        msg = (
            f"--source local {args[0]!r}: only {{sector}}, {{camera}} and {{ccd}} can be "
            f"filled in ({err})."
        )
        raise ScatterLightError(msg) from err
    source = LocalFFISource(path)
    found = (source.sector, source.camera, source.ccd)
    if found != (sector, camera, ccd):
        msg = (
            "The files in {} are sector {} camera {} CCD {}, not sector {} camera {} "
            "CCD {}.".format(path, *found, sector, camera, ccd)
        )
        raise ScatterLightError(msg)
    return source


def _tesscube(args: Sequence[str], sector: int, camera: int, ccd: int) -> FFISource:
    from .tesscube_source import TessCubeSource

    return TessCubeSource(sector, camera, ccd)


def _simulate(args: Sequence[str], sector: int, camera: int, ccd: int) -> FFISource:
    from .. import simulate
    from .sources import SimulatedFFISource

    if len(args) > 1:
        msg = f"--source simulate takes one NFRAMES at most, got {' '.join(args)!r}."
        raise SourceSpecError(msg)
    nframes = None
    if args:
        nframes = int(args[0]) if args[0].isdigit() else 0
        if nframes < 1:
            msg = f"--source simulate NFRAMES must be a whole number >= 1, got {args[0]!r}."
            raise SourceSpecError(msg)
    time = simulate.sector_times(sector)[:nframes]
    simulator = simulate.FFISimulator(
        simulate.ScatteredLightField(), sector=sector, camera=camera, ccd=ccd, time=time
    )
    return SimulatedFFISource(simulator)


#: Source kinds: name -> ``factory(args, sector, camera, ccd)``.
SOURCE_KINDS: dict[str, Callable[[Sequence[str], int, int, int], FFISource]] = {
    "local": _local,
    "tesscube": _tesscube,
    "simulate": _simulate,
}


def make_source(kind: Sequence[str], sector: int, camera: int, ccd: int) -> FFISource:
    """The frame source a description names, for one sector/camera/CCD.

    Parameters
    ----------
    kind : sequence of str
        The kind and its arguments: ``["tesscube"]``, ``["local", PATH]`` or
        ``["simulate"]`` / ``["simulate", NFRAMES]``. ``{sector}``, ``{camera}`` and
        ``{ccd}`` in a local PATH are replaced by the target's numbers
        (e.g. ``ffis/s{sector:04d}/{camera}-{ccd}/``).
    sector, camera, ccd : int

    Returns
    -------
    source : `~lk_scatterlight.builder.sources.FFISource`

    Raises
    ------
    SourceSpecError
        If the arguments of ``simulate`` do not fit (a usage error).
    ScatterLightError
        For an unknown kind, a local PATH without files of this CCD, or a
        PATH template that cannot be filled in.
    """
    name, args = kind[0], list(kind[1:])
    factory = SOURCE_KINDS.get(name)
    if factory is None:
        raise ScatterLightError(f"Unknown --source {name!r}: use tesscube, local PATH or simulate.")
    return factory(args, sector, camera, ccd)
