"""The coverage check (quantkit.coverage): every base tensor accounted for in the artifact, the table in the
manifest, and a broken save (a tensor deleted, added, reshaped, or left unquantized) refused by name, at
quantize time and by validate, before any model is loaded."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe_text

import quantkit
from quantkit.artifact import MANIFEST_NAME, Artifact, Manifest, file_checksums
from quantkit.coverage import check_artifact
from quantkit.errors import ArtifactError
from quantkit.formats import format_named
from quantkit.formats.gguf_names import gguf_name
from quantkit.formats.tensors import BaseTensor, CheckpointTensor

pytestmark = pytest.mark.integration

DOWN = "model.layers.0.mlp.down_proj.weight"
OUTPUTS = "  - {method: fp8, scheme: FP8_DYNAMIC}\n  - {method: rtn, scheme: W4A16}\n"


@pytest.fixture(scope="module")
def made(tiny_model, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("coverage") / "out"
    arts = quantkit.quantize(quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, OUTPUTS)))
    return {a.manifest.method: a.path for a in arts}


@pytest.fixture
def fp8_copy(made, tmp_path) -> Path:
    dest = tmp_path / made["fp8"].name
    shutil.copytree(made["fp8"], dest)
    return dest


def rewrite_weights(folder: Path, edit) -> None:
    """Edit model.safetensors (as an engine that dropped or added a tensor at save time would have written it)
    and rewrite the manifest's checksums to agree: only the coverage check can tell."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"] = file_checksums(folder)
    manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def test_the_coverage_table_is_in_the_manifest(made, tiny_model):
    for method, scheme in (("fp8", "FP8_DYNAMIC"), ("rtn", "W4A16")):
        art = Artifact.load(made[method])
        [cov] = art.manifest.coverage.values()
        assert cov.problems == [] and cov.mapping == "names"
        assert cov.base_tensors == 21  # 2 layers x 9, the embeddings, the final norm, lm_head
        assert cov.kinds["Linear"].quantized == 14 and cov.kinds["Linear"].kept == 1  # lm_head: ignored
        assert cov.kinds["Embedding"].kept == 1 and cov.kinds["LlamaRMSNorm"].kept == 5
        assert cov.reasons["ignore: lm_head"] == 1
        assert cov.precisions[scheme].tensors == 14 and cov.precisions["F32"].tensors == 7
        assert cov.params == sum(p.params for p in cov.precisions.values()) == 426_624
        assert cov.bits_per_weight == pytest.approx(8 * cov.bytes / cov.params, abs=1e-3)
        assert "coverage_s" in art.manifest.timings_s
        assert check_artifact(art, tiny_model)[art.name].bits_per_weight == cov.bits_per_weight  # validate agrees
    w4 = next(iter(Artifact.load(made["rtn"]).manifest.coverage.values()))
    fp8 = next(iter(Artifact.load(made["fp8"]).manifest.coverage.values()))
    assert w4.precisions["W4A16"].bytes < fp8.precisions["FP8_DYNAMIC"].bytes / 1.8  # packed int4 with its scales


def test_a_manifest_without_coverage_still_loads(made):
    raw = json.loads((made["fp8"] / MANIFEST_NAME).read_text())
    raw.pop("coverage")
    assert Manifest.model_validate(raw).coverage is None


def test_validate_refuses_a_deleted_tensor_by_name_before_loading_the_model(fp8_copy):
    rewrite_weights(fp8_copy, lambda t: t.pop(DOWN))
    r = run_cli("validate", str(fp8_copy), "--max-tokens", "64", "--context", "32")
    assert r.returncode == 2, r.stderr[-2000:]
    assert DOWN in r.stderr and "missing from the artifact" in r.stderr
    assert "Traceback" not in r.stderr and "normal_kernel" not in r.stderr
    assert not (fp8_copy / "validation.json").exists()


def test_an_extra_tensor_is_refused_by_name(fp8_copy, tiny_model):
    import torch

    rewrite_weights(fp8_copy, lambda t: t.update({"model.layers.0.mlp.spare.weight": torch.zeros(4, 4)}))
    with pytest.raises(ArtifactError, match=r"the base does not have: model\.layers\.0\.mlp\.spare\.weight"):
        check_artifact(Artifact.load(fp8_copy), tiny_model)


def test_a_changed_shape_is_refused_by_name(fp8_copy, tiny_model):
    def halve(t):
        t["model.norm.weight"] = t["model.norm.weight"][:64].clone()

    rewrite_weights(fp8_copy, halve)
    with pytest.raises(ArtifactError, match=r"another shape than the base's: model\.norm\.weight \[64\]"):
        check_artifact(Artifact.load(fp8_copy), tiny_model)


def test_a_targeted_layer_left_in_float_is_refused(fp8_copy, tiny_model):
    import torch

    q = "model.layers.1.self_attn.q_proj"

    def unquantize(t):
        t[f"{q}.weight"] = t[f"{q}.weight"].to(torch.float32)
        t.pop(f"{q}.weight_scale")

    rewrite_weights(fp8_copy, unquantize)
    with pytest.raises(ArtifactError, match=rf"{q}\.weight is stored in F32, not quantized.*the engine skipped it"):
        check_artifact(Artifact.load(fp8_copy), tiny_model)


def test_quantize_fails_an_output_whose_save_lost_a_tensor(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from quantkit.engines import engine_for

    engine = type(engine_for("rtn"))
    run = engine.run

    def losing_run(self, job):
        result = run(self, job)
        weights = job.staging_dir / "model.safetensors"
        tensors = load_file(str(weights))
        tensors.pop(DOWN)
        save_file(tensors, str(weights), metadata={"format": "pt"})
        return result

    monkeypatch.setattr(engine, "run", losing_run)
    out = tmp_path / "out"
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, "  - {method: rtn, scheme: W4A16}\n"))
    with pytest.raises(quantkit.QuantizeFailed, match=DOWN.replace(".", r"\.")):
        quantkit.quantize(recipe)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written: no artifact, no staging folder


# ------------------------------------------------------------------ GGUF: llama.cpp's names mapped back


def _llama_base(layers: int = 2, experts: int = 0) -> list[BaseTensor]:
    h, f, v = 64, 128, 100
    out = [BaseTensor("model.embed_tokens.weight", "F32", (v, h), "Embedding"),
           BaseTensor("model.norm.weight", "F32", (h,), "LlamaRMSNorm"), BaseTensor("lm_head.weight", "F32", (v, h), "Linear")]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [BaseTensor(f"{p}.input_layernorm.weight", "F32", (h,), "LlamaRMSNorm"),
                BaseTensor(f"{p}.post_attention_layernorm.weight", "F32", (h,), "LlamaRMSNorm")]
        out += [BaseTensor(f"{p}.self_attn.{n}.weight", "F32", (h, h), "Linear")
                for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        mlp = (("gate_proj", (f, h)), ("up_proj", (f, h)), ("down_proj", (h, f)))
        if experts:
            out.append(BaseTensor(f"{p}.mlp.gate.weight", "F32", (experts, h), "Linear"))
            out += [BaseTensor(f"{p}.mlp.experts.{e}.{n}.weight", "F32", s, "Linear") for e in range(experts) for n, s in mlp]
        else:
            out += [BaseTensor(f"{p}.mlp.{n}.weight", "F32", s, "Linear") for n, s in mlp]
    return out


def _as_gguf(base: list[BaseTensor]) -> list[CheckpointTensor]:
    """What llama.cpp's converter writes for `base`: its names, experts stacked, 2-D weights at Q4_K."""
    grouped: dict[str, list[BaseTensor]] = {}
    for b in base:
        grouped.setdefault(gguf_name(b.name), []).append(b)
    return [CheckpointTensor(name, Path("x.gguf"), "F32" if len(bs[0].shape) == 1 else "Q4_K",
                             bs[0].shape if len(bs) == 1 else (len(bs), *bs[0].shape))
            for name, bs in grouped.items()]


@pytest.mark.unit
@pytest.mark.parametrize("experts", [0, 4])
def test_gguf_names_map_back_to_the_base(experts):
    gguf = format_named("gguf")
    base = _llama_base(experts=experts)
    tensors = _as_gguf(base)
    if experts:
        assert "blk.1.ffn_down_exps.weight" in {t.name for t in tensors}
    mapped = gguf.map_tensors(base, tensors + [CheckpointTensor("rope_freqs.weight", Path("x.gguf"), "F32", (16,))], None)
    assert mapped.problems == []
    assert {a.name for a in mapped.accounted} == {b.name for b in base} | {"rope_freqs.weight"}
    dims = {b.name: len(b.shape) for b in base}
    assert {a.status for a in mapped.accounted if dims.get(a.name) == 2} == {"quantized"}
    assert {a.status for a in mapped.accounted if dims.get(a.name) == 1} == {"kept"}

    missing = [t for t in tensors if t.name != "blk.0.ffn_down.weight" and t.name != "blk.0.ffn_down_exps.weight"]
    problems = gguf.map_tensors(base, missing, None).problems
    assert problems and "model.layers.0.mlp." in problems[0] and "down_proj" in problems[0]
    wrong = [t if t.name != "blk.1.attn_q.weight" else CheckpointTensor(t.name, t.file, t.dtype, (32, 64)) for t in tensors]
    assert any("blk.1.attn_q.weight [32, 64]" in p for p in gguf.map_tensors(base, wrong, None).problems)


@pytest.mark.unit
def test_gguf_tensors_outside_the_map_are_compared_per_layer():
    """Another architecture's norms (Gemma 3's four per layer) have no entry in the map: each layer's leftovers
    are matched by count and shape, and one that is absent is still named."""
    base = _llama_base(layers=1)
    extra_norms = [BaseTensor(f"model.layers.0.{n}.weight", "F32", (64,), "RMSNorm")
                   for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm")]
    tensors = _as_gguf(base) + [CheckpointTensor(f"blk.0.{n}.weight", Path("x.gguf"), "F32", (64,))
                                for n in ("post_ffw_norm", "post_attention_norm")]
    mapped = format_named("gguf").map_tensors(base + extra_norms, tensors, None)
    assert mapped.problems == [] and mapped.mapping == "llama.cpp names; 2 by per-layer count and shape"
    short = format_named("gguf").map_tensors(base + extra_norms, tensors[:-1], None).problems
    assert len(short) == 1 and "1 base tensor(s) missing" in short[0] and "model.layers.0.p" in short[0]


def test_a_real_gguf_is_covered(tmp_path):
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import load_tokenizer, resolve_model
    from quantkit.testing import build_tiny_llama
    from quantkit.toolchains.llamacpp import find_toolchain

    if find_toolchain() is None:
        pytest.skip("llama.cpp's toolchain is not built in the cache (building it takes ~5 min; the name map is "
                    "unit-tested above on synthetic tensor lists)")
    # SmolLM2's tokenizer: llama.cpp's converter accepts only pre-tokenizers it knows
    model = build_tiny_llama(tmp_path / "model", tokenizer=load_tokenizer(resolve_model(ModelSpec(source="smollm2-135m"))))
    recipe = quantkit.parse_recipe(tiny_recipe_text(model, tmp_path / "out",
                                                    "  - {method: gguf, types: [Q8_0], imatrix: false}\n"))
    [art] = quantkit.quantize(recipe)
    [cov] = art.manifest.coverage.values()
    assert cov.problems == [] and cov.base_tensors == 21 and cov.mapping == "llama.cpp names"  # every tensor by name
    assert cov.precisions["Q8_0"].tensors == 16 and cov.kinds["LlamaRMSNorm"].kept == 5  # 14 projections, embeddings, output
    check_artifact(art, model)
    from gguf import GGUFReader

    from quantkit.formats.gguf_names import read_gguf_tensors

    [target] = art.targets()  # the fast header reader reads what gguf-py's reader reads
    assert [(t.name, t.dtype, t.shape, t.size) for t in read_gguf_tensors(target.path)] == [
        (t.name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)), int(t.n_bytes))
        for t in GGUFReader(str(target.path)).tensors]
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(target.path.read_bytes()[:4096])
    with pytest.raises(ArtifactError, match="not a readable GGUF file"):
        format_named("gguf").artifact_tensors(dataclasses.replace(target, path=truncated))


def test_a_recipes_outputs_read_the_base_once_and_a_changed_base_again(tiny_model, tmp_path, monkeypatch):
    from quantkit import coverage

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    built = []
    real = coverage._module_kinds
    monkeypatch.setattr(coverage, "_module_kinds", lambda folder, trust: built.append(folder) or real(folder, trust))
    first = coverage.base_tensors(base)
    assert coverage.base_tensors(base) == first and len(built) == 1  # the second output of a run: no second read
    config = base / "config.json"
    config.write_text(config.read_text() + "\n")  # any change to the folder's files: read again
    assert coverage.base_tensors(base) == first and len(built) == 2
