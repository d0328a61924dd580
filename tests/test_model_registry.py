"""Learned models published through the cube registry, against a real HTTP server on 127.0.0.1.

The served model is the shipped one saved under a published name, with a
marker in its metadata, so a fetched model can be told from the shipped one
while its predictions must equal the shipped model's exactly.
"""

from __future__ import annotations

import warnings

import numpy as np
import pooch
import pytest
import requests
from registry_helpers import publish, write_registry

from lk_scatterlight import DownloadError, ScatterLightWarning, fetch_cube
from lk_scatterlight.builder.publish import register_model
from lk_scatterlight.exceptions import PublishError, ScatterLightError
from lk_scatterlight.model import (
    DEFAULT_MODEL,
    MODEL_VERSION,
    ModelNotFoundError,
    ScatterLightModel,
)
from lk_scatterlight.registry import (
    REGISTRY_ENV,
    RETRIES,
    SHIPPED_MODEL,
    URL_ENV,
    ModelName,
    available_cubes,
    available_models,
    model_filename,
    parse_model_filename,
)

pytest.importorskip("tesswcs", reason="tesswcs gives the CCD pointing the model's geometry needs")

MODEL = "lk-scatterlight-model_s1-25_v1.npz"
FUTURE = "lk-scatterlight-model_next_v9.npz"  # a format this package cannot read
CUBE = "lk-scatterlight_s0002_1-1_bin16_v1.fits"
CUTOUT = "tess-s0019-1-3_65.489205_28.443210_10x10_astrocut.fits"


@pytest.fixture(scope="module")
def shipped():
    return ScatterLightModel.load("default")


@pytest.fixture
def published(tmp_path, server, env, shipped, monkeypatch):
    """A model and a cube side by side on the server and in one registry."""
    files = publish(server.directory, [CUBE])
    marked = ScatterLightModel(
        shipped.trees, {**shipped.meta, "note": "published"}, network=shipped.network
    )
    marked.ephemeris_table = shipped.ephemeris_table
    files[MODEL] = marked.save(server.directory / MODEL)
    (server.directory / FUTURE).write_bytes(b"a model format from the future")
    files[FUTURE] = server.directory / FUTURE
    registry = write_registry(tmp_path / "registry.txt", files, base_url=server.url)
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    return files


def cached(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ---------------------------------------------------------------------- names
def test_model_file_names():
    assert model_filename("s1-25", MODEL_VERSION) == MODEL
    assert parse_model_filename(f"/some/folder/{MODEL}") == ModelName("s1-25", 1)
    for bad in ("default", "S1", "a_b", "-a", "a--b", ""):
        with pytest.raises(ValueError, match="is not a model name"):
            model_filename(bad, 1)
    assert SHIPPED_MODEL == DEFAULT_MODEL  # the registry's copy of the reserved name
    for bad in ("lk-scatterlight-model_default_v1.npz", "lk-scatterlight-model_a_v01.npz"):
        with pytest.raises(ValueError, match="is not a published model file name"):
            parse_model_filename(bad)


def test_models_and_cubes_share_the_registry(published, server):
    models = available_models()
    assert list(models["name"]) == ["next", "s1-25"]
    assert list(models["version"]) == [9, 1]
    assert list(models["url"]) == [f"{server.url}/{FUTURE}", f"{server.url}/{MODEL}"]
    assert list(available_cubes()["filename"]) == [CUBE]  # models are not cubes
    assert fetch_cube(2, 1, 1, progressbar=False).name == CUBE


# ---------------------------------------------------------------------- fetch + load + predict
def test_fetch_load_predict_then_offline(published, server, env, shipped):
    model = ScatterLightModel.load("s1-25", progressbar=False)
    assert model.path == env / MODEL
    assert model.meta["note"] == "published"  # the served file, not the shipped one
    assert server.requests == [f"/{MODEL}"]
    time = np.linspace(1330.0, 1331.0, 7)
    prediction = model.predict(1, 4, 3, row=[100, 500], column=800, time=time)
    assert prediction.shape == (7, 2)
    np.testing.assert_array_equal(prediction, shipped.predict(1, 4, 3, [100, 500], 800, time))
    server.stop()  # offline from now on: the cached, hash-checked copy is used
    again = ScatterLightModel.load("s1-25", progressbar=False)
    assert again.path == model.path
    assert server.requests == [f"/{MODEL}"]


def test_to_corrector_with_a_published_model(published, server, shipped, shared_data):
    import lightkurve as lk

    tpf = lk.read(shared_data(CUTOUT))
    try:
        with warnings.catch_warnings():
            # in sector 19 the Moon comes closer to the line of sight than in the training data
            warnings.simplefilter("ignore", ScatterLightWarning)
            corrector = tpf.to_corrector("scatterlight", model="s1-25")
            lc = corrector.correct()
            reference = tpf.to_corrector("scatterlight", model=shipped).correct()
    finally:
        tpf.hdu.close()
    assert corrector.cube.model.meta["note"] == "published"
    assert server.requests == [f"/{MODEL}"]
    np.testing.assert_array_equal(lc.flux.value, reference.flux.value)


# ---------------------------------------------------------------------- errors
def test_unknown_name_lists_the_published_models(published, server, env):
    with pytest.raises(ModelNotFoundError, match="No model named 'earth' is published") as info:
        ScatterLightModel.load("earth")
    message = str(info.value)
    assert "published models: next, s1-25." in message
    assert "'default'" in message
    assert "lk-scatterlight train" in message
    assert isinstance(info.value, FileNotFoundError)
    assert server.requests == []
    assert cached(env) == []


def test_no_models_published(env, tmp_path, monkeypatch):
    registry = tmp_path / "empty.txt"
    registry.write_text("# nothing\n", encoding="utf-8")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    with pytest.raises(ModelNotFoundError, match=r"no models are published yet .*empty\.txt"):
        ScatterLightModel.load("s1-25")


def test_a_path_that_is_not_there(env, tmp_path):
    with pytest.raises(ModelNotFoundError, match="No model file at .*m.npz; give a path"):
        ScatterLightModel.load(tmp_path / "m.npz")  # a path, never a registry name


def test_newer_format_only(published, server):
    expected = "only in model format version 9; this lk_scatterlight reads versions up to 1"
    with pytest.raises(ModelNotFoundError, match=expected):
        ScatterLightModel.load("next")
    assert server.requests == []


def test_corrupt_download_is_rejected(published, server, env):
    server.mode = "tamper"
    with pytest.raises(DownloadError, match="was rejected and not kept in the cache") as info:
        ScatterLightModel.load("s1-25", progressbar=False)
    assert "does not match the known hash" in str(info.value)
    assert "'default' for the model shipped" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    assert len(server.requests) == 1 + RETRIES
    assert cached(env) == []  # nothing unverified is kept, let alone unpickled


def test_offline(published, server, env):
    server.stop()
    with pytest.raises(DownloadError, match="cannot be reached") as info:
        ScatterLightModel.load("s1-25", progressbar=False)
    message = str(info.value)
    assert f"Could not download {MODEL} (model 's1-25') from {server.url}/{MODEL}" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert cached(env) == []


def test_http_error(published, server, env):
    server.mode = 404
    with pytest.raises(DownloadError, match="the server answered HTTP 404"):
        ScatterLightModel.load("s1-25", progressbar=False)


def test_mirror_url(published, server, env, tmp_path, monkeypatch):
    """LK_SCATTERLIGHT_URL serves models like cubes."""
    registry = write_registry(tmp_path / "bare.txt", {MODEL: published[MODEL]})  # no URLs
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    monkeypatch.setenv(URL_ENV, server.url)
    assert ScatterLightModel.load("s1-25", progressbar=False).path == env / MODEL


# ---------------------------------------------------------------------- publishing
def test_register_model_then_load(env, server, tmp_path, shipped, monkeypatch):
    local = shipped.save(tmp_path / "trained.npz")
    (server.directory / MODEL).write_bytes(local.read_bytes())  # "uploaded"
    registry = tmp_path / "registry.txt"
    registry.write_text(f"# mine\n{MODEL} sha256:00 http://old/{MODEL}\n", encoding="utf-8")
    line = register_model(local, "s1-25", url=f"{server.url}/{MODEL}", registry=registry)
    assert line == f"{MODEL} sha256:{pooch.file_hash(str(local))} {server.url}/{MODEL}"
    assert registry.read_text(encoding="utf-8").splitlines() == ["# mine", line]  # replaced
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert ScatterLightModel.load("s1-25", progressbar=False).trees.n_trees == shipped.trees.n_trees


def test_register_model_from_a_zenodo_record(tmp_path, shipped):
    local = shipped.save(tmp_path / "trained.npz")
    registry = tmp_path / "registry.txt"
    line = register_model(local, "s1-25", record=42, site="https://z.example", registry=registry)
    assert line.endswith(f" https://z.example/records/42/files/{MODEL}?download=1")
    assert registry.read_text(encoding="utf-8").splitlines()[-1] == line


def test_register_model_refuses_bad_input(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a model")
    registry = tmp_path / "registry.txt"
    with pytest.raises(PublishError, match="Give exactly one of url="):
        register_model(junk, "s1-25", registry=registry)
    with pytest.raises(PublishError, match="'default' is the shipped model"):
        register_model(junk, "default", url="http://x", registry=registry)
    with pytest.raises(PublishError, match="junk.npz cannot be published: .*not a readable"):
        register_model(junk, "s1-25", url="http://x", registry=registry)
    assert not registry.exists()  # nothing written


def test_bad_model_line_in_registry(env, tmp_path, monkeypatch):
    registry = tmp_path / "bad.txt"
    registry.write_text("lk-scatterlight-model_A_v1.npz sha256:00 http://x/a\n", encoding="utf-8")
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    with pytest.raises(ScatterLightError, match="lists an invalid entry"):
        available_models()


# ---------------------------------------------------------------------- command line
def test_cli_fetch_model_and_list(published, server, env, capsys):
    from lk_scatterlight.cli import main

    assert main(["fetch-model", "s1-25", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{env / MODEL}\n"
    assert err == ""
    assert main(["fetch-model", "earth"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert "No model named 'earth' is published; published models: next, s1-25." in err
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert CUBE in out
    models = out.split("Published models (ScatterLightModel.load(name)):\n")[1].splitlines()
    assert models[0].split() == ["name", "version", "filename", "url"]
    assert models[-1].split() == ["s1-25", "1", MODEL, f"{server.url}/{MODEL}"]


def test_cli_register_model(tmp_path, shipped, capsys):
    from lk_scatterlight.cli import main

    local = shipped.save(tmp_path / "trained.npz")
    registry = tmp_path / "registry.txt"
    args = ["register-model", str(local), "s1-25", "--url", "http://x/m", "--registry"]
    assert main([*args, str(registry)]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"{MODEL} sha256:{pooch.file_hash(str(local))} http://x/m"
    assert registry.read_text(encoding="utf-8").splitlines()[-1] == line
    with pytest.raises(SystemExit) as info:  # neither --record nor --url: a usage error
        main(["register-model", str(local), "s1-25"])
    assert info.value.code == 2
