"""The state file of a publication, which lets a failed run resume.

Where it is (`state_file` for cubes, `model_state_file` for a model), and
reading (`_load_state`, which refuses a state that does not match the run)
and writing it (atomically).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...exceptions import PublishError
from ...utils import write_text_atomic

if TYPE_CHECKING:
    from .cubes import CubeFile
    from .models import ModelFile

__all__ = ["state_file", "model_state_file"]

_STATE_SCHEMA = 1


def state_file(files: Sequence[CubeFile]) -> Path:
    """The state file of a publication: ``.lk-scatterlight-publish-s<SSSS>.json``
    in the folder of the first cube file."""
    return files[0].path.resolve().parent / f".lk-scatterlight-publish-s{files[0].sector:04d}.json"


def model_state_file(model_file: ModelFile) -> Path:
    """The state file of a model's publication, next to the model file."""
    folder = model_file.path.resolve().parent
    return folder / f".lk-scatterlight-publish-model-{model_file.model_name}.json"


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
