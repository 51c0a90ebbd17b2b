"""`quantkit.validate`: evaluate artifacts against their unquantized base, apply gates, write reports.

Each artifact is evaluated with the runtime that will serve it: transformers for
compressed-tensors checkpoints (activation quantization included), llama.cpp's own
perplexity/KL tool for GGUF files. Texts default to the built-in held-out domains (prose and
code), which never overlap the calibration sets.
"""

from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from quantkit.artifact import MANIFEST_NAME, SERVE_LOGS, TRACKED_LIBRARIES, Artifact, library_versions, utc_now
from quantkit.checks import CheckContext, build_checks
from quantkit.coverage import check_artifact
from quantkit.device import resolve_device, resolve_dtype
from quantkit.errors import ArtifactError, QuantkitError
from quantkit.files import atomic_write_text, cache_dir, sha256_file
from quantkit.gates import check_thresholds, evaluate_gates
from quantkit.memory import PeakRSS
from quantkit.progress import NullReporter, Reporter
from quantkit.report.markdown import validation_markdown
from quantkit.report.model import (
    REPORT_VERSION,
    BaseUsed,
    CheckResult,
    DomainRow,
    EvaluatedTarget,
    GateRecord,
    Resources,
    ValidationReport,
    ValidationSettings,
    report_json,
)
from quantkit.runtimes import BaseFolder, EvaluationSettings, runtime_for
from quantkit.sources.heldout import DomainText, evaluation_texts

if TYPE_CHECKING:
    from quantkit.checks.serve import ServeSettings

VALIDATION_LIBRARIES = (*TRACKED_LIBRARIES, "lm-eval")


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
    runtime: str | None = None,
    **check_options,
) -> ValidationReport:
    """Evaluate one artifact folder; writes validation.json and validation.md into it (`write`).

    `base`: the float base to score against (a folder, hub id or built-in name; default: the one the
    artifact records). Its fingerprint must be the recorded one unless `allow_base_mismatch`, which
    validation.json then records. Each domain's text is read only as far as `max_tokens` needs.

    `serve` adds the vLLM serving smoke test (quantkit.checks.serve); None leaves it out.
    `runtime`: which runtime scores the artifact (quantkit.runtimes.RUNTIMES under its format); None: the
    format's default.
    `check_options` go to the checks whose constructors name them (quantkit.checks.build_checks).

    Gate thresholds: each check's defaults for the target (precision class, tasks, serving), then
    the output's `gates` from its recipe (`recipe_gates`, else the ones recorded in the manifest),
    then `gate_overrides`.
    """
    reporter = reporter or NullReporter()
    runtime_name = runtime  # None: the format's default runtime (quantkit.formats)
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
        runtime = runtime_for(art.manifest.format, runtime_name)  # a runtime that cannot score it fails here
        if write:
            check_writable(art.path)  # before the evaluation, not after it
        texts = {name: DomainText.of(t) for name, t in evaluation_texts(domains, max_tokens).items()}
        settings = ValidationSettings(context=context, stride=stride, max_tokens=max_tokens, domains=list(texts),
                                      device=device, dtype=dtype, tasks=list(tasks or []), task_limit=task_limit,
                                      serve=serve.options.to_dict() if serve is not None else None)
        checks = build_checks(tasks=tasks, task_limit=task_limit, serve=serve, device=device, dtype=dtype, **check_options)
        base_used = find_base(art, base, allow_base_mismatch)
        if not base_used.matches:
            reporter.log(f"base {base_used.path}: fingerprint {base_used.fingerprint[:12]} differs from the recorded "
                         f"{base_used.recorded_fingerprint[:12]} (allowed: --allow-base-mismatch; recorded in the report)")
        base_folder = BaseFolder(base_used.path, base_used.fingerprint)
        check_artifact(art, base_used.path)  # every base tensor accounted for, before any model is loaded
        if runtime.work_in_subprocesses:
            peak.watch_tools()
        scored = runtime.evaluate(art, base_folder, texts, EvaluationSettings(context, stride, max_tokens, device, dtype),
                                  reporter)
        # --no-write leaves the artifact folder untouched: the serving check's logs go to the cache instead
        log_dir = art.path / SERVE_LOGS if write else cache_dir() / "serve-logs" / art.name
        targets = _check_targets(art, scored, base_folder, checks, recipe_gates, gate_overrides, reporter, log_dir)
    resources = Resources(wall_s=round(time.perf_counter() - started, 1), peak_rss_bytes=peak.bytes,
                          peak_rss_note=("the validating process and its largest child process (llama.cpp's tools)"
                                         if peak.tools else "the validating process") + f"; this figure: {peak.method}")
    if device != "cpu":
        import torch

        resources.peak_gpu_bytes = torch.cuda.max_memory_allocated(device)  # set only here: CPU reports have no key
    report = ValidationReport(
        report_version=REPORT_VERSION, created=utc_now(), artifact=str(art.path),
        manifest_sha256=sha256_file(art.path / MANIFEST_NAME), passed=all(t.passed for t in targets), base=base_used,
        settings=settings, resources=resources, libraries=library_versions(VALIDATION_LIBRARIES), targets=targets)
    if write:
        kept = write_reports(report)
        if kept:
            reporter.log(kept)
    return report


def _check_targets(art, scored, base_folder, checks, recipe_gates, gate_overrides, reporter, log_dir) -> list[EvaluatedTarget]:
    targets = []
    for st in scored:
        t = st.target
        ctx = CheckContext(t, st.scores, base_folder.path, base_folder.fingerprint, st.unavailable, log_dir=log_dir)
        gates: dict[str, float] = {}
        results: list[CheckResult] = []
        for check in checks:
            with reporter.task(f"{t.name}: {check.name}"):
                result = check.run(ctx)
            results.append(result)
            gates.update(check.default_gates(t, result))
        metrics = {k: v for c in results for k, v in c.metrics.items()}
        gates.update(recipe_gates if recipe_gates is not None else art.manifest.gates)
        gates.update(gate_overrides or {})
        verdicts = [GateRecord.of(g) for g in evaluate_gates(gates, metrics)]
        targets.append(EvaluatedTarget(
            artifact=art.name, target=t.name, method=t.method, scheme=t.scheme, size_bytes=t.bytes, runtime=st.runtime,
            device=st.device, passed=all(g.passed for g in verdicts), runtime_unavailable=st.unavailable,
            domains=[DomainRow.model_validate(s.to_dict()) for s in st.scores], checks=results, gates=verdicts, path=t.path))
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
        from quantkit.jobs import plan
        from quantkit.recipe_loader import load_recipe

        selected = plan(load_recipe(recipe), path)  # the jobs quantize and status iterate: a matrix's too
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
    used = BaseUsed.of(Path(folder), fingerprint, recorded.fingerprint, given)
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
        atomic_write_text(report.path / "validation.json", report_json(report))
        atomic_write_text(report.path / "validation.md", validation_markdown(report))
    except OSError as e:
        raise ArtifactError(_unwritable(report.path, e)) from None
    return kept


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
