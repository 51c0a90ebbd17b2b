"""The two lines quantkit never crosses, checked by planting the hazard: nothing from a model folder but
what the format defines reaches an artifact (no code), quantkit deletes only what it wrote, push uploads
only regular files inside the artifact, and no absolute path of this machine leaves it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe_text

import quantkit
from quantkit.artifact import Artifact
from quantkit.artifact_files import remove_own_files
from quantkit.errors import ArtifactError
from quantkit.files import sha256_file
from quantkit.publish.destinations import destination_for
from quantkit.publish.verbs import PushSettings, prepare
from quantkit.validate import validate

pytestmark = pytest.mark.integration

LOOSE = {"kld_mean_max": 100.0, "ppl_increase_max": 100.0, "top1_agreement_min": 0.0}
RTN = "  - {method: rtn, name: t-rtn, scheme: W8A16}\n"


@pytest.fixture(scope="module")
def code_folder(tiny_model, tmp_path_factory) -> Path:
    """The tiny Llama as a folder that ships its own code: `*.py` behind `auto_map` in both configs, each
    module writing a marker file if it is ever imported."""
    folder = Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("code") / "model"))
    marker = folder.parent / "RAN"
    for name, key in (("config.json", {"AutoConfig": "configuration_x.XConfig",
                                       "AutoModelForCausalLM": "modeling_x.XForCausalLM"}),
                      ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_x.XTokenizer", None]})):
        data = json.loads((folder / name).read_text())
        data["auto_map"] = key
        (folder / name).write_text(json.dumps(data))
    for module in ("modeling_x.py", "configuration_x.py", "tokenization_x.py"):
        (folder / module).write_text(f"open({str(marker)!r}, 'a').write({module!r})\n")
    (folder / "helper.so").write_bytes(b"\x7fELF")
    (folder / "NOTES.md").write_text("the author's notes")
    return folder


def test_a_model_folders_code_never_reaches_the_artifact(code_folder, tmp_path):
    recipe = quantkit.parse_recipe(tiny_recipe_text(code_folder, tmp_path / "out", RTN))
    [art] = quantkit.quantize(recipe)
    names = sorted(p.name for p in art.path.iterdir())
    assert not [n for n in names if n.endswith((".py", ".so", ".md"))], names
    assert "auto_map" not in (art.path / "config.json").read_text()
    assert "auto_map" not in (art.path / "tokenizer_config.json").read_text()
    assert {"modeling_x.py", "configuration_x.py", "tokenization_x.py"} <= set(art.manifest.dropped_files)
    assert art.manifest.dropped_keys == ["config.json:auto_map", "tokenizer_config.json:auto_map"]
    assert not (code_folder.parent / "RAN").exists()
    assert validate(art.path, max_tokens=128, context=32, gate_overrides=LOOSE).passed is not None

    # a forged manifest that lists a code file does not make it part of an artifact
    (art.path / "modeling_x.py").write_text("import os\n")
    manifest = json.loads((art.path / "quantkit.json").read_text())
    manifest["files"]["modeling_x.py"] = {"sha256": sha256_file(art.path / "modeling_x.py"), "bytes": 10}
    manifest["size_bytes"] += 10
    (art.path / "quantkit.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="code file: modeling_x.py"):
        Artifact.load(art.path)
    r = run_cli("validate", str(art.path), "--max-tokens", "64")
    assert r.returncode == 2 and "code file: modeling_x.py" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.unit
def test_admission_keeps_only_the_formats_files_and_the_trusted_models_code_pointers(tmp_path):
    """With model.trust_remote_code the configs keep `auto_map` (a model type transformers lacks cannot load
    without it); the code itself never stays."""
    from quantkit.artifact_files import admit_files

    for trusted in (False, True):
        staging = tmp_path / f"staging-{trusted}"
        (staging / "sub").mkdir(parents=True)
        (staging / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoConfig": "c.C"}}))
        for name in ("model.safetensors", "modeling_x.py", "sub/evil.so", "stray.bin", "quantkit.local.json"):
            (staging / name).write_text("x")
        os.symlink("/etc/passwd", staging / "tokenizer.json")
        dropped, keys = admit_files(staging, ("config.json", "*.safetensors", "tokenizer.json"), keep_code_pointers=trusted)
        assert dropped == ["modeling_x.py", "stray.bin", "sub/evil.so", "tokenizer.json"]
        assert sorted(p.name for p in staging.iterdir()) == ["config.json", "model.safetensors", "quantkit.local.json"]
        assert ("auto_map" in (staging / "config.json").read_text()) is trusted
        assert keys == ([] if trusted else ["config.json:auto_map"])


@pytest.mark.parametrize("how", ["plain", "--force"])
def test_a_rerun_never_deletes_a_users_files_inside_an_artifact(tiny_model, tmp_path, how):
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, out, RTN))
    assert run_cli("quantize", str(recipe)).returncode == 0
    art = out / "t-rtn"
    (art / "notes.txt").write_text("mine")
    (art / "my-experiments").mkdir()
    (art / "my-experiments" / "run1.log").write_text("mine too")
    r = run_cli("quantize", str(recipe), *([how] if how != "plain" else []))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "holds files quantkit did not write (my-experiments/, notes.txt)" in r.stderr
    assert (art / "notes.txt").read_text() == "mine" and (art / "my-experiments" / "run1.log").read_text() == "mine too"
    assert (art / "model.safetensors").is_file()  # the artifact itself untouched too
    status = run_cli("status", str(recipe))
    assert status.returncode == 0 and "did not write" in status.stdout, status.stdout + status.stderr


def test_replacing_an_artifact_removes_only_what_quantkit_wrote(tiny_model, tmp_path):
    [art] = quantkit.quantize(quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", RTN)))
    (art.path / "validation.json").write_text("{}")
    (art.path / "serve-logs").mkdir()
    (art.path / "serve-logs" / "server.log").write_text("log")
    (art.path / "late.txt").write_text("a user's file, added after quantize checked the folder")
    assert remove_own_files(art.path) == ["late.txt"]
    assert (art.path / "late.txt").read_text().startswith("a user's")


def _validated(tiny_model, tmp_path, outputs=RTN, **kw) -> Artifact:
    [art] = quantkit.quantize(quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", outputs, **kw)))
    validate(art.path, max_tokens=128, context=32, gate_overrides=LOOSE)
    return Artifact.load(art.path)


def test_push_include_logs_refuses_a_symlink_out_of_the_artifact(tiny_model, tmp_path):
    art = _validated(tiny_model, tmp_path)
    (art.path / "serve-logs").mkdir(exist_ok=True)
    (art.path / "serve-logs" / "server.log").write_text("fine")
    os.symlink("/etc/passwd", art.path / "serve-logs" / "passwd.log")
    settings = PushSettings(license="mit", allow_failed=True, include_logs=True)
    with pytest.raises(ArtifactError, match="serve-logs/passwd.log is a symlink"):
        prepare(art.path, destination_for("me/x"), settings)
    r = run_cli("push", str(art.path), "--repo", "me/x", "--license", "mit", "--allow-failed", "--include-logs", "--dry-run")
    assert r.returncode == 2 and "symlink" in r.stderr and "root:" not in r.stdout, r.stderr
    (art.path / "serve-logs" / "passwd.log").unlink()
    os.symlink("/etc", art.path / "serve-logs" / "etc")
    with pytest.raises(ArtifactError, match="serve-logs/etc is a symlink"):
        prepare(art.path, destination_for("me/x"), settings)
    bundle = prepare(art.path, destination_for("me/x"), PushSettings(license="mit", allow_failed=True))
    assert not [f.path for f in bundle.files if f.path.startswith("serve-logs/")]


def test_a_listed_file_replaced_by_a_symlink_is_refused(tiny_model, tmp_path):
    art = _validated(tiny_model, tmp_path)
    moved = tmp_path / "elsewhere.json"
    shutil.move(art.path / "generation_config.json", moved)
    os.symlink(moved, art.path / "generation_config.json")
    with pytest.raises(ArtifactError, match="symlink: generation_config.json"):
        Artifact.load(art.path)


def test_an_absolute_calibration_path_never_leaves_the_machine(tiny_model, tmp_path, monkeypatch):
    """A calibration file given by its absolute path, under the working folder: recorded relative to the
    output root (the absolute path only in the local side file), and the push carries it nowhere."""
    secret = tmp_path / "private-data" / "customer-calls.jsonl"
    secret.parent.mkdir()
    lines = [json.dumps({"text": t}) for t in quantkit.sources.calibration.builtin_texts("mixed", "train")[:40]]
    secret.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    text = tiny_recipe_text(tiny_model, tmp_path / "out", "  - {method: gptq, name: t-gptq, scheme: W4A16, group_size: 64}\n")
    text = text.replace("source: 'builtin:mixed'", f"source: '{secret}'")
    [made] = quantkit.quantize(quantkit.parse_recipe(text))
    validate(made.path, max_tokens=128, context=32, gate_overrides=LOOSE)
    art = Artifact.load(made.path)
    assert art.manifest.calibration.source == os.path.relpath(secret, tmp_path / "out")
    assert str(secret) not in (art.path / "quantkit.json").read_text()
    assert json.loads((art.path / "quantkit.local.json").read_text())["calibration_source"] == str(secret)
    bundle = prepare(art.path, destination_for("me/x"), PushSettings(license="mit", allow_failed=True))
    for f in bundle.files:
        if f.role != "weights":
            assert str(secret.parent).encode() not in f.read(), f.path

    # an artifact of an older quantkit that recorded the absolute path: scrubbed from everything made,
    # and the leak check knows the path (a file that still held it would be refused)
    manifest = json.loads((art.path / "quantkit.json").read_text())
    manifest["calibration"]["source"] = str(secret)
    (art.path / "quantkit.json").write_text(json.dumps(manifest))
    validate(art.path, max_tokens=128, context=32, gate_overrides=LOOSE)
    from quantkit.publish.bundle import local_prefixes

    assert str(secret) in local_prefixes(Artifact.load(art.path))
    bundle = prepare(art.path, destination_for("me/x"), PushSettings(license="mit", allow_failed=True))
    for f in bundle.files:
        if f.role != "weights":
            assert str(secret.parent).encode() not in f.read(), f.path


def test_push_never_trusts_an_edited_report_or_edited_gates(tiny_model, tmp_path):
    art = _validated(tiny_model, tmp_path)
    report_path = art.path / "validation.json"
    good = report_path.read_text()
    settings = PushSettings(license="mit")
    prepare(art.path, destination_for("me/x"), settings)  # as validated: accepted

    report = json.loads(good)
    gate = report["targets"][0]["gates"][0]
    gate["threshold"] = gate["value"] / 2  # the figure now fails its gate, the verdict still says pass
    report_path.write_text(json.dumps(report))
    with pytest.raises(ArtifactError, match="contradicts its own figures.*edited by hand"):
        prepare(art.path, destination_for("me/x"), settings)
    with pytest.raises(ArtifactError, match="--allow-unvalidated"):  # not merely "failed": it is not a report
        prepare(art.path, destination_for("me/x"), PushSettings(license="mit", allow_failed=True))

    for bad in ("{", '{"passed": "yes", "targets": 3}', "[]", '{"passed": true, "targets": [{"target": 1}]}'):
        report_path.write_text(bad)
        with pytest.raises(ArtifactError, match="validation.json is not"):
            prepare(art.path, destination_for("me/x"), settings)
        r = run_cli("push", str(art.path), "--repo", "me/x", "--license", "mit", "--dry-run")
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr

    report_path.write_text(good)
    manifest = json.loads((art.path / "quantkit.json").read_text())
    manifest["output"]["gates"] = {"kld_mean_max": 1000.0}  # loosened by hand after quantize
    (art.path / "quantkit.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="differs from what quantize recorded in inputs.output"):
        Artifact.load(art.path)
