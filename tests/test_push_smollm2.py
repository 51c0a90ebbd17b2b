"""quantkit push on real SmolLM2 artifacts: the card's front matter and tables against validation.json,
the run snippets per format, and a GPTQ artifact pulled back from a real registry validated again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import GGUF, GGUF_TYPES
from oci_registry import LoopbackRegistry
from test_push import require_registry

from quantkit.publish.destinations import destination_for
from quantkit.publish.verbs import PushSettings, prepare, pull, push
from quantkit.validate import validate

pytestmark = pytest.mark.e2e

GPTQ = "smollm2-135m-gptq-w4a16"
SETTINGS = {"max_tokens": 512, "context": 256}


@pytest.fixture(scope="module")
def validated(artifacts, tmp_path_factory) -> dict[str, Path]:
    """Copies of two shipped-recipe artifacts, validated with the default gates (whatever the verdict)."""
    out, _, _ = artifacts
    folder = tmp_path_factory.mktemp("push-smollm2")
    copies = {}
    for name in (GPTQ, GGUF):
        copy = Path(shutil.copytree(out / name, folder / name, ignore=shutil.ignore_patterns("validation.*", "serve-logs")))
        validate(copy, **SETTINGS)
        copies[name] = copy
    return copies


def card_of(folder: Path, ref: str = "my-org/smol") -> tuple[str, dict]:
    bundle = prepare(folder, destination_for(ref), PushSettings(allow_failed=True))
    return bundle.file("README.md").data.decode(), json.loads((folder / "validation.json").read_text())


def table_rows(card: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with `header`."""
    lines = card.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("name", [GPTQ, GGUF])
def test_card_front_matter_and_every_number_match_validation(validated, name):
    from huggingface_hub import ModelCard

    card, report = card_of(validated[name])
    data = ModelCard(card).data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.base_model_relation == "quantized"
    assert data.license == "apache-2.0" and data.pipeline_tag == "text-generation"
    fmt = "gguf" if name == GGUF else "compressed-tensors"
    assert {"quantkit", fmt}.issubset(data.tags)
    assert data.library_name == ("gguf" if name == GGUF else "transformers")

    domains = {(t["target"], d["domain"]): d for t in report["targets"] for d in t["domains"]}
    rows = table_rows(card, "| target | domain | tokens |")
    assert {(r[0], r[1]) for r in rows} == set(domains)
    for target, domain, tokens, base_ppl, ppl, dppl, kld, p99, top1 in rows:
        d = domains[(target, domain)]  # each number is validation.json's, rounded to the digits shown
        assert int(tokens) == d["n_tokens"]
        assert (base_ppl, ppl, top1) == (f"{d['base_ppl']:.4f}", f"{d['ppl']:.4f}", f"{d['top1_agreement']:.4f}")
        assert dppl == f"{d['ppl_increase'] * 100:.2f}%"
        assert (kld, p99) == (f"{d['kld_mean']:.5f}", f"{d['kld_p99']:.5f}")

    gates = {(t["target"], g["gate"]): g for t in report["targets"] for g in t["gates"]}
    gate_rows = table_rows(card, "| target | gate |")
    assert len(gate_rows) == len(gates)
    for target, gate, value, threshold, verdict in gate_rows:
        g = gates[(target, gate.strip("`"))]
        assert value == f"{g['value']:.5f}" and float(threshold) == g["threshold"]
        assert verdict == ("pass" if g["passed"] else "FAIL")
    first_line = card.split("---", 2)[2].lstrip().splitlines()[0]
    assert first_line.startswith("> **FAILED VALIDATION") == (not report["passed"])

    # model-index: the same numbers, one perplexity and one KLD per target and domain
    results = {(r.metric_type, r.dataset_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert len(results) == 2 * len(domains)
    for (target, domain), d in domains.items():
        suffix = f" ({target.split('/')[-1]})" if name == GGUF else ""
        assert results[("perplexity", f"quantkit/holdout-{domain}", f"perplexity{suffix}")] == round(d["ppl"], 4)
        assert results[("kl_divergence", f"quantkit/holdout-{domain}", f"mean KL divergence to the base{suffix}")] == \
            round(d["kld_mean"], 5)


def test_run_snippets_match_the_format(validated):
    gptq, _ = card_of(validated[GPTQ], "my-org/smol-gptq")
    assert "vllm serve my-org/smol-gptq" in gptq and 'from_pretrained("my-org/smol-gptq"' in gptq
    assert "llama-server" not in gptq and "ollama" not in gptq

    gguf, report = card_of(validated[GGUF], "my-org/smol-gguf")
    assert "vllm serve" not in gguf and "from_pretrained" not in gguf
    manifest = json.loads((validated[GGUF] / "quantkit.json").read_text())
    kld = {t["scheme"]: next(c for c in t["checks"] if c["check"] == "kld")["metrics"]["kld_mean"] for t in report["targets"]}
    files = {r[1]: r for r in table_rows(gguf, "| file | type |")}
    assert set(files) == set(GGUF_TYPES)
    for qtype in GGUF_TYPES:
        assert f"llama-server -hf my-org/smol-gguf:{qtype}" in gguf and f"ollama run hf.co/my-org/smol-gguf:{qtype}" in gguf
        written = manifest["engine"]["types"][qtype]
        name, _, size, bpw, mean_kld = files[qtype]
        assert name.strip("`") == written["file"] and bpw == f"{written['bpw']:.2f}" and mean_kld == f"{kld[qtype]:.5f}"

    oci, _ = card_of(validated[GGUF], "oci://localhost:5000/models/smol:gguf")
    assert "quantkit pull oci://localhost:5000/models/smol:gguf ./model" in oci
    assert "llama-server -m ./model/smollm2-135m-gguf-Q4_K_M.gguf" in oci
    from huggingface_hub import ModelCard

    assert ModelCard(oci).data.model_name == "smol:gguf"


def test_a_pulled_artifact_validates_against_its_builtin_base(validated, tmp_path):
    require_registry()
    with LoopbackRegistry(tmp_path / "registry") as registry:
        ref = f"oci://{registry.host}/smollm2/gptq:w4a16"
        [outcome] = push(validated[GPTQ], ref, settings=PushSettings(allow_failed=True))
        assert outcome.result.sent_bytes == outcome.bundle.size - outcome.bundle.file("quantkit-provenance.intoto.json").size
        pulled = pull(ref, tmp_path / "pulled")
    again = validate(pulled, **SETTINGS)
    before = json.loads((validated[GPTQ] / "validation.json").read_text())
    [target] = again.targets
    for scores, d in zip(target.scores, before["targets"][0]["domains"]):
        assert scores.kld_mean == pytest.approx(d["kld_mean"], rel=1e-6) and scores.ppl == pytest.approx(d["ppl"], rel=1e-6)
