"""Publishing built cubes on Zenodo and adding them to the cube registry.

The maintainer's last step after ``lk-scatterlight build`` (`publish_cubes`,
``lk-scatterlight publish``):

1. **Check the files** (no network): each is read with
   `~lk_scatterlight.ScatterLightCube.read`, its FITS checksums and values are
   checked (finite flux, finite non-negative uncertainty) and its sector,
   camera, CCD, pixel bin and format version must give its file name
   (`~lk_scatterlight.registry.cube_filename`); a file with another name is
   refused, or with ``rename=True`` uploaded under its standard name. All files
   must belong to one sector: one Zenodo record per sector.
2. **Dry run** (the default): report the files, their sizes and SHA256
   hashes, the target deposition and the registry lines that would be
   written. Nothing is sent anywhere and nothing is written.
3. **Upload** (``upload=True``): create a Zenodo deposition, or a new version
   of an existing record (``record=ID``), upload each file to the
   deposition's bucket and compare the MD5 checksum Zenodo reports with the
   local one, set the metadata and publish.
4. **Registry**: only after the publish call succeeded, one line
   ``name sha256:HASH https://zenodo.org/records/ID/files/name?download=1``
   per verified file is merged into the registry file (default: the
   package's ``lk_scatterlight/data/registry.txt`` in a source checkout).

Progress is kept in a state file next to the cubes
(``.lk-scatterlight-publish-s<SSSS>.json``), so a failed run is resumed by
running the same command again: the same draft deposition is used, files the
bucket already holds with the right checksum are not uploaded again, and the
record is published once.

The Zenodo token is read from the environment variable ``ZENODO_TOKEN``
(never from the command line). ``sandbox=True`` targets
https://sandbox.zenodo.org; ``LK_SCATTERLIGHT_ZENODO_URL`` replaces the site
URL altogether (tests, mirrors of the API).

A learned model file (``lk-scatterlight train``) goes the same way with
`publish_model` (``lk-scatterlight publish-model MODEL NAME``): it is checked
(`verify_model`: read as a model, never unpickled), uploaded under the name
`~lk_scatterlight.registry.model_filename` gives, with its training data and
validation in the record's description, and its registry line is merged after
the record is published, so that ``ScatterLightModel.load(name)`` fetches it.
A registry entry of another file under the same name is replaced only with
``replace=True``. A model uploaded by other means is added to the registry
with `register_model`.

The REST client is `lk_scatterlight.builder.zenodo` and the registry file
(where it is, its lines, merging) `lk_scatterlight.registry_file`; their names
are re-exported here.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pooch

from ..cube import ScatterLightCube
from ..exceptions import CubeFormatError, PublishError
from ..registry import cube_filename, model_filename, parse_cube_filename
from ..registry_file import default_registry, merge_registry, registry_entry, registry_line
from ..utils import write_text_atomic
from .zenodo import (
    DEFAULT_TIMEOUT,
    MAX_RETRIES,
    SANDBOX_URL,
    TOKEN_ENV,
    ZENODO_URL,
    ZENODO_URL_ENV,
    ZenodoClient,
    ZenodoHTTPError,
    md5_hex,
    record_file_url,
    user_agent,
    zenodo_url,
)

__all__ = [
    "publish_cubes",
    "publish_model",
    "register_model",
    "verify_model",
    "model_state_file",
    "ModelFile",
    "collect_cubes",
    "verify_cube",
    "merge_registry",
    "registry_line",
    "record_file_url",
    "zenodo_url",
    "user_agent",
    "default_registry",
    "state_file",
    "CubeFile",
    "PublishResult",
    "ZenodoClient",
    "ZENODO_URL",
    "SANDBOX_URL",
    "TOKEN_ENV",
    "ZENODO_URL_ENV",
    "DEFAULT_TIMEOUT",
    "MAX_RETRIES",
]

log = logging.getLogger(__name__)

#: Uploads of one file before a checksum mismatch is an error.
UPLOAD_ATTEMPTS = 2
#: Default license of the records (Zenodo license id).
DEFAULT_LICENSE = "cc-by-4.0"
#: Default keywords of the records.
DEFAULT_KEYWORDS = ("TESS", "scattered light", "lightkurve", "lk_scatterlight", "photometry")
#: Default creator when none is given and none is inherited from a previous version.
DEFAULT_CREATOR = "lk_scatterlight developers"
#: Default keywords of a model's record.
DEFAULT_MODEL_KEYWORDS = (*DEFAULT_KEYWORDS, "machine learning")

_STATE_SCHEMA = 1
_RECORD_PLACEHOLDER = "<record>"


# ---------------------------------------------------------------------- files
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


# ---------------------------------------------------------------------- URLs, registry, state
def state_file(files: Sequence[CubeFile]) -> Path:
    """The state file of a publication: ``.lk-scatterlight-publish-s<SSSS>.json``
    in the folder of the first cube file."""
    return files[0].path.resolve().parent / f".lk-scatterlight-publish-s{files[0].sector:04d}.json"


def _load_state(path: Path, site: str, record: int | None) -> dict | None:
    """The unfinished publication to resume, None to start afresh."""
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        schema, state_site = state["schema"], state["site"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PublishError(
            f"The publish state file {path} cannot be read ({err}); delete it to start afresh "
            "(an unfinished draft it names stays on Zenodo: discard it on the website)."
        ) from err
    if schema != _STATE_SCHEMA:
        raise PublishError(f"{path} has state schema {schema!r}, expected {_STATE_SCHEMA}.")
    if state.get("complete"):
        if record is None and state_site == site:
            raise PublishError(
                f"{_subject(state)} was already published as record "
                f"{state['record_id']} on {site} ({path}). To publish a new version of it, "
                f"pass --record {state['record_id']} (record={state['record_id']}); to create "
                "an unrelated new record, delete the state file."
            )
        return None  # done; a new version, or another server, starts afresh
    if state_site != site:
        raise PublishError(
            f"{path} holds an unfinished upload to {state_site} (draft deposition "
            f"{state.get('deposition_id')}), not {site}. Finish it by rerunning against "
            f"{state_site}, or delete the state file (and discard that draft on the website)."
        )
    if state.get("record") != record:
        started = (
            f"a new version of record {state['record']}"
            if state.get("record")
            else "a new deposition"
        )
        flag = f" with --record {state['record']}" if state.get("record") else " without --record"
        raise PublishError(
            f"{path} holds an unfinished upload of {started} (draft deposition "
            f"{state.get('deposition_id')}); rerun{flag} to finish it, or delete the state "
            "file (and discard that draft on the website)."
        )
    return state


def _subject(state: dict) -> str:
    """What a state file's publication holds, in words ("Sector 2", "Model 's1-25'")."""
    return f"Model {state['model']!r}" if "model" in state else f"Sector {state['sector']}"


def _save_state(path: Path, state: dict) -> None:
    write_text_atomic(path, json.dumps(state, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------- the publication
@dataclass
class PublishResult:
    """What `publish_cubes` or `publish_model` did, or with ``dry_run`` would do.

    Attributes
    ----------
    files : list of `CubeFile` or `ModelFile`
        The checked files.
    site : str
        Zenodo site (`zenodo_url`).
    target : str
        The deposition, in words ("a new deposition", "a new version of record
        123", "draft deposition 456 (resumed)").
    metadata : dict
        The Zenodo metadata set (for a new version, merged into the inherited one).
    registry : `~pathlib.Path`
        The registry file written (or to be written).
    registry_note : str
        Why this registry file (e.g. the default of a source checkout).
    registry_lines : list of str
        Lines written; in a dry run, with ``<record>`` for an unknown record id.
    state_file : `~pathlib.Path`
        The state file that lets a failed run resume.
    dry_run : bool
        True if nothing was sent or written.
    deposition_id, record_id : int or None
        The deposition used and the published record.
    doi : str or None
        The record's DOI.
    uploaded, skipped : list of str
        Files uploaded in this run, and files the deposition already held.
    """

    files: list[CubeFile]
    site: str
    target: str
    metadata: dict
    registry: Path
    registry_note: str
    registry_lines: list[str]
    state_file: Path
    dry_run: bool = True
    deposition_id: int | None = None
    record_id: int | None = None
    doi: str | None = None
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The report printed by ``lk-scatterlight publish``."""
        lines = []
        if self.dry_run:
            lines.append("Dry run: nothing is uploaded or written (add --upload to publish).")
        lines.append(f"Zenodo:      {self.site}")
        lines.append(f"Deposition:  {self.target}")
        lines.append(f"Title:       {self.metadata.get('title')}")
        creators = "; ".join(c.get("name", "") for c in self.metadata.get("creators", []))
        lines.append(f"Creators:    {creators or '(inherited from the previous version)'}")
        lines.append(f"Files ({len(self.files)}):")
        for f in self.files:
            origin = f"  (local file {f.path})" if f.renamed else ""
            lines.append(f"  {f.name}  {_size(f.size)}  sha256:{f.sha256}{origin}")
        if not self.dry_run:
            lines.append(
                f"Uploaded {len(self.uploaded)} file(s), {len(self.skipped)} already in the "
                "deposition."
            )
            doi = f", DOI {self.doi}" if self.doi else ""
            lines.append(f"Published:   record {self.record_id}{doi}")
            lines.append(f"             {self.site}/records/{self.record_id}")
        lines.append(f"Registry:    {self.registry} ({self.registry_note})")
        lines.append("Registry lines" + (" to write:" if self.dry_run else " written:"))
        lines.extend(f"  {line}" for line in self.registry_lines)
        lines.append(f"State file:  {self.state_file}")
        return "\n".join(lines)


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
    from .. import __version__

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


def _metadata(title, description, license, keywords, version, creators, record) -> dict:
    """Zenodo metadata of a record; creators default to the developers (new records only)."""
    metadata = {
        "upload_type": "dataset",
        "title": title,
        "description": description,
        "license": license,
        "keywords": list(keywords),
        "version": version,
        "publication_date": datetime.date.today().isoformat(),
    }
    if creators:
        metadata["creators"] = [{"name": name} for name in creators]
    elif record is None:
        metadata["creators"] = [{"name": DEFAULT_CREATOR}]
    return metadata


def _publish(
    files: Sequence[CubeFile | ModelFile],
    metadata: dict,
    state_path: Path,
    subject: dict,
    *,
    upload: bool,
    record: int | None,
    site: str,
    registry: str | os.PathLike | None,
    token: str | None,
    timeout: float,
) -> PublishResult:
    """The steps `publish_cubes` and `publish_model` share, once their files are checked.

    ``subject`` (``{"sector": 2}`` or ``{"model": "s1-25"}``) is recorded in the
    state file and names what was published in its messages.
    """
    if record is not None:
        record = int(record)
    registry_path, note, writable = _registry_target(registry)
    state = _load_state(state_path, site, record)
    if state is not None and sorted(state.get("files", {})) != [f.name for f in files]:
        raise PublishError(
            f"{state_path} holds an unfinished upload of {', '.join(sorted(state['files']))}, "
            f"not of {', '.join(f.name for f in files)}. Rerun with the same files to finish "
            "it, or delete the state file (and discard its draft on the website)."
        )
    if state is not None:
        target = f"draft deposition {state['deposition_id']} (resumed from {state_path.name})"
    elif record is not None:
        target = f"a new version of record {record}"
    else:
        target = "a new deposition"
    known = state.get("record_id") if state else None
    result = PublishResult(
        files=list(files),
        site=site,
        target=target,
        metadata=metadata,
        registry=registry_path,
        registry_note=note,
        registry_lines=[
            registry_line(
                f.name, f.sha256, record_file_url(site, known or _RECORD_PLACEHOLDER, f.name)
            )
            for f in files
        ],
        state_file=state_path,
        dry_run=not upload,
    )
    if not upload:
        log.info("Dry run: %d file(s) to %s on %s", len(files), target, site)
        return result
    if not writable:
        raise PublishError(
            f"lk_scatterlight at {registry_path.parents[1]} is an installed copy, not a source "
            "checkout: its registry would be overwritten by the next installation. Give the "
            "registry file to update with --registry PATH (registry=...)."
        )
    token = token if token is not None else os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise PublishError(
            f"No Zenodo token: set the environment variable {TOKEN_ENV} to a personal access "
            f"token with the deposit:write and deposit:actions scopes (made at {site}/account/"
            "settings/applications/)."
        )
    with ZenodoClient(site, token, timeout=timeout) as client:
        try:
            _run(client, result, state, state_path, record, subject)
        except PublishError as err:
            if state_path.exists():
                raise PublishError(
                    f"{err} Progress is kept in {state_path}; run the same command again to resume."
                ) from err
            raise
    return result


def _run(
    client: ZenodoClient,
    result: PublishResult,
    state: dict | None,
    state_path: Path,
    record,
    subject: dict,
) -> None:
    """The network part of `_publish`; updates ``result`` and the state file."""
    files = result.files
    if state is not None:
        try:
            deposition = client.get_deposition(state["deposition_id"])
            log.info("Resuming draft deposition %s from %s", deposition.get("id"), state_path)
        except ZenodoHTTPError as err:
            if err.status != 404:
                raise
            log.warning(
                "Draft deposition %s of %s no longer exists on %s; starting afresh",
                state["deposition_id"],
                state_path,
                result.site,
            )
            state = None
    if state is None:
        if record is not None:
            result.target = f"a new version of record {record}"
            deposition = client.new_version(record)
            log.info("Draft deposition %s is a new version of record %s", deposition["id"], record)
        else:
            result.target = "a new deposition"
            deposition = client.create_deposition()
            log.info("Created draft deposition %s", deposition["id"])
        state = {
            "schema": _STATE_SCHEMA,
            "site": result.site,
            **subject,
            "record": record,
            "deposition_id": deposition["id"],
            "files": {
                f.name: {"path": str(f.path), "size": f.size, "sha256": f.sha256, "md5": f.md5}
                for f in files
            },
            "verified": [],
            "published": False,
            "complete": False,
        }
        _save_state(state_path, state)
    result.deposition_id = deposition["id"]
    if not _is_published(deposition):
        in_bucket = client.bucket_files(deposition)
        for f in files:
            state["files"][f.name].update(sha256=f.sha256, md5=f.md5, size=f.size)
            if in_bucket.get(f.name) == f.md5:
                log.info("%s is already in the deposition (checksum matches): skipped", f.name)
                result.skipped.append(f.name)
            else:
                if f.name in in_bucket:  # an older file of the same name (previous version)
                    log.info("Replacing the older %s in the draft", f.name)
                    client.delete_file(deposition, f.name)
                _upload(client, deposition, f)
                result.uploaded.append(f.name)
            state["verified"] = sorted(set(state["verified"]) | {f.name})
            _save_state(state_path, state)
        in_bucket = client.bucket_files(deposition)
        wrong = [f.name for f in files if in_bucket.get(f.name) != f.md5]
        if wrong:
            state["verified"] = sorted(set(state["verified"]) - set(wrong))
            _save_state(state_path, state)
            raise PublishError(
                f"The deposition's file listing does not show {', '.join(wrong)} with the "
                "uploaded checksum; nothing was published."
            )
        metadata = {**deposition.get("metadata", {}), **result.metadata}
        if not metadata.get("creators"):
            metadata["creators"] = [{"name": DEFAULT_CREATOR}]
        answer = client.set_metadata(deposition["id"], metadata)
        result.metadata = answer.get("metadata", metadata)
        try:
            deposition = client.publish(deposition["id"])
        except PublishError:
            # The publish may have gone through although its answer was lost.
            deposition = client.get_deposition(deposition["id"])
            if not _is_published(deposition):
                raise
        log.info("Published deposition %s", deposition["id"])
    result.record_id = int(deposition.get("record_id") or deposition["id"])
    result.doi = deposition.get("doi") or None
    state.update(published=True, record_id=result.record_id, doi=result.doi)
    _save_state(state_path, state)
    # Registry lines only for files Zenodo holds with the right checksum.
    published = _deposition_files(deposition)
    verified = set(state["verified"])
    good = [
        f
        for f in files
        if f.name in verified and (published is None or published.get(f.name) == f.md5)
    ]
    result.registry_lines = [
        registry_line(f.name, f.sha256, record_file_url(result.site, result.record_id, f.name))
        for f in good
    ]
    if good:
        merge_registry(result.registry, result.registry_lines)
        log.info("Wrote %d line(s) to %s", len(good), result.registry)
    missing = [f.name for f in files if f not in good]
    if missing:
        raise PublishError(
            f"Record {result.record_id} was published, but Zenodo does not list "
            f"{', '.join(missing)} with the uploaded checksum, so no registry line was written "
            "for them. Check the record on the website and publish a new version."
        )
    state["complete"] = True
    _save_state(state_path, state)


# ---------------------------------------------------------------------- learned models
@dataclass(frozen=True)
class ModelFile:
    """A checked learned-model file, ready to publish (`verify_model`).

    Attributes
    ----------
    path : `~pathlib.Path`
        The local file.
    name : str
        The published file name, ``model_filename(model_name, version)``.
    model_name : str
        The name users load it by (``ScatterLightModel.load(model_name)``).
    version : int
        Model format version (`~lk_scatterlight.model.MODEL_VERSION`).
    meta : dict
        The model's metadata: training data, validation (``docs/model.rst``).
    size : int
        File size [byte].
    sha256, md5 : str
        Hex digests of the file (`pooch.file_hash`).
    """

    path: Path
    name: str
    model_name: str
    version: int
    meta: dict
    size: int
    sha256: str
    md5: str

    @property
    def renamed(self) -> bool:
        """True if the file is published under another name than its local one."""
        return self.path.name != self.name


def verify_model(path: str | os.PathLike, name: str) -> ModelFile:
    """Check that a learned model file can be published under ``name``, and hash it.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` written by ``lk-scatterlight train`` (never unpickled).
    name : str
        The name users will load it by (`~lk_scatterlight.registry.is_model_name`).

    Returns
    -------
    model_file : `ModelFile`

    Raises
    ------
    PublishError
        If the file is missing, empty or not a model of this package's format
        version, or the name is invalid; the message says what to do.
    """
    from ..model import MODEL_VERSION, ModelFormatError, ScatterLightModel

    try:
        filename = model_filename(name, MODEL_VERSION)
    except ValueError as err:
        raise PublishError(str(err)) from err
    path = Path(path)
    if not path.is_file():
        msg = f"{path} is not a file; give the .npz written by `lk-scatterlight train`."
        raise PublishError(msg)
    if path.stat().st_size == 0:
        msg = f"{path} is empty; train the model again with `lk-scatterlight train`."
        raise PublishError(msg)
    try:
        model = ScatterLightModel.load(path)  # a Path: read, never looked up as a name
    except ModelFormatError as err:
        raise PublishError(f"{path} cannot be published: {err}") from err
    return ModelFile(
        path=path,
        name=filename,
        model_name=name,
        version=MODEL_VERSION,
        meta=model.meta,
        size=path.stat().st_size,
        sha256=pooch.file_hash(str(path), alg="sha256"),
        md5=pooch.file_hash(str(path), alg="md5"),
    )


def model_state_file(model_file: ModelFile) -> Path:
    """The state file of a model's publication, next to the model file."""
    folder = model_file.path.resolve().parent
    return folder / f".lk-scatterlight-publish-model-{model_file.model_name}.json"


def publish_model(
    path: str | os.PathLike,
    name: str,
    *,
    upload: bool = False,
    record: int | None = None,
    sandbox: bool = False,
    registry: str | os.PathLike | None = None,
    replace: bool = False,
    title: str | None = None,
    creators: Sequence[str] | None = None,
    description: str | None = None,
    license: str = DEFAULT_LICENSE,
    keywords: Sequence[str] = DEFAULT_MODEL_KEYWORDS,
    version: str | None = None,
    token: str | None = None,
    site: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> PublishResult:
    """Publish a learned model on Zenodo and add it to the registry (``publish-model``).

    The cube publication's steps (`publish_cubes`): a dry run by default; with
    ``upload`` a Zenodo deposition (or a new version of ``record``) receives
    the file under ``model_filename(name, MODEL_VERSION)``, its MD5 is checked,
    the record is published, and only then is the registry line merged
    (atomically), after which ``ScatterLightModel.load(name)`` downloads it,
    hash-checked. The record's description gives the model's training data and
    validation from its metadata. A failed run resumes from the state file
    `model_state_file`.

    Parameters
    ----------
    path : str or path-like
        The model file (``.npz`` written by ``lk-scatterlight train``).
    name : str
        The name users load it by, e.g. ``"s1-25"``; ``"default"`` is reserved.
    upload : bool, optional
        Really upload and publish (default False: dry run).
    record : int, optional
        Publish a new version of this Zenodo record.
    sandbox : bool, optional
        Publish on https://sandbox.zenodo.org.
    registry : str or path-like, optional
        Registry file to update; default the package's, in a source checkout only.
    replace : bool, optional
        Allow replacing a registry entry of the same name and format version
        that points to another file (refused otherwise, before anything is sent).
    title, creators, description, license, keywords, version : optional
        Record metadata, as for `publish_cubes`; the title defaults to
        "lk_scatterlight scattered-light model 'NAME'", the description to the
        model's training data and validation.
    token : str, optional
        Zenodo token; default the environment variable ``ZENODO_TOKEN``.
    site : str, optional
        Zenodo site URL (see `zenodo_url`).
    timeout : float, optional
        Timeout of each request [s].

    Returns
    -------
    result : `PublishResult`

    Raises
    ------
    PublishError
        If the file is not a model or the name is invalid, the registry already
        lists another file under that name (without ``replace``), the token is
        missing or rejected, or Zenodo refuses or keeps failing.

    Examples
    --------
    >>> print(publish_model("model.npz", "s1-25", sandbox=True).summary())  # doctest: +SKIP
    >>> publish_model("model.npz", "s1-25", sandbox=True, upload=True)  # doctest: +SKIP
    """
    from .. import __version__

    model_file = verify_model(path, name)
    registry_path = _registry_target(registry)[0]
    existing = registry_entry(registry_path, model_file.name) if registry_path.is_file() else None
    if (
        existing is not None
        and existing.split()[1] != f"sha256:{model_file.sha256}"
        and not replace
    ):
        raise PublishError(
            f"The registry {registry_path} already lists model {name!r} as another file "
            f"({existing}); pass replace=True (--replace) to replace it with {model_file.path}, "
            "or choose another name."
        )
    metadata = _metadata(
        title or f"lk_scatterlight scattered-light model {name!r}",
        description or _model_description(model_file, __version__),
        license,
        keywords,
        version or __version__,
        creators,
        record,
    )
    return _publish(
        [model_file],
        metadata,
        model_state_file(model_file),
        {"model": name},
        upload=upload,
        record=record,
        site=zenodo_url(sandbox, site),
        registry=registry,
        token=token,
        timeout=timeout,
    )


def _model_description(model_file: ModelFile, package_version: str) -> str:
    """The record description: what the model is, its training data and validation."""
    meta = model_file.meta
    kinds = Counter(s.get("kind", "?") for s in meta.get("sources", []))
    sources = ", ".join(f"{n} {_KIND_WORDS.get(k, k)}" for k, n in sorted(kinds.items()))
    parts = [
        f"<p>A learned model of TESS scattered light for the lk_scatterlight lightkurve plugin "
        f"(model format version {model_file.version}): the scattered light [e-/s per pixel] of "
        "any pixel at any time from the Earth's and the Moon's geometry, as plain arrays of "
        "regression trees in a .npz file (no pickles; numpy evaluates it).</p>"
    ]
    training = [
        f"sectors {', '.join(map(str, meta['sectors']))}" if meta.get("sectors") else "",
        f"cameras {', '.join(map(str, meta['cameras']))}" if meta.get("cameras") else "",
        sources,
        f"{meta['n_samples']:,} samples" if meta.get("n_samples") else "",
        f"seed {meta['seed']}" if "seed" in meta else "",
        str(meta.get("library", "")),
    ]
    if any(training):
        parts.append(f"<p>Training data: {'; '.join(t for t in training if t)}.</p>")
    validation = meta.get("validation")
    if validation:
        n = len(validation.get("light_curves", []))
        parts.append(
            f"<p>Validation ({validation.get('method', '')}, {n} light curves): median RMS "
            f"{validation.get('median_percent', float('nan')):.2f} % of each light curve's "
            "background range (per-orbit quadratic in time: "
            f"{validation.get('median_quadratic_percent', float('nan')):.2f} %); relative "
            f"error {validation.get('relative_error', float('nan')):.3f}.</p>"
        )
    else:
        parts.append("<p>Validation: none stored in the file.</p>")
    parts.append(
        f"<p>Published with lk_scatterlight {package_version}. Use: "
        f"<code>ScatterLightModel.load('{model_file.model_name}')</code> downloads and checks "
        f"the file; <code>tpf.to_corrector('scatterlight', model='{model_file.model_name}')"
        "</code> corrects a target pixel file. The file's <code>meta</code> array holds the "
        "complete training record (JSON).</p>"
    )
    return "".join(parts)


#: How `_model_description` names the kinds of training sources.
_KIND_WORDS = {"lightcurve": "SPOC light curves", "dataset": "cube training sets"}


def register_model(
    path: str | os.PathLike,
    name: str,
    *,
    url: str | None = None,
    record: int | None = None,
    sandbox: bool = False,
    site: str | None = None,
    registry: str | os.PathLike | None = None,
) -> str:
    """Check a learned model file and merge its registry line into the registry.

    The file must already be downloadable at its URL: upload it to a Zenodo
    record under the name ``model_filename(name, MODEL_VERSION)`` first (the URL is then
    derived from ``record``), or give the URL of any other host with ``url``.
    The line, ``<file name> sha256:<hash> <url>``, is merged through
    `~lk_scatterlight.registry_file.merge_registry` (atomic; a line for the
    same file name is replaced), after which ``ScatterLightModel.load(name)``
    downloads and uses the model.

    Parameters
    ----------
    path : str or path-like
        The model file (``.npz`` written by ``lk-scatterlight train``).
    name : str
        The name users load it by (`~lk_scatterlight.registry.is_model_name`),
        e.g. ``"s1-25"``; ``"default"`` is reserved for the shipped model.
    url : str, optional
        Download URL of the published file.
    record : int, optional
        Zenodo record holding the file; the URL becomes
        ``<site>/records/<record>/files/<file name>?download=1``.
    sandbox : bool, optional
        With ``record``: a record of https://sandbox.zenodo.org.
    site : str, optional
        With ``record``: the Zenodo site (default as `zenodo_url`).
    registry : str or path-like, optional
        Registry file to update; default the package's
        ``lk_scatterlight/data/registry.txt``, accepted only in a source
        checkout (`default_registry`).

    Returns
    -------
    line : str
        The registry line written.

    Raises
    ------
    PublishError
        If the file is missing or not a readable model, the name is invalid,
        not exactly one of ``url`` and ``record`` is given, or the default
        registry belongs to an installed copy.

    Examples
    --------
    >>> register_model("model.npz", "s1-25", record=1234567)  # doctest: +SKIP
    'lk-scatterlight-model_s1-25_v1.npz sha256:... https://zenodo.org/records/1234567/...'
    """
    if (url is None) == (record is None):
        msg = "Give exactly one of url= (where the model file is published) and record= (Zenodo)."
        raise PublishError(msg)
    model_file = verify_model(path, name)
    if url is None:
        url = record_file_url(zenodo_url(sandbox, site), int(record), model_file.name)
    registry_path, _, writable = _registry_target(registry)
    if not writable:
        raise PublishError(
            f"lk_scatterlight at {registry_path.parents[1]} is an installed copy, not a source "
            "checkout: its registry would be overwritten by the next installation. Give the "
            "registry file to update with registry=PATH."
        )
    line = registry_line(model_file.name, model_file.sha256, url)
    merge_registry(registry_path, [line])
    log.info("Wrote the registry line of model %r to %s", name, registry_path)
    return line


def _upload(client: ZenodoClient, deposition: dict, f: CubeFile | ModelFile) -> None:
    """Upload one file and compare Zenodo's MD5 checksum with the local one."""
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        if attempt > 1:  # take the damaged copy out before sending the file again
            client.delete_file(deposition, f.name)
        log.info("Uploading %s (%s)", f.name, _size(f.size))
        answer = client.upload(deposition, f.name, f.path)
        found = md5_hex(answer.get("checksum", ""))
        if found == f.md5:
            return
        log.warning(
            "Zenodo reports checksum md5:%s for %s, expected md5:%s (attempt %d of %d)",
            found,
            f.name,
            f.md5,
            attempt,
            UPLOAD_ATTEMPTS,
        )
    raise PublishError(
        f"Zenodo stored {f.name} with checksum {answer.get('checksum')!r}, not md5:{f.md5} "
        f"(from {f.path}), in {UPLOAD_ATTEMPTS} uploads: the upload was damaged in transit. "
        "Nothing was published and no registry line was written."
    )


def _is_published(deposition: dict) -> bool:
    return bool(deposition.get("submitted")) or deposition.get("state") == "done"


def _deposition_files(deposition: dict) -> dict[str, str] | None:
    """File name -> MD5 from a deposition's ``files`` list; None if it has none."""
    items = deposition.get("files")
    if not isinstance(items, list):
        return None
    return {
        str(item.get("filename") or item.get("key")): md5_hex(item.get("checksum", ""))
        for item in items
        if isinstance(item, dict)
    }


def _registry_target(registry: str | os.PathLike | None) -> tuple[Path, str, bool]:
    """The registry file to update, why that one, and whether it may be written."""
    if registry is not None:
        return Path(registry), "given with --registry", True
    path, in_checkout = default_registry()
    if in_checkout:
        return path, "default: the registry of this lk_scatterlight source checkout", True
    return path, "installed package, not a source checkout: give --registry PATH", False


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


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover
