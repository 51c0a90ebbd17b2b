import os

import pytest

from quantkit.artifact import Artifact, remove_stale_partials, staged_folder, write_manifest
from quantkit.errors import ArtifactError


def _write(folder, content="x"):
    (folder / "model.safetensors").write_text(content)
    return write_manifest(folder, {"name": folder.name, "output": {"method": "fp8"}})


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
    assert m["files"]["model.safetensors"]["bytes"] == 7
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
