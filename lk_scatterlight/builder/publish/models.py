"""Publishing a learned model (``lk-scatterlight publish-model``) or registering one.

`verify_model` checks the file (read as a model, never unpickled);
`publish_model` uploads it through the shared steps of
`~lk_scatterlight.builder.publish.workflow`; `register_model` only merges the
registry line of a model already published elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pooch

from ...exceptions import PublishError
from ...registry import model_filename
from ...registry_file import merge_registry, registry_entry, registry_line
from ..zenodo import DEFAULT_TIMEOUT, record_file_url, zenodo_url
from .state import model_state_file
from .workflow import (
    DEFAULT_LICENSE,
    DEFAULT_MODEL_KEYWORDS,
    PublishResult,
    _metadata,
    _publish,
    _registry_target,
)

__all__ = ["ModelFile", "verify_model", "publish_model", "register_model"]

log = logging.getLogger(__name__)


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
    from ...model import MODEL_VERSION, ModelFormatError, ScatterLightModel

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
    from ... import __version__

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
