"""quantkit validate: checks, gates, reports and exit codes on tiny random models."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_recipe_text
from hypothesis import given, settings
from hypothesis import strategies as st

import quantkit
from quantkit.errors import ArtifactError, QuantkitError
from quantkit.formats import format_named
from quantkit.gates import class_defaults, evaluate_gates, parse_gate_overrides
from quantkit.runtimes.transformers import TransformersModel, score_lockstep, windows
from quantkit.validate import validate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_artifacts(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "out"
    outputs = (
        "  - {method: fp8}\n  - {method: int8}\n"
        # twins: identical int8 per-channel RTN weights, with and without int8 activations
        "  - {method: int8, name: twin-w8a8, smoothquant: false, weight_algorithm: rtn}\n"
        "  - {method: rtn, name: twin-w8a16, scheme: W8A16}\n"
        "  - {method: rtn, bits: 2, group_size: 32}\n"
    )
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, outputs))
    return {a.name: a.path for a in quantkit.quantize(recipe)}


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 400), context=st.integers(2, 64), data=st.data())
def test_windows_score_every_token_from_the_lead_once_with_the_lead_as_context(n, context, data):
    stride = data.draw(st.integers(1, context))
    lead = max(1, context - stride)
    scored = []
    for begin, end, first in windows(n, context, stride):
        assert 0 <= begin and end - begin <= context and first - begin == lead and first < end <= n
        scored += list(range(first, end))
    assert scored == list(range(lead, n))


@pytest.mark.unit
def test_default_windows_give_every_scored_token_half_a_context():
    spans = windows(2048, 512, 256)
    assert spans[:2] == [(0, 512, 256), (256, 768, 512)] and spans[-1] == (1536, 2048, 1792)


@pytest.mark.unit
def test_kld_of_a_model_against_itself_is_zero(tiny_model):
    from quantkit.runtimes.transformers import perplexity

    rt = TransformersModel(tiny_model)
    ids = rt.tokenize("def f(x):\n    return x + 1\n" * 20)[:200]
    s = score_lockstep(rt, rt, ids, "code", context=64, stride=32)
    assert s.kld_mean == pytest.approx(0, abs=1e-6) and s.top1_agreement == 1.0 and s.ppl == pytest.approx(s.base_ppl)
    assert s.n_tokens == len(ids) - 32
    assert perplexity(rt, ids, context=64, stride=32) == (pytest.approx(s.ppl, rel=1e-5), len(ids) - 32)


@pytest.mark.unit
def test_kld_grows_with_a_perturbation(tiny_model, tmp_path):
    perturbed = tmp_path / "perturbed"
    shutil.copytree(tiny_model, perturbed)
    base, other = TransformersModel(tiny_model), TransformersModel(perturbed)
    with torch.no_grad():
        other.model.lm_head.weight.mul_(3.0)
    ids = base.tokenize("The quick brown fox jumps over the lazy dog. " * 10)[:100]
    s = score_lockstep(base, other, ids, "prose", context=50, stride=50)
    assert s.kld_mean > 0.01
    # the position bins partition the scored tokens: their token-weighted mean is the overall mean
    spans = windows(len(ids), 50, 50)
    counts = [0] * len(s.kld_by_position)
    for begin, end, first in spans:
        for pos in range(first - 1 - begin, end - 1 - begin):
            counts[pos * len(counts) // 50] += 1
    weighted = sum(c * v for c, v in zip(counts, s.kld_by_position) if c) / sum(counts)
    assert weighted == pytest.approx(s.kld_mean, rel=1e-5)
    assert all((v is None) == (c == 0) for c, v in zip(counts, s.kld_by_position))


@pytest.mark.unit
def test_llamacpp_windows_score_the_second_half_of_full_chunks():
    from quantkit.runtimes.transformers import llamacpp_windows

    assert llamacpp_windows(10, 4, 8) == [(0, 4, 3), (4, 8, 7)]  # the partial third chunk is dropped
    assert llamacpp_windows(100, 8, 2) == [(0, 8, 5), (8, 16, 13)]


@pytest.mark.unit
def test_uniform_model_perplexity_is_the_vocabulary_size(tiny_model):
    rt = TransformersModel(tiny_model)
    with torch.no_grad():
        rt.model.lm_head.weight.zero_()
    ids = rt.tokenize("a uniform model assigns every token the same probability " * 5)[:120]
    s = score_lockstep(rt, rt, ids, "prose", context=60, stride=60)
    assert s.ppl == pytest.approx(rt.model.lm_head.weight.shape[0], rel=1e-4)


def test_w8a8_activations_are_quantized_in_the_forward_pass(tiny_artifacts):
    """Activation quantization must not be silently dropped: W8A8 differs from its weight-only twin."""
    w8a8, w8a16 = TransformersModel(tiny_artifacts["twin-w8a8"]), TransformersModel(tiny_artifacts["twin-w8a16"])
    assert w8a8.activation_quantized_modules > 0 and w8a16.activation_quantized_modules == 0
    for name, param in w8a16.model.named_parameters():  # same weights
        if name.endswith("weight"):
            assert torch.equal(param, dict(w8a8.model.named_parameters())[name]), name
    ids = w8a8.tokenize("print('hello world')\n" * 10)[:64]
    assert (w8a8.logprobs(ids) - w8a16.logprobs(ids)).abs().max() > 1e-4


@pytest.mark.unit
def test_recipe_gate_keys_are_the_validation_gate_keys():
    from typing import get_args

    from quantkit.gates import GATE_KEYS
    from quantkit.recipe import GateKey

    assert set(get_args(GateKey)) == set(GATE_KEYS)


@pytest.mark.unit
def test_gate_defaults_and_evaluation():
    ct, gguf = format_named("compressed-tensors"), format_named("gguf")  # the format answers the precision class
    assert class_defaults(ct.nominal_bits("FP8_DYNAMIC"))["kld_mean_max"] == 0.01
    assert class_defaults(ct.nominal_bits("W4A16_ASYM"))["kld_mean_max"] == 0.06
    assert class_defaults(gguf.nominal_bits("Q6_K"))["kld_mean_max"] == 0.02
    assert class_defaults(gguf.nominal_bits("IQ2_XXS"))["kld_mean_max"] == 0.4
    assert class_defaults(ct.nominal_bits("W4A16", bits=2))["kld_mean_max"] == 0.4
    [g] = evaluate_gates({"kld_mean_max": 0.05}, {"kld_mean": 0.05})
    assert g.passed
    [g] = evaluate_gates({"kld_mean_max": 0.05}, {"kld_mean": 0.0501})
    assert not g.passed
    [g] = evaluate_gates({"top1_agreement_min": 0.9}, {"top1_agreement": 0.89})
    assert not g.passed
    [g] = evaluate_gates({"kld_mean_max": 1.0}, {})
    assert not g.passed and g.value is None  # unmeasured never passes
    assert parse_gate_overrides(["kld_mean_max=0.2"]) == {"kld_mean_max": 0.2}
    with pytest.raises(QuantkitError, match="KEY one of"):
        parse_gate_overrides(["kld_max=1"])
    with pytest.raises(QuantkitError, match="not a number"):
        parse_gate_overrides(["kld_mean_max=low"])


def test_validate_writes_reports(tiny_artifacts):
    report = validate(tiny_artifacts["tiny-fp8-fp8-dynamic"], max_tokens=256, context=128)
    data = json.loads((tiny_artifacts["tiny-fp8-fp8-dynamic"] / "validation.json").read_text())
    assert data["passed"] == report.passed and data["settings"]["context"] == 128 and data["settings"]["stride"] == 64
    auto = ("cuda:0", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")
    assert (data["settings"]["device"], data["settings"]["dtype"]) == auto
    assert data["resources"]["peak_rss_bytes"] > 100e6 and data["libraries"]["transformers"]
    [target] = data["targets"]
    assert target["device"] == auto[0] and [d["domain"] for d in target["domains"]] == ["prose", "code"]
    assert all(d["n_tokens"] == 256 for d in target["domains"])  # --max-tokens scored tokens
    scored = target["domains"][0]["scored_tokens"]
    assert scored["windows"][0] == [0, 128, 64] and scored["scored"] == 256 and "from offset 64 on" in scored["rule"]
    assert {c["check"] for c in target["checks"]} == {"perplexity", "kld", "lm_eval", "serve"}
    lm = next(c for c in target["checks"] if c["check"] == "lm_eval")
    assert lm["status"] == "skipped" and "--task" in lm["reason"]
    serve = next(c for c in target["checks"] if c["check"] == "serve")
    assert serve["status"] == "skipped" and "--serve" in serve["reason"]  # the library leaves serving out unless asked
    assert "recovery_min" not in {g["gate"] for g in target["gates"]}
    md = (tiny_artifacts["tiny-fp8-fp8-dynamic"] / "validation.md").read_text()
    assert "| tiny-fp8-fp8-dynamic | prose | 256 |" in md
    quantkit.Artifact.load(tiny_artifacts["tiny-fp8-fp8-dynamic"])  # reports do not break the checksums


def test_validate_refuses_a_moved_base(tiny_artifacts, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_artifacts["tiny-fp8-fp8-dynamic"], moved)
    (moved / "quantkit.local.json").write_text(json.dumps({"base_model_path": str(tmp_path / "gone")}))
    with pytest.raises(ArtifactError, match="not at .*gone"):
        validate(moved, max_tokens=64)
    (moved / "quantkit.local.json").unlink()  # a copy without the side file: a local base cannot be found again
    with pytest.raises(ArtifactError, match="was a local source on another machine"):
        validate(moved, max_tokens=64)


def test_cli_exit_codes(tiny_artifacts, tmp_path):
    art = str(tiny_artifacts["tiny-int8-w8a8"])
    r = run_cli("validate", "--no-serve", art, "--max-tokens", "128", "--context", "64")
    assert r.returncode == 0, r.stderr
    assert "kld_mean_max" in r.stdout and "tiny-int8-w8a8" in r.stdout
    r = run_cli("validate", "--no-serve", art, "--max-tokens", "128", "--context", "64", "--gate", "recovery_min=0.5")
    assert r.returncode == 1 and "✗" in r.stdout
    assert json.loads((tiny_artifacts["tiny-int8-w8a8"] / "validation.json").read_text())["passed"] is False
    r = run_cli("validate", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not found" in r.stderr
    r = run_cli("validate", "--no-serve", art, "--gate", "bogus=1")
    assert r.returncode == 2


def test_a_broken_artifact_fails_the_default_gates(tiny_artifacts):
    """2-bit round-to-nearest is far from its base: the default KLD gate must catch it
    on a real model; on this random tiny model we check the gate math with a strict gate."""
    report = validate(tiny_artifacts["tiny-rtn-w2a16-g32"], max_tokens=128, context=64,
                      gate_overrides={"kld_mean_max": 1e-4})
    assert not report.passed
    good = validate(tiny_artifacts["tiny-int8-w8a8"], max_tokens=128, context=64, gate_overrides={"kld_mean_max": 1e-3})
    assert good.passed


def test_user_domains(tiny_artifacts, tmp_path):
    from quantkit.sources.heldout import load_domains

    (tmp_path / "legal.jsonl").write_text('{"text": "The party of the first part shall indemnify."}\n' * 40)
    domains = load_domains([f"legal={tmp_path / 'legal.jsonl'}", "code=builtin:code"])
    assert list(domains) == ["legal", "code"] and domains["legal"].read().startswith("The party")
    report = validate(tiny_artifacts["tiny-fp8-fp8-dynamic"], domains=domains, max_tokens=128, context=64, write=False)
    assert [s.domain for s in report.targets[0].scores] == ["legal", "code"]
    with pytest.raises(QuantkitError, match="file not found"):
        load_domains([f"x={tmp_path / 'missing.txt'}"])
    with pytest.raises(QuantkitError, match="NAME=FILE"):
        load_domains(["legal"])
    with pytest.raises(QuantkitError, match="prose and code"):
        load_domains(["x=builtin:poetry"])
    r = run_cli("validate", "--no-serve", str(tiny_artifacts["tiny-fp8-fp8-dynamic"]), "--max-tokens", "64", "--context", "64",
                "--domain", f"legal={tmp_path / 'legal.jsonl'}")
    assert r.returncode in (0, 1) and "legal" in r.stdout


def test_shipped_lm_eval_task_runs_offline(tiny_artifacts, tmp_path, monkeypatch):
    from quantkit.checks import lm_eval_tasks
    from quantkit.tasks import docstring_mc_items

    items = docstring_mc_items()
    assert len(items) >= 50 and all(len(i["choices"]) == 4 and 0 <= i["answer"] < 4 for i in items)
    assert items == docstring_mc_items()  # deterministic
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    scored = []
    real = lm_eval_tasks.run_tasks
    monkeypatch.setattr(lm_eval_tasks, "run_tasks", lambda path, *a: scored.append((path, a[-2:])) or real(path, *a))
    report = validate(tiny_artifacts["tiny-int8-w8a8"], max_tokens=64, context=64,
                      tasks=["quantkit_docstring_mc"], task_limit=20, write=False)
    again = validate(tiny_artifacts["tiny-fp8-fp8-dynamic"], max_tokens=64, context=64,
                     tasks=["quantkit_docstring_mc"], task_limit=20, write=False)
    # the base's task scores were computed once (cached for the second artifact of the same base); same device and dtype
    base = Path(quantkit.Artifact.load(tiny_artifacts["tiny-int8-w8a8"]).base_path)
    assert [Path(p) for p, _ in scored] == [base, tiny_artifacts["tiny-int8-w8a8"], tiny_artifacts["tiny-fp8-fp8-dynamic"]]
    assert all(options == (report.settings["device"], report.settings["dtype"]) for _, options in scored)
    base_acc = [next(c for c in r.targets[0].checks if c.check == "lm_eval").per_domain["quantkit_docstring_mc"]["base_acc"]
                for r in (report, again)]
    assert base_acc[0] == base_acc[1]
    lm = next(c for c in report.targets[0].checks if c.check == "lm_eval")
    assert lm.status == "measured"
    per = lm.per_domain["quantkit_docstring_mc"]
    assert 0 <= per["acc"] <= 1 and 0 <= per["base_acc"] <= 1
    assert lm.sample["quantkit_docstring_mc"]["documents"] == 20
    gate = next(g for g in report.targets[0].gates if g.gate == "recovery_min")
    assert gate.threshold == 0.95 and gate.metric == "recovery"


def test_run_report_html(tiny_artifacts, tmp_path):
    folder = next(iter(tiny_artifacts.values())).parent
    r = run_cli("validate", "--no-serve", str(folder), "--max-tokens", "64", "--context", "64", "--gate", "kld_mean_max=100",
                "--gate", "ppl_increase_max=100")
    assert r.returncode == 0, r.stderr
    page = (folder / "validation.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # size vs KLD, per-domain ppl, KLD by position
    doc = json.loads((next(iter(tiny_artifacts.values())) / "validation.json").read_text())
    assert len(doc["targets"][0]["domains"][0]["kld_by_position"]) == 8
    for name in tiny_artifacts:
        assert name in page
    assert "all gates pass" in page


def test_recipe_gates_apply_and_cli_overrides_win(tiny_model, tmp_path):
    out = tmp_path / "out"
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(tiny_recipe_text(tiny_model, out, "  - {method: fp8, name: f, gates: {kld_mean_max: 0.0}}\n"))
    quantkit.quantize(quantkit.load_recipe(recipe_path))
    report = validate(out / "f", max_tokens=64, context=64, write=False)  # gates recorded in the manifest
    g = next(g for g in report.targets[0].gates if g.gate == "kld_mean_max")
    assert g.threshold == 0.0 and not g.passed
    r = run_cli("validate", "--no-serve", str(out), "--recipe", str(recipe_path), "--max-tokens", "64", "--context", "64")
    assert r.returncode == 1
    r = run_cli("validate", "--no-serve", str(out), "--recipe", str(recipe_path), "--max-tokens", "64", "--context", "64",
                "--gate", "kld_mean_max=10")
    assert r.returncode == 0, r.stdout + r.stderr
    with pytest.raises(quantkit.RecipeError, match="kld_mean_max"):
        quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, "  - {method: fp8, gates: {kld_max: 1}}\n"))


def test_serving_class_of_weight_only_8_bit_and_2_bit(tiny_artifacts):
    from quantkit.serving.support import serving_class

    assert serving_class(tiny_artifacts["twin-w8a16"]) == "W8A16"  # no vLLM CPU kernel on any ISA
    assert serving_class(tiny_artifacts["twin-w8a8"]) == "W8A8"
    [two_bit] = [p for name, p in tiny_artifacts.items() if "rtn" in name and "twin" not in name]
    assert serving_class(two_bit) is None  # quantkit has no rule: vLLM's own start decides
