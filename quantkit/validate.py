"""`quantkit.validate`: evaluate artifacts against their unquantized base, apply gates, write reports.

Each artifact is evaluated with the runtime that will serve it: transformers for
compressed-tensors checkpoints (activation quantization included), llama.cpp's own
perplexity/KL tool for GGUF files. Texts default to the built-in held-out domains (prose and
code), which never overlap the calibration sets.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from quantkit.artifact import MANIFEST_NAME, SERVE_LOGS, TRACKED_LIBRARIES, Artifact, library_versions, utc_now
from quantkit.checks import CheckContext, build_checks
from quantkit.device import resolve_device, resolve_dtype
from quantkit.errors import ArtifactError, QuantkitError
from quantkit.files import atomic_write_text, cache_dir, sha256_file
from quantkit.gates import GateResult, check_thresholds, evaluate_gates
from quantkit.memory import PeakRSS
from quantkit.progress import NullReporter, Reporter
from quantkit.runtimes import BaseFolder, DomainScores, EvaluationSettings, runtime_for
from quantkit.sources.heldout import DomainText, check_domain_file

if TYPE_CHECKING:
    from quantkit.checks.serve import ServeSettings

REPORT_VERSION = 1
DEFAULT_DOMAINS = ("prose", "code")
VALIDATION_LIBRARIES = (*TRACKED_LIBRARIES, "lm-eval")


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
    device: str | None = None  # where the runtime ran (--device applies to transformers; llama.cpp runs on the CPU)
    checks: list = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact, "target": self.target, "method": self.method, "scheme": self.scheme,
            "size_bytes": self.size_bytes, "runtime": self.runtime, "device": self.device, "passed": self.passed,
            "runtime_unavailable": self.runtime_unavailable,
            "domains": [s.to_dict() for s in self.scores],
            "checks": [c.to_dict() for c in self.checks],
            "gates": [g.to_dict() for g in self.gates],
        }


@dataclass(frozen=True)
class BaseUsed:
    """The base an artifact was scored against, as validation.json records it."""

    path: Path
    fingerprint: str  # of that folder
    recorded_fingerprint: str  # the one in the artifact's manifest
    given: str | None = None  # --base as given; None: found from the artifact itself

    @property
    def matches(self) -> bool:
        return self.fingerprint == self.recorded_fingerprint

    def to_dict(self) -> dict:
        return {"path": str(self.path), "given": self.given, "fingerprint": self.fingerprint,
                "recorded_fingerprint": self.recorded_fingerprint, "fingerprint_matches": self.matches}


@dataclass
class ValidationReport:
    path: Path
    settings: dict
    targets: list[EvaluatedTarget]
    resources: dict = field(default_factory=dict)  # wall time, peak memory
    libraries: dict = field(default_factory=dict)
    base: BaseUsed | None = None

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    def to_dict(self) -> dict:
        return {"report_version": REPORT_VERSION, "created": utc_now(), "artifact": str(self.path),
                "manifest_sha256": sha256_file(self.path / MANIFEST_NAME), "passed": self.passed,
                "base": self.base.to_dict() if self.base else None, "settings": self.settings, "resources": self.resources,
                "libraries": self.libraries, "targets": [t.to_dict() for t in self.targets]}


def load_domains(specs: list[str] | None, text_field: str = "text") -> dict[str, DomainText] | None:
    """`NAME=FILE` (JSONL/JSON/TXT/parquet, records joined by blank lines) or `NAME=builtin:prose|code`.
    A file is checked now (its type, its first record) and read later only as far as validation scores."""
    from quantkit.sources.calibration import builtin_domain_text

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
            domains[name] = DomainText.of(builtin_domain_text(builtin, 200_000))
            continue
        path = Path(source).expanduser()
        if not path.is_file():
            raise QuantkitError(f"--domain {name}: file not found: {path.resolve()}")
        check_domain_file(path, text_field)
        domains[name] = DomainText.from_file(path, text_field)
    return domains


def domain_text(path: Path, text_field: str = "text") -> str:
    """The whole text of a domain file, as the user wrote it: a .txt file byte for byte (decoded
    as UTF-8); the records of .jsonl/.json/.parquet joined with one blank line between them,
    each record unchanged (no stripping). Validation reads only its scored prefix (DomainText.prefix)."""
    check_domain_file(path, text_field)
    return DomainText.from_file(path, text_field).read()


def evaluation_texts(domains: dict[str, str | DomainText] | None, max_tokens: int) -> dict[str, str | DomainText]:
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
    device: str = "auto",
    dtype: str = "auto",
    domains: dict[str, str | DomainText] | None = None,
    base: str | Path | None = None,
    allow_base_mismatch: bool = False,
    tasks: list[str] | None = None,
    task_limit: int | None = None,
    recipe_gates: dict[str, float] | None = None,
    serve: "ServeSettings | None" = None,
    reporter: Reporter | None = None,
    write: bool = True,
    **check_options,
) -> ValidationReport:
    """Evaluate one artifact folder; writes validation.json and validation.md into it (`write`).

    `base`: the float base to score against (a folder, hub id or built-in name; default: the one the
    artifact records). Its fingerprint must be the recorded one unless `allow_base_mismatch`, which
    validation.json then records. Each domain's text is read only as far as `max_tokens` needs.

    `serve` adds the vLLM serving smoke test (quantkit.checks.serve); None leaves it out.
    `check_options` go to the checks whose constructors name them (quantkit.checks.build_checks).

    Gate thresholds: each check's defaults for the target (precision class, tasks, serving), then
    the output's `gates` from its recipe (`recipe_gates`, else the ones recorded in the manifest),
    then `gate_overrides`.
    """
    reporter = reporter or NullReporter()
    device = resolve_device(device)  # bad input fails before any heavy work
    dtype = resolve_dtype(dtype, device)
    stride = check_window_settings(context, stride, max_tokens)
    check_thresholds(gate_overrides or {}, "gate_overrides:")
    started = time.perf_counter()
    with PeakRSS() as peak:
        if device != "cpu":
            import torch

            torch.cuda.init()  # the peak-memory counters raise "Invalid device argument" before CUDA is initialised
            torch.cuda.reset_peak_memory_stats(device)
        art = Artifact.load(path)  # checksums first: never evaluate a modified artifact
        if write:
            check_writable(art.path)  # before the evaluation, not after it
        texts = {name: DomainText.of(t) for name, t in evaluation_texts(domains, max_tokens).items()}
        settings = {"context": context, "stride": stride, "max_tokens": max_tokens, "domains": list(texts),
                    "device": device, "dtype": dtype, "tasks": list(tasks or []), "task_limit": task_limit,
                    "serve": serve.options.to_dict() if serve is not None else None}
        checks = build_checks(tasks=tasks, task_limit=task_limit, serve=serve, device=device, dtype=dtype, **check_options)
        base_used = find_base(art, base, allow_base_mismatch)
        if not base_used.matches:
            reporter.log(f"base {base_used.path}: fingerprint {base_used.fingerprint[:12]} differs from the recorded "
                         f"{base_used.recorded_fingerprint[:12]} (allowed: --allow-base-mismatch; recorded in the report)")
        base_folder = BaseFolder(base_used.path, base_used.fingerprint)
        runtime = runtime_for(art.manifest.format)
        if runtime.work_in_subprocesses:
            peak.watch_tools()
        scored = runtime.evaluate(art, base_folder, texts, EvaluationSettings(context, stride, max_tokens, device, dtype),
                                  reporter)
        # --no-write leaves the artifact folder untouched: the serving check's logs go to the cache instead
        log_dir = art.path / SERVE_LOGS if write else cache_dir() / "serve-logs" / art.name
        targets = _check_targets(art, scored, base_folder, checks, recipe_gates, gate_overrides, reporter, log_dir)
    resources = {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_bytes": peak.bytes,
                 "peak_rss_note": ("the validating process and its largest child process (llama.cpp's tools)" if peak.tools
                                   else "the validating process") + f"; this figure: {peak.method}"}
    if device != "cpu":
        import torch

        resources["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    report = ValidationReport(art.path, settings, targets, resources, library_versions(VALIDATION_LIBRARIES), base_used)
    if write:
        kept = write_reports(report)
        if kept:
            reporter.log(kept)
    return report


def _check_targets(art, scored, base_folder, checks, recipe_gates, gate_overrides, reporter, log_dir) -> list[EvaluatedTarget]:
    targets = []
    for st in scored:
        t = st.target
        evaluated = EvaluatedTarget(art.name, t.name, t.method, t.scheme, t.bytes, st.runtime, st.scores, path=t.path,
                                    runtime_unavailable=st.unavailable, device=st.device)
        ctx = CheckContext(t, st.scores, base_folder.path, base_folder.fingerprint, st.unavailable, log_dir=log_dir)
        gates: dict[str, float] = {}
        for check in checks:
            with reporter.task(f"{t.name}: {check.name}"):
                result = check.run(ctx)
            evaluated.checks.append(result)
            gates.update(check.default_gates(t, result))
        metrics = {k: v for c in evaluated.checks for k, v in c.metrics.items()}
        gates.update(recipe_gates if recipe_gates is not None else art.manifest.gates)
        gates.update(gate_overrides or {})
        evaluated.gates = evaluate_gates(gates, metrics)
        targets.append(evaluated)
    return targets


def check_window_settings(context: int, stride: int | None, max_tokens: int) -> int:
    """Refuse impossible window settings before any work; returns the stride (default: half a context)."""
    if context < 2:
        raise QuantkitError(f"--context {context}: must be at least 2 tokens")
    stride = context // 2 if stride is None else stride
    if not 1 <= stride <= context:
        raise QuantkitError(f"--stride {stride}: must be between 1 and the context length {context}")
    if max_tokens < 1:
        raise QuantkitError(f"--max-tokens {max_tokens}: must be at least 1 scored token")
    return stride


def validate_run(path: str | Path, *, recipe: str | Path | None = None, reporter: Reporter | None = None,
                 **options) -> list[ValidationReport]:
    """Validate every artifact under `path` (one artifact folder, or a folder of them), or, with `recipe`,
    the artifacts that recipe writes into `path`, each with the recipe's gates. `options` go to `validate`."""
    check_window_settings(options.get("context", 512), options.get("stride"), options.get("max_tokens", 4096))
    path = Path(path)
    recipe_gates: dict[str, dict] | None = None
    if recipe is not None:
        from quantkit.matrix import jobs
        from quantkit.recipe_loader import load_recipe

        selected = jobs(load_recipe(recipe), path)  # a matrix's too, where quantize and status put them
        folders = [Path(j.dest) for j in selected]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise ArtifactError(f"{recipe} names outputs that are not in {path}: {', '.join(missing)}")
        recipe_gates = {str(Path(j.dest)): dict(j.output.gates) for j in selected}
    else:
        folders = find_artifacts(path)
    return [validate(folder, recipe_gates=recipe_gates.get(str(folder)) if recipe_gates is not None else None,
                     reporter=reporter, **options) for folder in folders]


def find_base(art: Artifact, given: str | Path | None = None, allow_mismatch: bool = False) -> BaseUsed:
    """The base model's folder: `given` (--base: a folder, hub id or built-in name), else where quantize
    found it, else (an artifact pulled from a hub or registry, whose manifest drops local paths) found
    again from its source when that is a built-in model or a hub id in the local cache. Its fingerprint
    must be the recorded one, unless `allow_mismatch` (the report then says it differed)."""
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import fingerprint_folder, resolve_model

    recorded = art.manifest.base_model
    model = art.manifest.recipe.get("model") or {}
    spec = dict(dtype=str(model.get("dtype", "float32")), trust_remote_code=model.get("trust_remote_code") is True,
                allow_pickle=model.get("allow_pickle") is True)
    if given is not None:
        given = str(given)
        revision = recorded.revision if given == recorded.source else None
        resolved = resolve_model(ModelSpec(source=given, revision=revision, **spec))
        folder, fingerprint = resolved.path, resolved.fingerprint
    else:
        folder = art.base_path
        if folder is None or not (folder / "config.json").is_file():
            if recorded.kind not in ("builtin", "hub"):
                where = f"is not at {folder} any more" if folder else f"was a {recorded.kind} source on another machine"
                raise ArtifactError(f"the base model of {art.path} {where}; name it with --base PATH|ORG/NAME, or re-run "
                                    f"`quantkit quantize` (model source '{recorded.source}') to restore it")
            folder = resolve_model(ModelSpec(source=recorded.source, revision=recorded.revision, **spec)).path
        fingerprint = fingerprint_folder(folder, spec["allow_pickle"])[0]
    used = BaseUsed(Path(folder), fingerprint, recorded.fingerprint, given)
    if not used.matches and not allow_mismatch:
        what = f"--base {given}" if given is not None else f"the base model at {folder}"
        raise ArtifactError(f"{what} has fingerprint {fingerprint[:12]}, not the {recorded.fingerprint[:12]} {art.path} "
                            "was made from (fingerprint differs); pass --allow-base-mismatch to validate against it anyway "
                            "(validation.json records it)")
    return used


def check_writable(folder: Path) -> None:
    """Refuse, before any evaluation, an artifact folder validate cannot write its reports into."""
    probe = folder / f".quantkit-write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ArtifactError(_unwritable(folder, e)) from None


def _unwritable(folder: Path, e: OSError) -> str:
    why = "no space left on its disk" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return (f"cannot write validation reports into {folder} ({why}); copy the artifact to a writable folder, "
            "or pass --no-write to print the results without writing reports")


def write_reports(report: ValidationReport) -> str | None:
    """validation.json and validation.md; a pulled artifact's attested validation.json is kept first (the line
    saying so is returned), so `quantkit verify` still checks the folder."""
    from quantkit.publish.provenance import keep_attested_report

    try:
        kept = keep_attested_report(report.path)
        atomic_write_text(report.path / "validation.json", json.dumps(report.to_dict(), indent=2) + "\n")
        atomic_write_text(report.path / "validation.md", markdown_table(report))
    except OSError as e:
        raise ArtifactError(_unwritable(report.path, e)) from None
    return kept


def markdown_table(report: ValidationReport) -> str:
    lines = [
        f"Validation of `{report.path.name}` against its unquantized base "
        f"(context {report.settings['context']}, stride {report.settings['stride']}, "
        f"up to {report.settings['max_tokens']} tokens per domain).",
        *(["", f"Base: `{report.base.path}`, fingerprint {report.base.fingerprint[:12]}, which differs from the "
           f"{report.base.recorded_fingerprint[:12]} this artifact was made from (--allow-base-mismatch)."]
          if report.base is not None and not report.base.matches else []),
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
