"""GGUF outputs through llama.cpp's own tools (the toolchain is built once and cached)."""

import json
import shutil

import pytest
from conftest import run_cli, tiny_recipe_text

import quantkit
from quantkit.errors import RecipeError, SchemeConstraintError
from quantkit.progress import NullReporter
from quantkit.toolchains.llamacpp import ToolchainError

pytestmark = pytest.mark.integration


def gguf_recipe(model, out, types="[Q8_0]", extra="", **kw):
    return tiny_recipe_text(model, out, f"  - {{method: gguf, name: g, types: {types}{extra}}}\n", **kw)


# ------------------------------------------------------------------ recipe validation (no toolchain)


def problems(text):
    with pytest.raises(RecipeError) as e:
        quantkit.parse_recipe(text)
    return "\n".join(e.value.problems)


@pytest.mark.unit
def test_gguf_recipe_validation(tmp_path):
    r = quantkit.parse_recipe(gguf_recipe("m", tmp_path, "[Q8_0, Q4_K_M, IQ4_XS]", ", tensor_types: {'ffn_down': q6_k}"))
    out = r.outputs[0]
    assert out.imatrix is True and out.base_type == "F16" and out.scheme == "Q8_0,Q4_K_M,IQ4_XS"
    assert "got 'Q4_K_X'" in problems(gguf_recipe("m", tmp_path, "[Q4_K_X]"))
    assert "types listed twice: Q8_0" in problems(gguf_recipe("m", tmp_path, "[Q8_0, Q8_0]"))
    assert "IQ2_XXS need an importance matrix" in problems(gguf_recipe("m", tmp_path, "[IQ2_XXS]", ", imatrix: false"))
    assert "tensor_types.ffn_down" in problems(gguf_recipe("m", tmp_path, "[Q8_0]", ", tensor_types: {ffn_down: q7_k}"))
    assert "types" in problems(gguf_recipe("m", tmp_path, "[]"))
    # llm-compressor fields do not belong to GGUF outputs
    assert "unknown field" in problems(gguf_recipe("m", tmp_path, "[Q8_0]", ", group_size: 64"))


def test_missing_toolchain_is_a_one_line_error_before_heavy_work(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTKIT_LLAMA_CPP", str(tmp_path / "no-toolchain"))
    recipe = quantkit.parse_recipe(gguf_recipe(tiny_model, tmp_path / "out"))
    rep = NullReporter()
    with pytest.raises(ToolchainError, match=r"run `quantkit env llama.cpp`"):
        quantkit.quantize(recipe, reporter=rep)
    assert not any("calibrat" in s or "convert" in s for s in rep.steps)
    r = run_cli("quantize", str(_write(tmp_path, recipe)), env={"QUANTKIT_LLAMA_CPP": str(tmp_path / "no-toolchain")})
    assert r.returncode == 2 and "quantkit env llama.cpp" in r.stderr and "Traceback" not in r.stderr


def _write(tmp_path, recipe):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True)))
    return p


# ------------------------------------------------------------------ with the real toolchain


@pytest.fixture(scope="session")
def smol_tokenizer_llama(tmp_path_factory, llamacpp):
    """A random Llama whose widths are multiples of 256 (so K-quants apply), with SmolLM2's tokenizer
    (llama.cpp's converter only accepts tokenizers whose pre-tokenizer it knows)."""
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import load_tokenizer, resolve_model
    from quantkit.testing import build_tiny_llama

    smol = resolve_model(ModelSpec(source="smollm2-135m"))
    return build_tiny_llama(
        tmp_path_factory.mktemp("k") / "model", hidden_size=256, intermediate_size=512, tokenizer=load_tokenizer(smol)
    )


def test_unknown_architecture_fails_in_preflight(llamacpp, tiny_model, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model, odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(SchemeConstraintError, match="does not support architecture NoSuchModelForCausalLM"):
        from quantkit.engines.gguf import GGUFEngine
        from quantkit.recipe import ModelSpec
        from quantkit.sources.models import resolve_model

        GGUFEngine().preflight(
            quantkit.parse_recipe(gguf_recipe(odd, tmp_path)).outputs[0], resolve_model(ModelSpec(source=str(odd)))
        )


def test_k_and_i_quants_on_a_256_wide_model(llamacpp, smol_tokenizer_llama, tmp_path):
    from gguf import GGUFReader

    recipe = quantkit.parse_recipe(
        gguf_recipe(
            smol_tokenizer_llama,
            tmp_path / "out",
            "[F16, Q4_K_M, Q3_K_M, IQ4_XS]",
            ", output_tensor_type: q8_0",
            num_samples=4,
            seq_len=128,
        )
    )
    [art] = quantkit.quantize(recipe)
    m = art.manifest
    assert m.format == "gguf" and m.failures == []
    assert set(m.files) >= {"g-F16.gguf", "g-Q4_K_M.gguf", "g-Q3_K_M.gguf", "g-IQ4_XS.gguf", "imatrix.gguf"}
    assert m.engine["toolchain"]["llama_cpp_commit"].startswith("0c1e570")
    assert m.engine["imatrix"]["calibration_fingerprint"] == m.calibration.fingerprint
    assert m.engine["imatrix"]["chunks"] == 4
    # the tools' peaks count; this process is sampled every 0.5 s, not 0.1 s (quantkit.memory)
    assert m.peak_rss_method in ("ru_maxrss", "ru_maxrss of the largest child process", "sampled every 0.5 s")

    def tensor_type(name, file):
        reader = GGUFReader(str(art.path / file))
        return next(t.tensor_type.name for t in reader.tensors if t.name == name)

    assert tensor_type("blk.0.attn_q.weight", "g-Q4_K_M.gguf") == "Q4_K"  # real K-quant, no fallback
    assert tensor_type("blk.0.attn_q.weight", "g-Q3_K_M.gguf") == "Q3_K"
    assert tensor_type("blk.0.attn_q.weight", "g-IQ4_XS.gguf") == "IQ4_XS"
    assert tensor_type("output.weight", "g-Q4_K_M.gguf") == "Q8_0"  # per-tensor override
    assert m.engine["types"]["Q4_K_M"]["bpw"] < m.engine["types"]["F16"]["bytes"] * 8 / 1e6
    for qtype in ("Q4_K_M", "IQ4_XS"):
        text = llamacpp.complete(art.path / f"g-{qtype}.gguf", "Hello", n_tokens=8)
        assert isinstance(text, str)

    # validate evaluates every type with llama.cpp against the F32 conversion of the base
    from quantkit.validate import validate

    report = validate(art.path, max_tokens=256, context=128)
    assert [t.target for t in report.targets] == [f"g/{t}" for t in ("F16", "Q4_K_M", "Q3_K_M", "IQ4_XS")]
    by_type = {t.scheme: t for t in report.targets}
    assert all(s.runtime == "llama.cpp" and s.n_tokens == 4 * 63 for t in report.targets for s in t.scores)  # 4 chunks
    assert by_type["F16"].scores[0].kld_mean < by_type["Q3_K_M"].scores[0].kld_mean
    written = json.loads((art.path / "validation.json").read_text())
    assert written["targets"][1]["scheme"] == "Q4_K_M"
    assert "largest child process" in written["resources"]["peak_rss_note"] and written["resources"]["peak_rss_bytes"] > 0

    # without llama.cpp the checks are reported as skipped with the reason, and the gates fail
    r = run_cli("validate", str(art.path), "--json", env={"QUANTKIT_LLAMA_CPP": str(tmp_path / "no-toolchain")})
    assert r.returncode == 1, r.stderr
    [skipped] = json.loads(r.stdout)
    t = skipped["targets"][0]
    assert "quantkit env llama.cpp" in t["runtime_unavailable"] and t["domains"] == []
    assert {c["check"]: c["status"] for c in t["checks"]} == {
        "perplexity": "skipped",
        "kld": "skipped",
        "lm_eval": "skipped",
        "serve": "skipped",
    }
    assert "quantkit env llama.cpp" in next(c for c in t["checks"] if c["check"] == "kld")["reason"]
    assert t["gates"] and all(not g["passed"] and g["value"] is None for g in t["gates"])


def test_a_failed_type_keeps_the_others(llamacpp, smol_tokenizer_llama, tmp_path, monkeypatch):
    import quantkit.engines.gguf as gguf_engine

    real = gguf_engine.quantize_type

    def flaky(tc, base, target, qtype, out, imatrix):
        if qtype == "Q4_0":
            raise ToolchainError("llama-quantize failed (exit 1):\nsimulated failure")
        return real(tc, base, target, qtype, out, imatrix)

    monkeypatch.setattr(gguf_engine, "quantize_type", flaky)
    recipe = quantkit.parse_recipe(gguf_recipe(smol_tokenizer_llama, tmp_path / "out", "[Q8_0, Q4_0]", ", imatrix: false"))
    with pytest.raises(quantkit.QuantizeFailed) as e:
        quantkit.quantize(recipe)
    [art] = e.value.artifacts
    assert (art.path / "g-Q8_0.gguf").is_file() and not (art.path / "g-Q4_0.gguf").exists()
    assert art.manifest.failures[0].startswith("Q4_0: llama-quantize failed")
    assert "Q4_0" in str(e.value)


def plant_tokenizer_code(folder, marker):
    """A Llama folder whose tokenizer_config makes llama.cpp's converter call
    AutoTokenizer.from_pretrained(..., trust_remote_code=True) (its HybridDNA branch), with a tokenizer
    module that writes `marker` when imported."""
    (folder / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                                 "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    config["tokenizer_class"] = "HybridDNATokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_planted_tokenizer_code_never_runs(llamacpp, tiny_model, tmp_path):
    planted = tmp_path / "planted"
    shutil.copytree(tiny_model, planted)
    marker = tmp_path / "RAN"
    plant_tokenizer_code(planted, marker)
    assert "LlamaForCausalLM" in llamacpp.remote_code_architectures  # the HybridDNA branch of the Llama converter

    # quantize refuses before any work
    recipe = tmp_path / "r.yaml"
    recipe.write_text(gguf_recipe(planted, tmp_path / "out"))
    r = run_cli("quantize", str(recipe))
    assert r.returncode == 2 and "ships code (tokenization_evil.py" in r.stderr and "trust_remote_code" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()

    # the converter itself, run directly, is guarded too: the converter asks for trust_remote_code=True, quantkit refuses
    with pytest.raises(ToolchainError, match="quantkit refused to run code from the model folder.*tokenization_evil"):
        llamacpp.convert(planted, tmp_path / "x.gguf", "F16")
    assert not marker.exists()

    # with the user's opt-in the code runs (which shows the test plants a real path to execution)
    with pytest.raises(ToolchainError):
        llamacpp.convert(planted, tmp_path / "y.gguf", "F16", trust_remote_code=True)
    assert marker.read_text() == "ran"


def test_a_gguf_only_recipe_imports_no_llm_compressor(llamacpp, smol_tokenizer_llama, tmp_path):
    """llama.cpp runs in its own processes: a recipe of GGUF outputs alone skips llm-compressor's import
    (5 s here, more than the whole quantization of a small model), and still quantizes."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(gguf_recipe(smol_tokenizer_llama, tmp_path / "out", "[Q8_0]", ", imatrix: false"))
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "quantkit.cli.main", "quantize", str(recipe),
                        "--progress", "plain"], capture_output=True, text=True, timeout=600)
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert r.returncode == 0, r.stderr[-2000:]
    assert "quantkit.quantize" in imported and "llmcompressor" not in imported and "compressed_tensors" not in imported
    assert (tmp_path / "out" / "g" / "g-Q8_0.gguf").is_file()


def test_a_run_failing_after_the_conversion_started_leaves_no_converter_or_partial_file(llamacpp, smol_tokenizer_llama,
                                                                                         tmp_path):
    """The F16 conversion starts before the calibration set is read; a calibration file that turns out
    broken ends the run with its one-line error, the converter stopped and no half-written GGUF in the cache."""
    import psutil

    bad = tmp_path / "cal.jsonl"
    bad.write_text('{"text": "one"}\n{"text": "two"}\nnot json\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(gguf_recipe(smol_tokenizer_llama, tmp_path / "out", "[Q8_0]").replace("'builtin:mixed'", f"'{bad}'"))
    cache = tmp_path / "cache"
    r = run_cli("quantize", str(recipe), env={"QUANTKIT_CACHE": str(cache), "QUANTKIT_LLAMA_CPP": str(llamacpp.root)})
    assert r.returncode == 2 and "cal.jsonl:3: not valid JSON" in " ".join(r.stderr.split()), r.stderr
    assert list(cache.rglob("*.partial-*")) == []
    alive = [p for p in psutil.process_iter(["cmdline"]) if str(cache) in " ".join(p.info["cmdline"] or [])]
    assert alive == [], [p.info["cmdline"] for p in alive]
    assert not (tmp_path / "out" / "g").exists()
