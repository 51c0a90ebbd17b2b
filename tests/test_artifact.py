import json
import os
import re
import shutil
from pathlib import Path

import pytest

from quantkit.artifact import Artifact, write_manifest
from quantkit.errors import ArtifactError
from quantkit.files import remove_stale_partials, staged_folder

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).parent / "fixtures"


def _write(folder, content="x"):
    (folder / "model.safetensors").write_text(content)
    base = {"source": "m", "kind": "local", "path": "/m", "fingerprint": "f" * 64, "weight_bytes": 1}
    return write_manifest(folder, {"name": folder.name, "created": "2026-11-26T00:00:00+00:00", "format": "compressed-tensors",
                                   "scheme": "FP8_DYNAMIC", "output": {"method": "fp8"}, "base_model": base})


def test_success_moves_into_place(tmp_path):
    dest = tmp_path / "art"
    with staged_folder(dest) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".art.partial-")
        _write(staging)
        assert not dest.exists()
    assert (dest / "quantkit.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with staged_folder(dest) as staging:
            _write(staging)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(tmp_path / "art"):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_existing_needs_force(tmp_path):
    dest = tmp_path / "art"
    with staged_folder(dest) as s:
        _write(s, "old")
    with pytest.raises(ArtifactError, match="--force"):
        with staged_folder(dest):
            pass
    with staged_folder(dest, force=True) as s:
        _write(s, "new")
    assert (dest / "model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_failed_force_keeps_old_artifact(tmp_path):
    dest = tmp_path / "art"
    with staged_folder(dest) as s:
        _write(s, "old")
    with pytest.raises(RuntimeError):
        with staged_folder(dest, force=True) as s:
            raise RuntimeError
    assert (dest / "model.safetensors").read_text() == "old"


def test_verify_detects_modified_and_missing_files(tmp_path):
    dest = tmp_path / "art"
    with staged_folder(dest) as s:
        m = _write(s, "weights")
    assert m.files["model.safetensors"].bytes == 7
    Artifact.load(dest)  # verifies
    (dest / "model.safetensors").write_text("weightz")
    with pytest.raises(ArtifactError, match="modified: model.safetensors"):
        Artifact.load(dest)
    (dest / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing: model.safetensors"):
        Artifact.load(dest)


def test_load_rejects_non_artifacts(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        Artifact.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="no quantkit.json"):
        Artifact.load(tmp_path)


def test_stale_partials_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".art.partial-999999999-abcd"
    dead.mkdir()
    alive = tmp_path / f".art.partial-{os.getpid()}-abcd"
    alive.mkdir()
    assert remove_stale_partials(tmp_path / "art") == [dead]
    assert alive.exists()


@pytest.mark.parametrize("fixture", ["manifest-v1-gptq.json", "manifest-v1-gguf.json"])
def test_manifests_written_by_earlier_quantkit_still_load(fixture, tmp_path):
    """Manifests as quantkit wrote them before the typed Manifest (committed fixtures) load unchanged."""
    folder = tmp_path / "art"
    folder.mkdir()
    shutil.copy(FIXTURES / fixture, folder / "quantkit.json")
    raw = json.loads((folder / "quantkit.json").read_text())
    art = Artifact.load(folder, verify=False)
    m = art.manifest
    assert m.manifest_version == 1 and m.name == raw["name"] and m.method == raw["output"]["method"]
    assert m.base_model.fingerprint == raw["base_model"]["fingerprint"]
    assert m.calibration.num_tokens == raw["calibration"]["num_tokens"]
    assert {k: v.sha256 for k, v in m.files.items()} == {k: v["sha256"] for k, v in raw["files"].items()}
    assert m.to_json()["engine"] == raw["engine"]  # engine-specific records round-trip
    targets = art.targets()
    if m.format == "gguf":
        assert [t.scheme for t in targets] == raw["output"]["types"]  # recipe order
        assert [t.path.name for t in targets] == [raw["engine"]["types"][q]["file"] for q in raw["output"]["types"]]
        assert all(t.name == f"{m.name}/{t.scheme}" and t.format == "gguf" for t in targets)
    else:
        [t] = targets
        assert (t.name, t.path, t.scheme, t.bytes) == (m.name, folder, raw["scheme"], raw["size_bytes"])


@pytest.mark.parametrize("text, problem", [
    (b"{}", "name"), (b"[]", "(top level)"), (b'{"files": null}', "name"), (b"\xff\xfe not utf-8", "(top level)"),
])
def test_a_malformed_manifest_is_one_clear_error(text, problem, tmp_path):
    (tmp_path / "quantkit.json").write_bytes(text)
    with pytest.raises(ArtifactError, match="is not a valid quantkit manifest") as e:
        Artifact.load(tmp_path)
    assert problem in str(e.value) and "\n" not in str(e.value)


@pytest.mark.integration
def test_force_replaces_only_an_artifact_never_a_folder_of_the_users(tiny_model, tmp_path):
    """The issue's case: `mkdir -p O/t-rtn; echo keep > O/t-rtn/precious.txt; quantize -o O --force`."""
    from conftest import run_cli, tiny_recipe_text

    out = tmp_path / "O"
    (out / "t-rtn").mkdir(parents=True)
    (out / "t-rtn" / "precious.txt").write_text("keep")
    recipe = tmp_path / "R.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, out, "  - {method: rtn, name: t-rtn, scheme: W8A16}\n"))
    r = run_cli("quantize", str(recipe), "-o", str(out), "--force")
    assert r.returncode == 2 and "is not a quantkit artifact" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (out / "t-rtn" / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == ["t-rtn"]

    shutil.rmtree(out / "t-rtn")
    assert run_cli("quantize", str(recipe), "-o", str(out)).returncode == 0
    first = json.loads((out / "t-rtn" / "quantkit.json").read_text())["created"]
    r = run_cli("quantize", str(recipe), "-o", str(out), "--force")  # an artifact: replaced
    assert r.returncode == 0, r.stderr
    assert Artifact.load(out / "t-rtn").manifest.created >= first


def test_an_artifact_is_closed_and_its_manifest_consistent(tmp_path):
    dest = tmp_path / "art"
    with staged_folder(dest) as staging:
        _write(staging)
    Artifact.load(dest)
    (dest / "modeling_evil.py").write_text("import os")
    (dest / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError) as e:
        Artifact.load(dest)
    assert "not in quantkit.json: modeling_evil.py" in str(e.value) and "not in quantkit.json: pytorch_model.bin" in str(e.value)
    (dest / "modeling_evil.py").unlink()
    (dest / "pytorch_model.bin").unlink()
    (dest / "validation.json").write_text("{}")  # what validate adds is allowed
    Artifact.load(dest)

    manifest = json.loads((dest / "quantkit.json").read_text())
    edits = [
        (lambda m: m["files"].pop("model.safetensors"), "not in quantkit.json: model.safetensors"),
        (lambda m: m["output"].update(scheme="W4A16"), "scheme 'FP8_DYNAMIC' differs from output.scheme 'W4A16'"),
        (lambda m: m.update(format="gguf"), "format 'gguf' does not fit output.method 'fp8'"),
        (lambda m: m.update(size_bytes=0), "size_bytes 0 is not the sum"),
    ]
    for edit, problem in edits:
        changed = json.loads(json.dumps(manifest))
        edit(changed)
        (dest / "quantkit.json").write_text(json.dumps(changed))
        with pytest.raises(ArtifactError, match=re.escape(problem)):
            Artifact.load(dest)


@pytest.mark.integration
def test_a_manifest_holds_no_absolute_path_of_this_machine(tiny_model, tmp_path):
    """Sources as given, relative to the output root when they were absolute; the base model's folder
    only in the local side file (which push never uploads)."""
    from conftest import tiny_recipe_text

    import quantkit

    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", "  - {method: rtn, name: t, scheme: W8A16}\n"))
    [art] = quantkit.quantize(recipe)
    text = (art.path / "quantkit.json").read_text()

    def strings(v):
        if isinstance(v, dict):
            return [s for x in v.values() for s in strings(x)]
        if isinstance(v, list):
            return [s for x in v for s in strings(x)]
        return [v] if isinstance(v, str) else []

    absolute = [s for s in strings(json.loads(text)) if s.startswith("/")]
    assert absolute == [] and str(tmp_path) not in text
    assert art.manifest.recipe["model"]["source"] == os.path.relpath(tiny_model, tmp_path / "out")
    assert art.base_path == tiny_model.resolve() and "quantkit.local.json" not in art.manifest.files
    Artifact.load(art.path)  # the side file is allowed in a closed artifact
