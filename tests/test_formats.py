"""Each format answers the facts about its artifacts (quantkit.formats): targets, precision classes,
sizes, card and OCI values. The callers ask; these tests pin the answers."""

import json
from pathlib import Path
from typing import get_args

import pytest

from quantkit.artifact import Artifact, Manifest
from quantkit.errors import ArtifactError
from quantkit.formats import FORMATS, format_named, format_quantized_as
from quantkit.formats.gguf import GGML_FALLBACK, GGML_TYPES, GGUF_FILE_TYPES, file_type_bits
from quantkit.recipe import OUTPUT_CLASSES, GGUFTensorType, GGUFType, format_of_method

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).parent / "fixtures"


def _manifest(name: str) -> Manifest:
    return Manifest.model_validate_json((FIXTURES / name).read_bytes())


def test_every_gguf_type_a_recipe_accepts_is_in_llama_cpps_table():
    assert set(get_args(GGUFType)) <= set(GGUF_FILE_TYPES)  # no type sized by a guess
    assert set(get_args(GGUFTensorType)) <= set(GGML_TYPES)
    assert {base for base, _ in GGUF_FILE_TYPES.values()} <= set(GGML_TYPES)
    assert set(GGML_FALLBACK.values()) <= set(GGML_TYPES)
    assert file_type_bits("IQ2_XXS") == pytest.approx(2.0625) and file_type_bits("Q4_K_M") == 4.9


@pytest.mark.parametrize(("fmt", "scheme", "bits", "expected"), [
    ("compressed-tensors", "W4A16_ASYM", None, 4), ("compressed-tensors", "W8A8", None, 8),
    ("compressed-tensors", "FP8_DYNAMIC", None, 8), ("compressed-tensors", "W4A16", 2, 2),
    ("gguf", "Q6_K", None, 6), ("gguf", "IQ2_XXS", None, 2), ("gguf", "BF16", None, 16), ("gguf", "Q8_0", None, 8),
])
def test_a_format_answers_the_precision_class_of_a_scheme(fmt, scheme, bits, expected):
    assert format_named(fmt).nominal_bits(scheme, bits) == expected


def test_every_recipe_method_names_a_registered_format():
    for method, cls in OUTPUT_CLASSES.items():
        assert format_of_method(method) == cls.format and cls.format in FORMATS
    assert format_of_method("nope") is None


def test_gguf_targets_come_from_its_typed_engine_record(tmp_path):
    m = _manifest("manifest-v1-gguf.json")
    targets = format_named("gguf").targets(m, tmp_path)
    assert [t.scheme for t in targets] == [q for q in m.output["types"] if q in m.engine["types"]]
    assert all(t.name == f"{m.name}/{t.scheme}" and t.bits == format_named("gguf").nominal_bits(t.scheme) for t in targets)
    assert format_named("gguf").ratio_text(m, targets).endswith("x/file")
    bad = m.model_copy(update={"engine": {"types": {"Q4_K_M": {"file": 3}}}})
    with pytest.raises(ArtifactError, match=r"engine\.types\.Q4_K_M\.file"):
        format_named("gguf").targets(bad, tmp_path)


def test_the_manifest_output_reads_as_the_recipes_typed_model():
    gptq = _manifest("manifest-v1-gptq.json").spec
    assert type(gptq).__name__ == "GPTQOutput" and gptq.group_size == 64 and gptq.nominal_bits() == 4
    gguf = _manifest("manifest-v1-gguf.json").spec
    assert gguf.format == "gguf" and gguf.types[0] == "F16"
    broken = _manifest("manifest-v1-gptq.json").model_copy(update={"output": {"method": "gptq", "scheme": "W9"}})
    with pytest.raises(ArtifactError, match=r"output\.gptq\.scheme"):
        _ = broken.spec


def test_a_manifest_naming_a_format_quantkit_does_not_write_is_refused(tmp_path):
    src = FIXTURES / "manifest-v1-gptq.json"
    raw = json.loads(src.read_text())
    raw["format"] = "safetensors-npz"
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "quantkit.json").write_text(json.dumps(raw))
    art = Artifact.load(folder, verify=False)
    assert any("format 'safetensors-npz' is none quantkit writes" in p for p in art.manifest_problems())


def test_card_and_registry_facts_live_on_the_format():
    ct, gguf = format_named("compressed-tensors"), format_named("gguf")
    assert (ct.library_name, gguf.library_name) == ("transformers", "gguf")
    assert (ct.oci_format, gguf.oci_format) == ("safetensors", "gguf")
    assert ct.lm_eval_unsupported is None and "log-probabilities" in gguf.lm_eval_unsupported
    assert gguf.serve_only_when_asked and ct.serve_only_when_asked is None
    assert format_quantized_as("compressed-tensors") is ct and format_quantized_as("bitsandbytes") is None
    assert ct.kernel_class({"config_groups": {"g": {"weights": {"num_bits": 4, "type": "int"}}}}) == "W4A16"
    assert gguf.file_role("imatrix.gguf") == "config" and ct.file_role("model.safetensors") is None
