"""The publication steps that cubes and models share, once their files are checked.

`_publish` plans the run (a dry run stops there, returning the plan as a
`PublishResult`); `_run` does the network part: a Zenodo deposition (new, a
new version, or the draft of an unfinished run), the uploads with their MD5
check, the metadata, the publish call, and only then the registry lines.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...exceptions import PublishError
from ...registry_file import default_registry, merge_registry, registry_line
from ..zenodo import TOKEN_ENV, ZenodoClient, ZenodoHTTPError, md5_hex, record_file_url
from .state import _STATE_SCHEMA, _load_state, _save_state

if TYPE_CHECKING:
    from .cubes import CubeFile
    from .models import ModelFile

__all__ = [
    "PublishResult",
    "UPLOAD_ATTEMPTS",
    "DEFAULT_LICENSE",
    "DEFAULT_KEYWORDS",
    "DEFAULT_CREATOR",
    "DEFAULT_MODEL_KEYWORDS",
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

_RECORD_PLACEHOLDER = "<record>"


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


def _size(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover
