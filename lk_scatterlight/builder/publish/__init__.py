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

The work is shared by four modules: `~lk_scatterlight.builder.publish.cubes`
(checking cube files, `publish_cubes`), `~lk_scatterlight.builder.publish.models`
(learned models), `~lk_scatterlight.builder.publish.workflow` (the upload,
publish and registry steps both share) and
`~lk_scatterlight.builder.publish.state` (the state file that lets a failed
run resume). The REST client is `lk_scatterlight.builder.zenodo` and the
registry file (where it is, its lines, merging) `lk_scatterlight.registry_file`.
All their public names are re-exported here.
"""

from __future__ import annotations

from ...registry_file import default_registry, merge_registry, registry_line
from ...utils import moved_names
from ..zenodo import (
    DEFAULT_TIMEOUT,
    MAX_RETRIES,
    SANDBOX_URL,
    TOKEN_ENV,
    ZENODO_URL,
    ZENODO_URL_ENV,
    ZenodoClient,
    record_file_url,
    user_agent,
    zenodo_url,
)
from .cubes import CubeFile, collect_cubes, publish_cubes, verify_cube
from .models import ModelFile, publish_model, register_model, verify_model
from .state import model_state_file, state_file
from .workflow import DEFAULT_CREATOR as DEFAULT_CREATOR
from .workflow import DEFAULT_KEYWORDS as DEFAULT_KEYWORDS
from .workflow import DEFAULT_LICENSE as DEFAULT_LICENSE
from .workflow import DEFAULT_MODEL_KEYWORDS as DEFAULT_MODEL_KEYWORDS
from .workflow import UPLOAD_ATTEMPTS as UPLOAD_ATTEMPTS
from .workflow import PublishResult

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

#: Private names that moved with the split of this module into a package, and
#: names it only imported: old -> new home.
__getattr__ = moved_names(
    __name__,
    {
        "_STATE_SCHEMA": "lk_scatterlight.builder.publish.state._STATE_SCHEMA",
        "_load_state": "lk_scatterlight.builder.publish.state._load_state",
        "_save_state": "lk_scatterlight.builder.publish.state._save_state",
        "_subject": "lk_scatterlight.builder.publish.state._subject",
        "_RECORD_PLACEHOLDER": "lk_scatterlight.builder.publish.workflow._RECORD_PLACEHOLDER",
        "_metadata": "lk_scatterlight.builder.publish.workflow._metadata",
        "_publish": "lk_scatterlight.builder.publish.workflow._publish",
        "_run": "lk_scatterlight.builder.publish.workflow._run",
        "_upload": "lk_scatterlight.builder.publish.workflow._upload",
        "_is_published": "lk_scatterlight.builder.publish.workflow._is_published",
        "_deposition_files": "lk_scatterlight.builder.publish.workflow._deposition_files",
        "_registry_target": "lk_scatterlight.builder.publish.workflow._registry_target",
        "_size": "lk_scatterlight.builder.publish.workflow._size",
        "_value_problems": "lk_scatterlight.builder.publish.cubes._value_problems",
        "_description": "lk_scatterlight.builder.publish.cubes._description",
        "_model_description": "lk_scatterlight.builder.publish.models._model_description",
        "_KIND_WORDS": "lk_scatterlight.builder.publish.models._KIND_WORDS",
        "ScatterLightCube": "lk_scatterlight.cube.ScatterLightCube",
        "CubeFormatError": "lk_scatterlight.exceptions.CubeFormatError",
        "PublishError": "lk_scatterlight.exceptions.PublishError",
        "cube_filename": "lk_scatterlight.registry.cube_filename",
        "model_filename": "lk_scatterlight.registry.model_filename",
        "parse_cube_filename": "lk_scatterlight.registry.parse_cube_filename",
        "registry_entry": "lk_scatterlight.registry_file.registry_entry",
        "write_text_atomic": "lk_scatterlight.utils.write_text_atomic",
        "ZenodoHTTPError": "lk_scatterlight.builder.zenodo.ZenodoHTTPError",
        "md5_hex": "lk_scatterlight.builder.zenodo.md5_hex",
    },
)
