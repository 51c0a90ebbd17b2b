"""`quantkit.validate`: evaluate artifacts against their unquantized base, apply gates, write reports.

Each artifact is evaluated with the runtime that will serve it: transformers for
compressed-tensors checkpoints (activation quantization included), llama.cpp's own
perplexity/KL tool for GGUF files. Texts default to the built-in held-out domains (prose and
code), which never overlap the calibration sets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from quantkit.artifact import MANIFEST_NAME, SERVE_LOGS, Artifact, utc_now
from quantkit.checks import CHECKS, CheckContext
from quantkit.errors import ArtifactError, QuantkitError
from quantkit.gates import RECOVERY_MIN_DEFAULT, SERVE_DEFAULTS, SPEC_DEFAULTS, GateResult, default_gates, evaluate_gates
from quantkit.progress import NullReporter, Reporter
from quantkit.runtimes.base import DomainScores

if TYPE_CHECKING:
    from quantkit.checks.serve import ServeSettings

REPORT_VERSION = 1
DEFAULT_DOMAINS = ("prose", "code")


@dataclass
class EvaluatedTarget:
    """One deployable file or checkpoint: a compressed-tensors artifact, or one GGUF type."""

    artifact: str
    target: str
    method: str
    scheme: str
    size_bytes: int
    runtime: str
    scores: list[DomainScores]
    path: Path | None = None  # the folder or GGUF file evaluated
    runtime_unavailable: str | None = None  # set when the runtime could not run: its checks are skipped
    checks: list = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact, "target": self.target, "method": self.method, "scheme": self.scheme,
            "size_bytes": self.size_bytes, "runtime": self.runtime, "passed": self.passed,
            "runtime_unavailable": self.runtime_unavailable,
            "domains": [s.to_dict() for s in self.scores],
            "checks": [c.to_dict() for c in self.checks],
            "gates": [g.to_dict() for g in self.gates],
        }


@dataclass
class ValidationReport:
    path: Path
    settings: dict
    targets: list[EvaluatedTarget]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    def to_dict(self) -> dict:
        return {"report_version": REPORT_VERSION, "created": utc_now(), "artifact": str(self.path),
                "passed": self.passed, "settings": self.settings, "targets": [t.to_dict() for t in self.targets]}


def load_domains(specs: list[str] | None, text_field: str = "text") -> dict[str, str] | None:
    """`NAME=FILE` (JSONL/JSON/TXT/parquet, records joined by blank lines) or `NAME=builtin:prose|code`."""
    from quantkit.sources.calibration import _file_texts, builtin_domain_text

    if not specs:
        return None
    domains = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise QuantkitError(f"--domain {spec!r}: expected NAME=FILE or NAME=builtin:prose|code")
        if name in domains:
            raise QuantkitError(f"--domain {name} given twice")
        if source.startswith("builtin:"):
            builtin = source.removeprefix("builtin:")
            if builtin not in DEFAULT_DOMAINS:
                raise QuantkitError(f"--domain {spec!r}: built-in held-out domains are prose and code")
            domains[name] = builtin_domain_text(builtin, 200_000)
            continue
        path = Path(source).expanduser()
        if not path.is_file():
            raise QuantkitError(f"--domain {name}: file not found: {path.resolve()}")
        domains[name] = "\n\n".join(_file_texts(path, text_field))
    return domains


def evaluation_texts(domains: dict[str, str] | None, max_tokens: int) -> dict[str, str]:
    from quantkit.sources.calibration import builtin_domain_text

    if domains:
        return domains
    # ~3-4 characters per token; llama.cpp needs twice the scored tokens (it scores half of each
    # chunk); the runtimes cut at max_tokens scored tokens
    return {d: builtin_domain_text(d, max_tokens * 10) for d in DEFAULT_DOMAINS}


def validate(
    path: str | Path,
    *,
    gate_overrides: dict[str, float] | None = None,
    context: int = 512,
    stride: int | None = None,
    max_tokens: int = 4096,
    domains: dict[str, str] | None = None,
    tasks: list[str] | None = None,
    task_limit: int | None = None,
    recipe_gates: dict[str, float] | None = None,
    serve: "ServeSettings | None" = None,
    reporter: Reporter | None = None,
    write: bool = True,
) -> ValidationReport:
    """Evaluate one artifact folder; writes validation.json and validation.md into it.

    `serve` adds the vLLM serving smoke test (quantkit.checks.serve); None leaves it out.

    Gate thresholds: the output's precision-class defaults, then the output's `gates` from its
    recipe (`recipe_gates`, else the ones recorded in the manifest), then `gate_overrides`.
    """
    reporter = reporter or NullReporter()
    art = Artifact.load(path)  # checksums first: never evaluate a modified artifact
    stride = stride or context
    if not 1 <= stride <= context:
        raise QuantkitError(f"stride must be between 1 and the context length {context}; got {stride}")
    texts = evaluation_texts(domains, max_tokens)
    settings = {"context": context, "stride": stride, "max_tokens": max_tokens, "domains": list(texts),
                "tasks": list(tasks or []), "task_limit": task_limit,
                "serve": serve.options.to_dict() if serve is not None else None}
    base_folder = _base_folder(art)
    if art.manifest["format"] == "gguf":
        targets = _validate_gguf(art, base_folder, texts, context, max_tokens, reporter)
    else:
        targets = [_validate_transformers(art, base_folder, texts, context, stride, max_tokens, reporter)]
    for t in targets:
        ctx = CheckContext(t.scores, t.path or art.path, base_folder, art.manifest["format"], list(tasks or []), task_limit,
                           runtime_unavailable=t.runtime_unavailable, serve=serve, name=t.target,
                           log_dir=art.path / SERVE_LOGS)
        t.checks = []
        for check in CHECKS.values():
            with reporter.task(f"{t.target}: {check.name}"):
                t.checks.append(check.run(ctx))
        metrics = {k: v for c in t.checks for k, v in c.metrics.items()}
        gates = default_gates(t.method, t.scheme, art.manifest["output"].get("bits"))
        if tasks and art.manifest["format"] == "compressed-tensors":
            gates["recovery_min"] = RECOVERY_MIN_DEFAULT
        serve_check = next((c for c in t.checks if c.check == "serve"), None)
        serve_unsupported = serve_check is not None and serve_check.status == "unsupported"
        if (serve is not None and serve.applies_gates and (art.manifest["format"] != "gguf" or serve.explicit)
                and (serve.explicit or not serve_unsupported)):
            gates.update(SERVE_DEFAULTS)
            if serve.options.speculative:
                gates.update(SPEC_DEFAULTS)
        gates.update(recipe_gates if recipe_gates is not None else art.manifest["output"].get("gates") or {})
        gates.update(gate_overrides or {})
        t.gates = evaluate_gates(gates, metrics)
    report = ValidationReport(art.path, settings, targets)
    if write:
        write_reports(report)
    return report


def _base_folder(art: Artifact) -> Path:
    from quantkit.sources.models import fingerprint_folder

    base = art.manifest["base_model"]
    folder = Path(base["path"])
    if not (folder / "config.json").is_file():
        raise ArtifactError(
            f"the base model of {art.path} is not at {folder} any more; re-run `quantkit quantize` "
            f"(model source '{base['source']}') to restore it"
        )
    if fingerprint_folder(folder)[0] != base["fingerprint"]:
        raise ArtifactError(f"the base model at {folder} has changed since {art.path} was made (fingerprint differs)")
    return folder


def _validate_transformers(art, base_folder, texts, context, stride, max_tokens, reporter) -> EvaluatedTarget:
    from quantkit.runtimes.transformers import TransformersRuntime, score_lockstep

    with reporter.task(f"loading {art.name} and its base (transformers)"):
        base, quant = TransformersRuntime(base_folder), TransformersRuntime(art.path)
    scores = []
    for domain, text in texts.items():
        ids = base.tokenize(text)[:max_tokens]
        if quant.tokenize(text)[: len(ids)] != ids:
            raise QuantkitError(f"{art.name} tokenizes the '{domain}' text differently from its base; KLD would be meaningless")
        if len(ids) < 2:
            raise QuantkitError(f"the '{domain}' text has fewer than 2 tokens")
        with reporter.task(f"{art.name}: perplexity and KLD on {domain} ({len(ids)} tokens)", tokens=len(ids)):
            scores.append(score_lockstep(base, quant, ids, domain, context=context, stride=stride))
    m = art.manifest
    return EvaluatedTarget(art.name, art.name, m["output"]["method"], m["scheme"], m["size_bytes"], "transformers", scores,
                           path=art.path)


def _validate_gguf(art, base_folder, texts, context, max_tokens, reporter) -> list[EvaluatedTarget]:
    import tempfile

    from quantkit.engines.gguf import check_tokenizer_fidelity, converted_base
    from quantkit.recipe import ModelSpec
    from quantkit.runtimes.llamacpp import base_logits, score_gguf
    from quantkit.sources.models import ResolvedModel
    from quantkit.toolchains.llamacpp import ToolchainError, require_toolchain

    written = art.manifest["engine"]["types"]
    types = [t for t in art.manifest["output"]["types"] if t in written]  # recipe order
    try:
        tc = require_toolchain()
    except ToolchainError as e:
        # reported per type as skipped (its gates fail: an unmeasured metric never passes)
        return [EvaluatedTarget(art.name, f"{art.name}/{q}", "gguf", q, written[q]["bytes"], "llama.cpp", [],
                                path=art.path / written[q]["file"], runtime_unavailable=str(e)) for q in types]
    b = art.manifest["base_model"]
    resolved = ResolvedModel(ModelSpec(source=b["source"]), base_folder, b["kind"], b["fingerprint"], b["weight_bytes"])
    with reporter.task("float reference for llama.cpp (F32 conversion of the base)"):
        f32 = converted_base(tc, resolved, "F32", reporter)
    chunks = max(1, max_tokens // (context - context // 2))
    targets = []
    with tempfile.TemporaryDirectory(prefix="quantkit-validate-") as tmp_name:
        tmp = Path(tmp_name)
        logits = {}
        for domain, text in texts.items():
            check_tokenizer_fidelity(tc, f32, resolved, text=text[:20_000])
            (tmp / f"{domain}.txt").write_text(text)
            with reporter.task(f"reference logits on {domain} (llama-perplexity, F32)", tokens=chunks * context):
                used = base_logits(tc, f32, tmp / f"{domain}.txt", tmp / f"{domain}.logits", context, chunks)
            logits[domain] = (tmp / f"{domain}.logits", used)
        for qtype in types:
            info = written[qtype]
            scores = []
            for domain, (logit_file, used) in logits.items():
                with reporter.task(f"{qtype}: KLD and perplexity on {domain} (llama-perplexity)", tokens=chunks * context):
                    scores.append(score_gguf(tc, art.path / info["file"], logit_file, domain, context, used))
            targets.append(EvaluatedTarget(art.name, f"{art.name}/{qtype}", "gguf", qtype, info["bytes"], "llama.cpp", scores,
                                           path=art.path / info["file"]))
    return targets


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_reports(report: ValidationReport) -> None:
    _atomic_write(report.path / "validation.json", json.dumps(report.to_dict(), indent=2) + "\n")
    _atomic_write(report.path / "validation.md", markdown_table(report))


def markdown_table(report: ValidationReport) -> str:
    lines = [
        f"Validation of `{report.path.name}` against its unquantized base "
        f"(context {report.settings['context']}, stride {report.settings['stride']}, "
        f"up to {report.settings['max_tokens']} tokens per domain).",
        "",
        "| target | domain | tokens | base ppl | ppl | Δppl | mean KLD | p99 KLD | top-1 agree | gates |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in report.targets:
        verdict = "pass" if t.passed else "FAIL: " + ", ".join(
            f"{g.gate} {g.value if g.value is None else round(g.value, 4)} vs {g.threshold}" for g in t.gates if not g.passed
        )
        if t.runtime_unavailable:
            lines.append(f"| {t.target} | — | 0 | — | — | — | — | — | — | SKIPPED ({t.runtime_unavailable}); {verdict} |")
        for s in t.scores:
            lines.append(
                f"| {t.target} | {s.domain} | {s.n_tokens} | {s.base_ppl:.3f} | {s.ppl:.3f} | {s.ppl_increase:+.1%} | "
                f"{s.kld_mean:.4f} | {s.kld_p99:.4f} | {s.top1_agreement:.1%} | {verdict} |"
            )
    serving = [(t, c) for t in report.targets for c in t.checks if c.check == "serve"]
    if report.settings.get("serve") is not None and serving:
        from quantkit.serving.smoke import WORKLOAD_NOTE, summary_line

        lines += ["", f"vLLM serving smoke test (speed workload: {WORKLOAD_NOTE}).", "",
                  "| target | serving |", "|---|---|"]
        lines += [f"| {t.target} | {summary_line(c.to_dict())} |" for t, c in serving]
    return "\n".join(lines) + "\n"


def find_artifacts(path: str | Path) -> list[Path]:
    """An artifact folder, or a folder whose direct subfolders are artifacts."""
    p = Path(path)
    if (p / MANIFEST_NAME).is_file():
        return [p]
    if not p.is_dir():
        raise ArtifactError(f"not found: {p}")
    found = sorted(d for d in p.iterdir() if (d / MANIFEST_NAME).is_file())
    if not found:
        raise ArtifactError(f"{p} is neither an artifact nor a folder of artifacts (no {MANIFEST_NAME} found)")
    return found
