"""Checking built cubes and publishing one sector's cubes (``lk-scatterlight publish``).

`verify_cube` and `collect_cubes` check the files without the network;
`publish_cubes` hands them to the shared steps of
`~lk_scatterlight.builder.publish.workflow`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pooch

from ...cube import ScatterLightCube
from ...exceptions import CubeFormatError, PublishError
from ...registry import cube_filename, parse_cube_filename
from ..zenodo import DEFAULT_TIMEOUT, zenodo_url
from .state import state_file
from .workflow import DEFAULT_KEYWORDS, DEFAULT_LICENSE, PublishResult, _metadata, _publish

__all__ = ["CubeFile", "verify_cube", "collect_cubes", "publish_cubes"]


@dataclass(frozen=True)
class CubeFile:
    """A checked cube file, ready to publish.

    Attributes
    ----------
    path : `~pathlib.Path`
        The local file.
    name : str
        The published file name, ``cube_filename(sector, camera, ccd, bin, version)``.
    sector, camera, ccd : int
        What the file holds.
    bin : int
        Pixel bin size [pixel].
    version : int
        Cube format version (primary keyword ``SLFORMAT``).
    size : int
        File size [byte].
    sha256, md5 : str
        Hex digests of the file (`pooch.file_hash`).
    """

    path: Path
    name: str
    sector: int
    camera: int
    ccd: int
    bin: int
    version: int
    size: int
    sha256: str
    md5: str

    @property
    def renamed(self) -> bool:
        """True if the file is published under another name than its local one."""
        return self.path.name != self.name


def verify_cube(path: str | os.PathLike, rename: bool = False) -> CubeFile:
    """Check that a cube file can be published, and hash it.

    Parameters
    ----------
    path : str or path-like
        A cube file written by `~lk_scatterlight.ScatterLightCube.write`.
    rename : bool, optional
        Accept a file whose name is not a published cube file name and publish
        it under its standard name (the local file is not renamed). A file whose
        name is a standard name for *another* sector, camera, CCD, bin or format
        version is always refused.

    Returns
    -------
    cube_file : `CubeFile`

    Raises
    ------
    PublishError
        If the file is missing, unreadable, fails its FITS checksum, holds
        non-finite values, is not in the lk_scatterlight format, or is
        misnamed; the message says what to do.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise PublishError(f"{path} is not a file; give cube files or folders holding them.")
    if path.stat().st_size == 0:
        raise PublishError(f"{path} is empty; rebuild it with `lk-scatterlight build`.")
    try:
        cube = ScatterLightCube.read(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Loading every HDU (len) verifies its CHECKSUM and DATASUM, reading the data
            # through a memory map rather than into memory.
            with fits.open(path, checksum=True, memmap=True) as hdul:
                header = hdul[0].header.copy()
                len(hdul)
        bad_sums = [
            " ".join(str(w.message).split())
            for w in caught
            if "verification failed" in str(w.message).lower()
        ]
        if bad_sums:
            raise PublishError(
                f"{path} fails its FITS checksum ({bad_sums[0]}): the file was modified or "
                "damaged after it was written. Rebuild it with `lk-scatterlight build`."
            )
        problems = _value_problems(cube)
    except CubeFormatError as err:
        raise PublishError(f"{path} cannot be published: {err}") from err
    version = header.get("SLFORMAT")
    if not isinstance(version, int):
        raise PublishError(
            f"{path} is not in the lk_scatterlight cube format (no SLFORMAT keyword; a "
            "tess-backml cube?). Convert it with `ScatterLightCube.read(path).write(new_path)`."
        )
    pixel_bin = cube.pixel_bin
    if pixel_bin < 1 or pixel_bin != round(pixel_bin):
        problems.append(f"the pixel bin {pixel_bin:g} is not a whole number of pixels >= 1")
    if problems:
        raise PublishError(f"{path} cannot be published: " + "; ".join(problems) + ".")
    name = cube_filename(cube.sector, cube.camera, cube.ccd, int(pixel_bin), version)
    holds = (
        f"sector {cube.sector} camera {cube.camera} CCD {cube.ccd}, {int(pixel_bin)}-pixel "
        f"bins, format version {version}"
    )
    if path.name != name:
        try:
            parse_cube_filename(path.name)
        except CubeFormatError:
            if not rename:
                raise PublishError(
                    f"{path.name} is not the standard name of the cube it holds ({holds}); "
                    f"rename it to {name}, or pass --rename (rename=True) to publish it under "
                    "that name."
                ) from None
        else:
            raise PublishError(
                f"{path} is named for another cube than it holds ({holds}, whose name is "
                f"{name}); the file may have been mixed up with another. Check it with "
                f"`lk-scatterlight info {path}` and rebuild or rename it."
            )
    return CubeFile(
        path=path,
        name=name,
        sector=cube.sector,
        camera=cube.camera,
        ccd=cube.ccd,
        bin=int(pixel_bin),
        version=version,
        size=path.stat().st_size,
        sha256=pooch.file_hash(str(path), alg="sha256"),
        md5=pooch.file_hash(str(path), alg="md5"),
    )


def _value_problems(cube: ScatterLightCube) -> list[str]:
    """What is wrong with the values of a cube (all of them are read)."""
    problems = []
    if not np.all(np.isfinite(cube.btjd)):
        problems.append("its times contain NaN or infinity")
    flux, flux_err = cube.flux.value, cube.flux_err.value
    if not np.all(np.isfinite(flux)):
        problems.append(f"its flux has {int(np.sum(~np.isfinite(flux)))} NaN or infinite bins")
    if not np.all(np.isfinite(flux_err)) or np.any(flux_err < 0):
        problems.append("its flux_err has NaN, infinite or negative values")
    if np.any(cube.nframes < 1):
        problems.append("some planes combine no frames (NFRAMES < 1)")
    return problems


def collect_cubes(paths: Iterable[str | os.PathLike], rename: bool = False) -> list[CubeFile]:
    """Check the cube files to publish together (no network).

    Parameters
    ----------
    paths : iterable of str or path-like
        Cube files, or folders whose ``lk-scatterlight_*.fits`` files are taken.
    rename : bool, optional
        See `verify_cube`.

    Returns
    -------
    files : list of `CubeFile`
        Sorted by published name.

    Raises
    ------
    PublishError
        If no file is given, a file fails `verify_cube`, two files would get the
        same name, or the files belong to more than one sector.
    """
    found: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            inside = sorted(item.glob("lk-scatterlight_*.fits"))
            if not inside:
                raise PublishError(
                    f"{item} holds no cube files (lk-scatterlight_*.fits); give the files "
                    "themselves if they are named otherwise."
                )
            found.extend(inside)
        else:
            found.append(item)
    if not found:
        msg = "No cube files given."
        raise PublishError(msg)
    files = [verify_cube(path, rename=rename) for path in dict.fromkeys(found)]
    by_name: dict[str, CubeFile] = {}
    for cube_file in files:
        if cube_file.name in by_name:
            raise PublishError(
                f"{by_name[cube_file.name].path} and {cube_file.path} would both be published "
                f"as {cube_file.name}; give only one of them."
            )
        by_name[cube_file.name] = cube_file
    sectors = sorted({f.sector for f in files})
    if len(sectors) > 1:
        raise PublishError(
            f"The files hold sectors {', '.join(map(str, sectors))}; each sector is one Zenodo "
            "record, so publish each sector separately."
        )
    return sorted(files, key=lambda f: f.name)


def publish_cubes(
    paths: Iterable[str | os.PathLike],
    *,
    upload: bool = False,
    record: int | None = None,
    sandbox: bool = False,
    registry: str | os.PathLike | None = None,
    title: str | None = None,
    creators: Sequence[str] | None = None,
    description: str | None = None,
    license: str = DEFAULT_LICENSE,
    keywords: Sequence[str] = DEFAULT_KEYWORDS,
    version: str | None = None,
    rename: bool = False,
    token: str | None = None,
    site: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> PublishResult:
    """Publish built cubes of one sector on Zenodo and add them to the registry.

    Without ``upload`` this is a dry run: the files are checked and hashed and
    the plan is returned, but nothing is sent or written. See the module
    docstring for the steps, and ``docs/publishing.rst`` for the maintainer's
    guide.

    Parameters
    ----------
    paths : iterable of str or path-like
        Cube files, or folders of ``lk-scatterlight_*.fits`` files, of one sector.
    upload : bool, optional
        Really upload and publish (default False: dry run).
    record : int, optional
        Publish a new version of this Zenodo record instead of a new record.
    sandbox : bool, optional
        Publish on https://sandbox.zenodo.org (trial runs).
    registry : str or path-like, optional
        Registry file to merge the new lines into; default the package's
        ``lk_scatterlight/data/registry.txt``, which is accepted only in a
        source checkout (`default_registry`).
    title : str, optional
        Record title; default "lk_scatterlight scattered-light cubes, sector S".
    creators : sequence of str, optional
        Creators as "Family, Given"; default those of the previous version, or
        "lk_scatterlight developers".
    description : str, optional
        Record description (HTML allowed); default a description of the files.
    license : str, optional
        Zenodo license id.
    keywords : sequence of str, optional
    version : str, optional
        Version label of the record; default the lk_scatterlight version.
    rename : bool, optional
        Publish files that are not named by `~lk_scatterlight.registry.cube_filename`
        under their standard names (see `verify_cube`).
    token : str, optional
        Zenodo token; default the environment variable ``ZENODO_TOKEN``.
    site : str, optional
        Zenodo site URL; default ``LK_SCATTERLIGHT_ZENODO_URL``, else the sandbox
        or zenodo.org (`zenodo_url`).
    timeout : float, optional
        Timeout of each request [s].

    Returns
    -------
    result : `PublishResult`

    Raises
    ------
    PublishError
        If a file cannot be published (before anything is sent), the token is
        missing or rejected, Zenodo refuses a request or keeps failing, or an
        uploaded file does not match its checksum. Progress is kept in the state
        file, and running the same call again resumes.

    Examples
    --------
    >>> result = publish_cubes(["cubes/"], sandbox=True)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    >>> publish_cubes(["cubes/"], sandbox=True, upload=True)  # doctest: +SKIP
    """
    from ... import __version__

    files = collect_cubes(paths, rename=rename)
    sector = files[0].sector
    metadata = _metadata(
        title or f"lk_scatterlight scattered-light cubes, sector {sector}",
        description or _description(files, __version__),
        license,
        keywords,
        version or __version__,
        creators,
        record,
    )
    return _publish(
        files,
        metadata,
        state_file(files),
        {"sector": sector},
        upload=upload,
        record=record,
        site=zenodo_url(sandbox, site),
        registry=registry,
        token=token,
        timeout=timeout,
    )


def _description(files: Sequence[CubeFile], package_version: str) -> str:
    ccds = ", ".join(f"camera {f.camera} CCD {f.ccd} ({f.bin}-pixel bins)" for f in files)
    return (
        f"<p>Scattered-light cubes of TESS sector {files[0].sector} for the lk_scatterlight "
        "lightkurve plugin: the time-variable scattered-light background (Earth and Moon "
        "glow) of each CCD, measured from the full-frame images on a coarse grid of time "
        "planes, row bins and column bins, with its uncertainty, in electron/s per pixel.</p>"
        f"<p>Files: {ccds}; cube format version {files[0].version}. Published with "
        f"lk_scatterlight {package_version}.</p>"
        "<p>Use: <code>lk_scatterlight.load_cube(sector, camera, ccd)</code> downloads and "
        "checks the file; <code>tpf.to_corrector('scatterlight')</code> corrects a target "
        "pixel file.</p>"
    )
