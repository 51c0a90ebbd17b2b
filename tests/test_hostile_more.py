"""More hostile inputs, beside tests/test_hostile_input.py: artifact folders (planted, linked, edited files
around a valid manifest), validation reports as push reads them, and OCI registry responses (manifests,
referrers indexes, layer paths). Each generated case either loads or is one quantkit error: never a
traceback, never a hang (pytest-timeout). Every case run is counted, and conftest prints the counts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hostile_counts import counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantkit.artifact import Artifact
from quantkit.errors import ArtifactError
from quantkit.files import staged_folder

pytestmark = pytest.mark.unit

COUNTS = {"artifact_folder": 800, "validation_report": 800, "registry_manifest": 1200, "registry_index": 400,
          "layer_path": 800, "model_folder": 300}
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.sampled_from(["sha256:" + "a" * 64, "sha256:xyz", "..", ".", "/etc/passwd",
                                                           "a/../../b", "\x00", "application/vnd.oci.image.manifest.v1+json"]))
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids,
                                                                                                    max_size=4)), max_leaves=12)


@pytest.fixture(scope="module")
def clean_artifact(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("hostile-art") / "art"
    with staged_folder(dest) as staging:
        (staging / "model.safetensors").write_bytes(b"weights" * 100)
        (staging / "config.json").write_text("{}")
        from quantkit.artifact import write_manifest

        write_manifest(staging, {"name": "art", "created": "2026-12-04T00:00:00+00:00", "format": "compressed-tensors",
                                 "scheme": "FP8_DYNAMIC", "output": {"method": "fp8", "scheme": "FP8_DYNAMIC", "name": "art"},
                                 "base_model": {"source": "x", "kind": "local", "path": "", "fingerprint": "f",
                                                "weight_bytes": 1}})
    return dest


PLANTS = st.lists(st.tuples(
    st.sampled_from(["file", "symlink-out", "symlink-in", "dir", "fifo", "edit", "delete", "truncate"]),
    st.sampled_from(["model.safetensors", "config.json", "modeling_x.py", "serve-logs/a.log", "sub/x.so", "notes.txt",
                     "validation.json", "quantkit.local.json", "quantkit.json", "deep/er/file.bin"])), max_size=4)


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["artifact_folder"])
@given(PLANTS)
def test_any_planted_or_edited_artifact_loads_or_is_one_artifact_error(clean_artifact, tmp_path_factory, plants):
    counted("artifact_folder")
    folder = tmp_path_factory.getbasetemp() / "hostile-art-copy"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(clean_artifact, folder, symlinks=True)
    for kind, rel in plants:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():  # a file, a link, a FIFO planted before
            p.unlink()
        if kind == "file":
            p.write_text("planted")
        elif kind == "symlink-out":
            os.symlink("/etc/hostname", p)
        elif kind == "symlink-in":
            os.symlink(folder / "config.json", p)
        elif kind == "dir":
            p.mkdir()
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind in ("edit", "truncate"):
            src = clean_artifact / rel
            data = src.read_bytes() if src.is_file() else b""
            p.write_bytes(data[: len(data) // 2] if kind == "truncate" else data + b" ")
    try:
        art = Artifact.load(folder)
    except ArtifactError as e:
        assert str(e)
        return
    listed = set(art.manifest.files)
    for p in folder.rglob("*"):  # what loaded is closed: no code, no link, nothing unlisted but quantkit's later files
        rel = p.relative_to(folder).as_posix()
        assert not p.name.endswith((".py", ".so")), rel
        if rel in listed:
            assert p.is_file() and not p.is_symlink(), rel


REPORT_KEYS = ["manifest_sha256", "settings", "report_version"]  # beside the required passed and targets
TARGET = st.fixed_dictionaries({"target": st.one_of(st.text(max_size=10), values), "passed": st.one_of(st.booleans(), values),
                                "gates": st.lists(st.fixed_dictionaries({
                                    "gate": st.sampled_from(["kld_mean_max", "top1_agreement_min", "nope", ""]),
                                    "value": st.one_of(st.none(), st.floats(allow_nan=True), values),
                                    "threshold": st.one_of(st.floats(allow_nan=True), values),
                                    "passed": st.one_of(st.booleans(), values)}), max_size=3)})


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["validation_report"])
@given(st.one_of(st.binary(max_size=200), values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"passed": st.one_of(st.booleans(), values), "targets": st.lists(TARGET, max_size=3)},
                                       optional={k: values for k in REPORT_KEYS}).map(lambda d: json.dumps(d).encode())))
def test_any_validation_report_is_read_and_judged_or_is_one_artifact_error(clean_artifact, data):
    from quantkit.publish.bundle import read_validation, validation_problem

    counted("validation_report")
    folder = clean_artifact
    (folder / "validation.json").write_bytes(data)
    try:
        art = Artifact.load(folder, verify=False)
        report = read_validation(art)
        problem = validation_problem(art, report)
        assert problem is None or isinstance(problem, str)
    except ArtifactError as e:
        assert str(e) and "\n" not in str(e)
    finally:
        (folder / "validation.json").unlink()


def _refused_or_parsed(model, raw: bytes, what: str):
    from quantkit.publish.destinations.base import PushError
    from quantkit.publish.destinations.oci_manifest import parse_answer

    try:
        return parse_answer(model, raw, what)
    except PushError as e:
        assert str(e) and "\n" not in str(e) and "Traceback" not in str(e)
        return None


LAYER = st.fixed_dictionaries({
    "mediaType": st.one_of(st.sampled_from(["application/vnd.cncf.model.weight.v1.raw",
                                            "application/vnd.cncf.model.weight.config.v1.raw"]), values),
    "digest": st.one_of(st.just("sha256:" + "b" * 64), values), "size": st.one_of(st.integers(-5, 2**45), values),
    "annotations": st.one_of(st.fixed_dictionaries({"org.cncf.model.filepath": st.one_of(st.text(max_size=20), values)}),
                             values)})


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["registry_manifest"])
@given(st.one_of(st.binary(max_size=300), values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"schemaVersion": st.one_of(st.just(2), values),
                                        "mediaType": st.one_of(st.just("application/vnd.oci.image.manifest.v1+json"), values),
                                        "artifactType": st.one_of(st.just("application/vnd.cncf.model.manifest.v1+json"), values),
                                        "config": st.one_of(LAYER, values), "layers": st.lists(LAYER, max_size=4)})
                 .map(lambda d: json.dumps(d).encode())))
def test_any_registry_manifest_is_a_model_manifest_or_one_push_error(raw):
    from quantkit.publish.destinations.oci_manifest import ModelManifest, layer_path_problem

    counted("registry_manifest")
    parsed = _refused_or_parsed(ModelManifest, raw, "the manifest")
    if parsed is not None:  # what was accepted names files inside the destination only
        for layer in parsed.layers:
            assert layer_path_problem(layer.path) is None, layer.path


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["registry_index"])
@given(st.one_of(st.binary(max_size=200), values.map(lambda v: json.dumps(v).encode()),
                 st.fixed_dictionaries({"schemaVersion": st.one_of(st.just(2), values), "manifests": st.lists(LAYER, max_size=3)})
                 .map(lambda d: json.dumps(d).encode())))
def test_any_referrers_index_is_an_index_or_one_push_error(raw):
    from quantkit.publish.destinations.oci_manifest import ReferrersIndex

    counted("registry_index")
    _refused_or_parsed(ReferrersIndex, raw, "the referrers index")


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["layer_path"])
@given(st.one_of(st.text(max_size=40), st.lists(st.sampled_from(["a", "..", ".", "", "/", "\\", "b.txt", "\x00", "~"]),
                                                max_size=6).map("/".join)))
def test_any_layer_path_is_inside_the_destination_or_refused(tmp_path_factory, rel):
    from quantkit.publish.destinations.oci_manifest import layer_path_problem

    counted("layer_path")
    if layer_path_problem(rel) is None:
        root = tmp_path_factory.getbasetemp() / "dest"
        target = (root / rel).resolve()
        assert target != root.resolve() and root.resolve() in target.parents, rel


def test_generated_case_counts():
    """The counts this file promises, with tests/test_hostile_input.py's: above 10,000 per run together."""
    from test_hostile_input import COUNTS as RECIPE_COUNTS

    assert sum(COUNTS.values()) + sum(RECIPE_COUNTS.values()) >= 14_800


CONFIG_KEYS = ["model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "tie_word_embeddings", "max_position_embeddings", "text_config",
               "torch_dtype", "quantization_config", "auto_map", "architectures", "rope_scaling"]


@pytest.fixture(scope="module")
def model_folder(tiny_model, tmp_path_factory) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("hostile-model") / "model"))


@pytest.mark.timeout(600)
@settings(FUZZ, max_examples=COUNTS["model_folder"])
@given(st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), values), max_size=3),
       st.one_of(st.none(), st.binary(max_size=64), st.integers(0, 2**64 - 1).map(lambda n: n.to_bytes(8, "little") + b"{}")))
def test_any_model_folder_resolves_or_is_one_model_source_error(model_folder, tmp_path_factory, edits, header):
    """config.json with hostile values, and a safetensors file whose header is garbage or lies about its
    length: the source checks answer with one ModelSourceError (or accept a sound folder), never anything else."""
    from quantkit.errors import ModelSourceError
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import resolve_model

    counted("model_folder")
    folder = tmp_path_factory.getbasetemp() / "hostile-model-copy"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in edits:
        config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    if header is not None:
        (folder / "model.safetensors").write_bytes(header)
    try:
        resolved = resolve_model(ModelSpec(source=str(folder)))
    except ModelSourceError as e:
        assert str(e) and "Traceback" not in str(e)
    else:
        assert resolved.weight_bytes > 0


def test_a_registry_key_with_a_newline_is_quoted_on_one_line():
    """Found by the referrers-index generator: a key of the registry's JSON reached the error's field path."""
    from quantkit.publish.destinations.oci_manifest import ReferrersIndex

    raw = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "sha256:" + "a" * 64, "size": 1,
                                                         "annotations": {"\n\x1b[2J": None}}]}).encode()
    assert _refused_or_parsed(ReferrersIndex, raw, "the referrers index") is None
