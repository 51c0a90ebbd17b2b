"""The model card pushed with an artifact, generated from its manifest and `validation.json` with
huggingface_hub's ModelCard/ModelCardData (front matter, model-index) and a body of plain Markdown
tables whose numbers are the ones `validate` wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from quantkit.artifact import ATTESTATION_NAME, Artifact
from quantkit.errors import QuantkitError
from quantkit.files import human_bytes
from quantkit.publish.bundle import LOCAL, VALIDATION_NAME, without_local_paths

PROJECT_URL = "https://github.com/quantkit/quantkit"
TEXT_GENERATION = "text-generation"


@dataclass(frozen=True)
class CardContext:
    """What a card says beyond the artifact: where it is pushed and how it was signed."""

    ref: str  # how a user names the pushed model: a hub repo id, or oci://HOST/NAME:TAG
    kind: str  # "hf" | "oci"
    license: str
    base_model_id: str | None
    notes: tuple[str, ...] = ()  # first lines: unvalidated, failed gates
    signer_key_id: str | None = None


def base_model_id(art: Artifact) -> str | None:
    """The base model's hub id when known (a hub source, or the hub model a built-in one was made from)."""
    from quantkit.sources.models import BUILTIN_MODELS

    base = art.manifest.base_model
    if base.kind == "hub":
        return base.origin.get("repo_id") or base.source
    builtin = BUILTIN_MODELS.get(str(base.origin.get("builtin", "")))
    return builtin.hub_id if builtin else None


def base_license(art: Artifact) -> str | None:
    """The base model's license: recorded at quantize time, else the `license` of its model card."""
    base = art.manifest.base_model
    if base.origin.get("license"):
        return str(base.origin["license"])
    readme = art.base_path / "README.md" if art.base_path else None
    if readme and readme.is_file():
        from huggingface_hub import ModelCard

        try:
            found = ModelCard.load(readme, ignore_metadata_errors=True).data.license
        except Exception:  # a malformed card of someone else's model: the license stays unknown
            return None
        return str(found) if found else None
    return None


def tags(art: Artifact) -> list[str]:
    m = art.manifest
    fmt = ["gguf", "llama-cpp"] if m.format == "gguf" else ["compressed-tensors"]
    schemes = [t.scheme for t in art.targets()] if m.format == "gguf" else [m.scheme]
    return ["quantkit", m.method, *fmt, *(s.lower() for s in schemes), "quantized"]


def _f(v, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def eval_results(art: Artifact, report: dict | None) -> list:
    from huggingface_hub import EvalResult

    if not report:
        return []
    results = []
    several = art.manifest.format == "gguf"
    for t in report.get("targets", []):
        suffix = f" ({t['scheme']})" if several else ""
        for d in t.get("domains", []):
            dataset = dict(task_type=TEXT_GENERATION, dataset_type=f"quantkit/holdout-{d['domain']}",
                           dataset_name=f"{d['domain']} held-out text ({d['n_tokens']} tokens)")
            results.append(EvalResult(**dataset, metric_type="perplexity", metric_value=round(d["ppl"], 4),
                                      metric_name=f"perplexity{suffix}", verified=False))
            results.append(EvalResult(**dataset, metric_type="kl_divergence", metric_value=round(d["kld_mean"], 5),
                                      metric_name=f"mean KL divergence to the base{suffix}", verified=False))
        for c in t.get("checks", []):
            if c["check"] == "lm_eval" and c["status"] == "measured":
                for task, v in c["per_domain"].items():
                    results.append(EvalResult(task_type=TEXT_GENERATION, dataset_type=task, dataset_name=task,
                                              metric_type="accuracy", metric_value=round(v["acc"], 4),
                                              metric_name=f"accuracy{suffix}", verified=False))
    return results


def front_matter(art: Artifact, report: dict | None, ctx: CardContext):
    from huggingface_hub import ModelCardData

    m = art.manifest
    results = eval_results(art, report)
    return ModelCardData(
        base_model=ctx.base_model_id,
        base_model_relation="quantized" if ctx.base_model_id else None,
        library_name="gguf" if m.format == "gguf" else "transformers",
        pipeline_tag=TEXT_GENERATION,
        license=ctx.license,
        tags=tags(art),
        model_name=ctx.ref.rsplit("/", 1)[-1],
        eval_results=results or None,
    )


def render(art: Artifact, report: dict | None, ctx: CardContext, prefixes: list[str]) -> str:
    """The card's full text: YAML front matter, then the body."""
    from huggingface_hub import ModelCard

    data = front_matter(art, report, ctx)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body(art, report, ctx, prefixes)}")
    if card.data.to_dict().get("base_model_relation") not in (None, "quantized"):
        raise QuantkitError("the model card's front matter did not round-trip")  # guards a huggingface_hub change
    return str(card)


def body(art: Artifact, report: dict | None, ctx: CardContext, prefixes: list[str]) -> str:
    m = art.manifest
    base_name = ctx.base_model_id or without_local_paths(m.base_model.source, prefixes)
    lines = [f"> **{note}**" for note in ctx.notes]
    if ctx.notes:
        lines.append("")
    lines += [
        f"# {ctx.ref.rsplit('/', 1)[-1]}",
        "",
        f"`{base_name}` quantized with **{m.method.upper()}** to **{_scheme_list(art)}** ({m.format}) by "
        f"[quantkit]({PROJECT_URL}): {m.description}.",
        "",
    ]
    lines += files_section(art, report)
    lines += evaluation_section(report)
    lines += run_section(art, ctx)
    lines += made_section(art, prefixes)
    lines += provenance_section(ctx)
    return "\n".join(lines).rstrip() + "\n"


def _scheme_list(art: Artifact) -> str:
    return ", ".join(t.scheme for t in art.targets())


def files_section(art: Artifact, report: dict | None) -> list[str]:
    m = art.manifest
    if m.format != "gguf":
        out = ["## Files", "", "| file | size |", "|---|---:|"]
        out += [f"| `{rel}` | {human_bytes(rec.bytes)} |" for rel, rec in sorted(m.files.items())]
        ratio = f"; {m.compression_ratio}× smaller than the float base" if m.compression_ratio else ""
        return out + ["", f"Total {human_bytes(m.size_bytes)}{ratio}.", ""]
    kld = {t["scheme"]: _mean_kld(t) for t in (report or {}).get("targets", [])}
    written = m.engine.get("types") or {}  # llama-quantize's own bits per weight, recorded by quantize
    out = ["## Files", "", "One GGUF file per type; pick one.", "",
           "| file | type | size | bits per weight | mean KLD to the base |", "|---|---|---:|---:|---:|"]
    for t in art.targets():
        out.append(f"| `{t.path.name}` | {t.scheme} | {human_bytes(t.bytes)} | {_f(written.get(t.scheme, {}).get('bpw'), 2)} | "
                   f"{_f(kld.get(t.scheme), 5)} |")
    return out + [""]


def _mean_kld(target: dict) -> float | None:
    for c in target.get("checks", []):
        if c["check"] == "kld" and c["status"] == "measured":
            return c["metrics"].get("kld_mean")
    return None


def evaluation_section(report: dict | None) -> list[str]:
    if not report:
        return ["## Evaluation", "", "Not validated: no `validation.json` was pushed.", ""]
    s = report["settings"]
    out = ["## Evaluation", "",
           f"Measured by `quantkit validate` against the unquantized base on held-out text never used for calibration "
           f"(windows of {s['context']} tokens every {s['stride']}, up to {s['max_tokens']} scored tokens per domain; "
           f"{s.get('device', 'cpu')}, {s.get('dtype', 'float32')}). Verdict: **{'PASS' if report['passed'] else 'FAIL'}**.", "",
           "| target | domain | tokens | base ppl | ppl | Δppl | mean KLD | p99 KLD | top-1 agreement |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in report["targets"]:
        if t.get("runtime_unavailable"):
            out.append(f"| {t['target']} | — | 0 | — | — | — | — | — | — |")
        for d in t.get("domains", []):
            out.append(f"| {t['target']} | {d['domain']} | {d['n_tokens']} | {_f(d['base_ppl'])} | {_f(d['ppl'])} | "
                       f"{_f(d['ppl_increase'] * 100, 2)}% | {_f(d['kld_mean'], 5)} | {_f(d['kld_p99'], 5)} | "
                       f"{_f(d['top1_agreement'])} |")
    out += ["", "### Gates", "", "| target | gate | value | threshold | verdict |", "|---|---|---:|---:|---|"]
    for t in report["targets"]:
        for g in t.get("gates", []):
            out.append(f"| {t['target']} | `{g['gate']}` | {_f(g.get('value'), 5)} | {g['threshold']} | "
                       f"{'pass' if g.get('passed') else 'FAIL'} |")
    tasks = [(t, c) for t in report["targets"] for c in t.get("checks", [])
             if c["check"] == "lm_eval" and c["status"] == "measured"]
    if tasks:
        out += ["", "### Tasks (lm-eval)", "", "| target | task | base accuracy | accuracy | recovery |",
                "|---|---|---:|---:|---:|"]
        for t, c in tasks:
            for task, v in c["per_domain"].items():
                out.append(f"| {t['target']} | {task} | {_f(v['base_acc'])} | {_f(v['acc'])} | {_f(v.get('recovery'))} |")
    serving = [(t, c) for t in report["targets"] for c in t.get("checks", []) if c["check"] == "serve"
               and c["status"] in ("measured", "failed")]
    if serving:
        from quantkit.serving.smoke import WORKLOAD_NOTE, summary_line

        out += ["", "### Serving (vLLM)", "", f"Speed workload: {WORKLOAD_NOTE}.", "", "| target | serving |", "|---|---|"]
        out += [f"| {t['target']} | {summary_line(c)} |" for t, c in serving]
    return out + [""]


def run_section(art: Artifact, ctx: CardContext) -> list[str]:
    m = art.manifest
    pulled = "./model"
    if ctx.kind == "oci":
        fetch = ["```bash", f"quantkit pull {ctx.ref} {pulled}", "```", ""]
        where = pulled
    else:
        fetch, where = [], ctx.ref
    out = ["## How to run", ""] + fetch
    if m.format == "gguf":
        for t in art.targets():
            if ctx.kind == "oci":
                out += [f"{t.scheme}:", "", "```bash", f"llama-server -m {pulled}/{t.path.name}", "```", ""]
            else:
                out += [f"{t.scheme}:", "", "```bash", f"llama-server -hf {where}:{t.scheme}",
                        f"ollama run hf.co/{where}:{t.scheme}", "```", ""]
        return out
    return out + [
        "vLLM (reads the compressed-tensors format natively):", "",
        "```bash", f"vllm serve {where}", "```", "",
        "transformers (with `compressed-tensors` installed):", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModelForCausalLM.from_pretrained("{where}", device_map="auto")',
        "```", "",
    ]


def made_section(art: Artifact, prefixes: list[str]) -> list[str]:
    m = art.manifest
    base, cal = m.base_model, m.calibration
    out = ["## How it was made", "",
           f"- Base model: `{without_local_paths(base.source, prefixes)}` ({base.kind}), "
           f"quantkit fingerprint `{base.fingerprint}`"]
    if cal:
        source = without_local_paths(cal.source, prefixes)
        out.append(f"- Calibration: `{source}`, {cal.num_samples} samples × {cal.seq_len} tokens "
                   f"({cal.num_tokens} tokens), fingerprint `{cal.fingerprint}`")
    else:
        out.append("- Calibration: none (the method needs no data)")
    out.append(f"- Output `{m.name}`: {m.method} {_scheme_list(art)}, made {m.created}")
    libs = dict(m.libraries)
    toolchain = m.engine.get("toolchain") or m.engine.get("llama_cpp")
    if toolchain:
        libs["llama.cpp"] = str(toolchain.get("version") or toolchain.get("commit") or toolchain) \
            if isinstance(toolchain, dict) else str(toolchain)
    out += ["", "| library | version |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(libs.items())]
    recipe = without_local_paths(m.recipe, prefixes)
    if recipe:
        recipe["outputs"] = [o for o in recipe.get("outputs", []) if o.get("name") == m.name] or recipe.get("outputs", [])
        out += ["", "### Reproduce", "", "The recipe (this output only):", "", "```yaml",
                yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "", "```bash",
                f"quantkit quantize recipe.yaml --only {m.name}", f"quantkit validate out/{m.name}", "```"]
        if any(LOCAL in json.dumps(v) for v in recipe.values()):
            out += ["", f"`{LOCAL}` stands for a path on the machine that made it."]
    return out + [""]


def provenance_section(ctx: CardContext) -> list[str]:
    out = ["## Provenance", "",
           f"`{ATTESTATION_NAME}` is an in-toto statement (SLSA provenance v1 predicate) over the sha256 of every "
           f"file here, recording the base model, the recipe, the calibration set, the tool versions and "
           f"`{VALIDATION_NAME}`'s verdict."]
    if ctx.signer_key_id:
        out += [f"It is signed (DSSE) by the key with id `{ctx.signer_key_id}`. Check it with:", "",
                "```bash", f"quantkit verify {ctx.ref if ctx.kind == 'oci' else 'hf://' + ctx.ref} --key PUBLIC_KEY.pem", "```"]
    else:
        out += ["It is **not signed** (pushed without `--sign-key`): it records digests, not who made them."]
    return out + [""]
