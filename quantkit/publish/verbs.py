"""`quantkit push`, `verify` and `pull`: validated artifacts out to model hubs and OCI registries with a
generated model card and a provenance attestation, and back.

A verb (floor 6 in tests/test_layers.py, with validate) inside the publish package (floor 5): push finds
the artifacts of a run with validate's own search, so `quantkit.publish`'s `__init__` never imports it.

    import quantkit
    quantkit.push("out/smollm2-135m-gptq-w4a16", "my-org/SmolLM2-135M-Instruct-GPTQ", sign_key="ec.key")
    quantkit.verify("oci://localhost:5000/models/smollm2:q4_k_m", key="ec.pub")
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.artifact import ATTESTATION_NAME, ATTESTED_VALIDATION_NAME, MANIFEST_NAME, SERVE_LOGS, Artifact
from quantkit.errors import ArtifactError, QuantkitError
from quantkit.files import sha256_file, sha256_files, staged_folder
from quantkit.progress import NullReporter, Reporter
from quantkit.publish import provenance
from quantkit.publish.bundle import (
    CARD_NAME,
    CONFIG,
    DOC,
    VALIDATION_NAME,
    Bundle,
    BundleFile,
    artifact_files,
    leaked_local_paths,
    local_prefixes,
    pushed_manifest,
    pushed_validation,
    read_validation,
    scrub_text,
    validation_problem,
    verdict_problems,
    without_local_paths,
)
from quantkit.publish.card import CardContext, base_license, base_model_id, render
from quantkit.publish.destinations import Destination, PushOptions, PushResult, destination_for
from quantkit.report.model import ValidationReport

HUB_MADE = (".gitattributes",)  # files a hub adds to every repository by itself
# what `quantkit validate` writes into a folder after a pull: not covered by the attestation, and named as such
# by `verify` (the attested validation.json is checked where validate kept it: ATTESTED_VALIDATION_NAME)
LOCAL_REPORTS = (VALIDATION_NAME, "validation.md", "validation.html")


@dataclass(frozen=True)
class PushSettings:
    license: str | None = None
    base_model: str | None = None  # the base's hub id for the card, when quantkit cannot know it
    allow_unvalidated: bool = False
    allow_failed: bool = False
    include_logs: bool = False
    sign_key: Path | None = None


def prepare(artifact: str | Path | Artifact, destination: Destination, settings: PushSettings | None = None) -> Bundle:
    """Everything a push uploads, checked: the artifact matches its manifest, its validation passed
    (or the caller allowed otherwise), the license is known, and no local path or token is in it."""
    settings = settings or PushSettings()
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact, verify=False)
    report = read_validation(art)
    notes = []
    prefixes = local_prefixes(art)
    problem = validation_problem(art, report)
    if problem:
        # a report for this manifest whose figures hold together failed its gates; anything else is unvalidated
        failed_gates = (report is not None and report.manifest_sha256 == sha256_file(art.path / MANIFEST_NAME)
                        and not verdict_problems(report))
        allowed = settings.allow_failed if failed_gates else settings.allow_unvalidated
        flag = "--allow-failed" if failed_gates else "--allow-unvalidated"
        if not allowed:
            raise ArtifactError(f"{problem}; refusing to push it (pass {flag} to push it anyway, and the card will say so)")
        notes.append(("FAILED VALIDATION: " if failed_gates else "NOT VALIDATED: ") + scrub_text(problem, prefixes))
        if not failed_gates:
            report = None  # a stale report describes other files: not pushed, not quoted
    license_ = (settings.license or base_license(art) or "").lower()  # the hub's license ids are lowercase SPDX
    if not license_:
        raise QuantkitError(f"--license: the license of {art.name}'s base model ({art.manifest.base_model.source}) "
                            f"is unknown; give the SPDX id it is under, e.g. --license apache-2.0")
    signer = provenance.key_id(settings.sign_key) if settings.sign_key else None  # bad keys fail before any hashing
    bundle = Bundle(art, artifact_files(art, settings.include_logs, prefixes), notes, license_)
    bundle.add(BundleFile.made(MANIFEST_NAME, CONFIG, pushed_manifest(art, prefixes)))
    if report is not None:
        bundle.add(BundleFile.made(VALIDATION_NAME, CONFIG, pushed_validation(report, prefixes)))
    ctx = CardContext(destination.ref, destination.pulled_before_run, destination.verify_ref, license_,
                      settings.base_model or base_model_id(art),
                      tuple(notes), signer)
    bundle.add(BundleFile.made(CARD_NAME, DOC, render(art, report, ctx, prefixes).encode()))
    stmt = provenance.statement({f.path: f.sha256 for f in bundle.files}, predicate(art, report, bundle, prefixes))
    envelope = provenance.sign(stmt, settings.sign_key)
    bundle.add(BundleFile.made(ATTESTATION_NAME, DOC, (json.dumps(envelope, indent=2) + "\n").encode()))
    leaks = leaked_local_paths(bundle, prefixes, _hub_token())
    if leaks:
        raise ArtifactError(f"refusing to push {art.name}: " + "; ".join(leaks))
    return bundle


def _hub_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def predicate(art: Artifact, report: ValidationReport | None, bundle: Bundle, prefixes: list[str]) -> dict:
    """SLSA provenance v1: the base model and calibration set as resolved dependencies, the recipe as
    external parameters, the tool versions as the builder's, the validation verdict as a byproduct."""
    m = art.manifest
    hub_id = base_model_id(art)
    base = {"name": f"base-model:{without_local_paths(m.base_model.source, prefixes)}",
            "digest": {"sha256": m.base_model.fingerprint},
            "annotations": {"kind": m.base_model.kind, "revision": m.base_model.revision,
                            "origin": without_local_paths(m.base_model.origin, prefixes),
                            "digest_of": "quantkit's folder fingerprint: config.json, tokenizer and weight files"}}
    if hub_id:
        base["uri"] = f"https://huggingface.co/{hub_id}"
    deps = [base]
    if m.calibration:
        deps.append({"name": f"calibration:{without_local_paths(m.calibration.source, prefixes)}",
                     "digest": {"sha256": m.calibration.fingerprint},
                     "annotations": {"num_tokens": m.calibration.num_tokens, "num_samples": m.calibration.num_samples,
                                     "seq_len": m.calibration.seq_len}})
    byproducts = []
    validation = bundle.file(VALIDATION_NAME)
    if report is not None and validation is not None:
        byproducts.append({"name": VALIDATION_NAME, "digest": {"sha256": validation.sha256}, "annotations": {
            "passed": report.passed,
            "settings": without_local_paths(report.settings.to_dict() if report.settings else {}, prefixes),
            "targets": [{"target": t.target, "passed": t.passed,
                         "metrics": {k: v for c in t.checks for k, v in c.metrics.items()},
                         "gates": [g.to_dict() for g in t.gates]} for t in report.targets]}})
    return {
        "buildDefinition": {
            "buildType": provenance.BUILD_TYPE,
            "externalParameters": {"recipe": without_local_paths(m.recipe, prefixes), "output": m.output},
            "internalParameters": {"engine": without_local_paths(m.engine, prefixes), "format": m.format},
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {"id": provenance.BUILDER_ID, "version": {k: str(v) for k, v in m.libraries.items()}},
            "metadata": {"finishedOn": m.created},
            "byproducts": byproducts,
        },
    }


def expand_repo(template: str, art: Artifact) -> str:
    """`my-org/{base}-{name}`: {name} is the artifact's name, {base} the base model's name."""
    base = (base_model_id(art) or art.manifest.base_model.source).rstrip("/").rsplit("/", 1)[-1]
    try:
        return template.format(base=base, name=art.name, method=art.method, scheme=art.manifest.scheme)
    except (KeyError, IndexError, ValueError) as e:
        raise QuantkitError(f"--repo {template!r}: unknown placeholder {e}; "
                            "use {base}, {name}, {method}, {scheme}") from None


@dataclass
class PushOutcome:
    artifact: Path
    destination: str
    bundle: Bundle
    result: PushResult | None = None  # None for a dry run


def push(artifact: str | Path, target: str, *, settings: PushSettings | None = None, options: PushOptions | None = None,
         dry_run: bool = False, reporter: Reporter | None = None) -> list[PushOutcome]:
    """Push one artifact, or every artifact in a folder (then `target` should use `{name}`)."""
    settings, options = settings or PushSettings(), options or PushOptions()
    from quantkit.validate import find_artifacts

    reporter = reporter or NullReporter()
    folders = find_artifacts(artifact)
    arts = [Artifact.load(f, verify=False) for f in folders]
    planned = [(a, destination_for(expand_repo(target, a))) for a in arts]
    refs = [d.ref for _, d in planned]
    if len(set(refs)) != len(refs):
        raise QuantkitError(f"--repo/--to {target!r} names the same destination for several artifacts; "
                            "put {name} in it")
    outcomes = []
    for art, dest in planned:  # every bundle is checked before anything is sent
        with reporter.task(f"{art.name}: checksums, card and attestation"):
            outcomes.append(PushOutcome(art.path, dest.describe(), prepare(art, dest, settings)))
    if dry_run:
        return outcomes
    for (_, dest), outcome in zip(planned, outcomes):
        outcome.result = dest.push(outcome.bundle, options, reporter)
    return outcomes


@dataclass
class VerifyReport:
    source: str
    files: dict[str, str]  # path -> sha256, every file the attestation covers
    key_id: str | None  # the key that verified the signature; None when only digests were checked
    statement: dict = field(repr=False, default_factory=dict)
    # the file the attested validation.json was checked in: validation.json, or validation.attested.json where
    # a local `quantkit validate` kept it; None when the push carried no report
    validation_report: str | None = None
    local_reports: list[str] = field(default_factory=list)  # written here after the pull; not attested

    @property
    def predicate(self) -> dict:
        return self.statement.get("predicate") or {}


def verify(source: str | Path, *, key: str | Path | None = None, digests_only: bool = False,
           reporter: Reporter | None = None) -> VerifyReport:
    """Check a pushed artifact (local folder, `oci://…`, `hf://ORG/NAME`): the attestation's signature
    with `key`, the sha256 of every file it names, that no other file is there, and the manifest's checksums.
    A local folder may also hold the reports a `quantkit validate` wrote after the pull (LOCAL_REPORTS): they are
    not attested and the report names them (`local_reports`); the attested validation.json is checked where
    validate kept it (`validation_report`). Raises AttestationError (exit 1) on any mismatch."""
    reporter = reporter or NullReporter()
    if key is None and not digests_only:
        raise QuantkitError("--key: give the public key whose private half signed the push (--sign-key), "
                            "or --digests-only to check the file digests alone")
    text = str(source)
    local = Path(text).expanduser()
    if "://" not in text and local.is_dir():
        return _verify_folder(local, text, key, reporter, downloaded=False)
    with tempfile.TemporaryDirectory(prefix="quantkit-verify-") as tmp:
        destination_for(text).download(Path(tmp), reporter)
        return _verify_folder(Path(tmp), text, key, reporter, downloaded=True)


def _verify_folder(folder: Path, source: str, key, reporter: Reporter, downloaded: bool) -> VerifyReport:
    """`downloaded`: `folder` holds what a hub or registry served (verify of a URL, pull), where the local reports
    of a `quantkit validate` cannot be: there they are files not in the attestation like any other."""
    att_path = folder / ATTESTATION_NAME
    if not att_path.is_file():
        raise provenance.AttestationError(f"{source}: no {ATTESTATION_NAME}: it was not pushed by quantkit, "
                                          "or the attestation was removed")
    att = provenance.parse(att_path.read_bytes(), f"{source}/{ATTESTATION_NAME}")
    key_id = provenance.verify_signature(att, Path(key), source) if key is not None else None
    # each subject's file: the attested validation.json is checked where `validate` kept it, if it did
    report_at = (ATTESTED_VALIDATION_NAME if VALIDATION_NAME in att.subjects and (folder / ATTESTED_VALIDATION_NAME).is_file()
                 else VALIDATION_NAME if VALIDATION_NAME in att.subjects else None)
    located = {name: report_at if name == VALIDATION_NAME else name for name in att.subjects}
    problems = []
    with reporter.task(f"{source}: sha256 of {len(att.subjects)} files"):
        present_subjects = []
        for name in sorted(att.subjects):
            p = folder / located[name]
            if not _inside(folder, p) or not p.is_file():
                problems.append(f"missing: {name}")
            else:
                present_subjects.append(name)
        digests = dict(zip(present_subjects, sha256_files([folder / located[n] for n in present_subjects])))
        problems += [f"modified: {name}{_kept_as(located[name])} (sha256 differs from the attestation)"
                     for name, digest in digests.items() if digest != att.subjects[name]]
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    extra = sorted(present - set(located.values()) - {ATTESTATION_NAME} - set(HUB_MADE))
    local = [] if downloaded else [name for name in extra if name in LOCAL_REPORTS or name.startswith(SERVE_LOGS + "/")]
    problems += [f"not in the attestation: {name}" for name in extra if name not in local]
    if problems:
        raise provenance.AttestationError(f"{source} does not match its attestation:\n  " + "\n  ".join(problems))
    try:
        Artifact.load(folder, verify=False).verify(digests)  # each file read once: the digests above
    except ArtifactError as e:
        raise provenance.AttestationError(f"{source}: {e}") from None
    return VerifyReport(source, dict(att.subjects), key_id, att.statement, report_at, local)


def _kept_as(path: str) -> str:
    return f" (kept as {path} by quantkit validate)" if path == ATTESTED_VALIDATION_NAME else ""


def _inside(folder: Path, p: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def pull(ref: str, dest: str | Path, *, force: bool = False, reporter: Reporter | None = None) -> Path:
    """Bring a pushed artifact back into `dest` (a new folder; with `force`, an existing quantkit artifact is
    replaced, never another folder), digests checked against the attestation; the result is an artifact
    `validate` accepts. Everything is written in a staging folder beside `dest`, renamed into place only
    once every file is complete and verified: a failure leaves `dest` as it was."""
    from quantkit.artifact_files import remove_own_files, replace_problem

    reporter = reporter or NullReporter()
    destination = destination_for(ref)
    dest = Path(dest)
    if force and replace_problem(Path(dest)):  # an artifact holding a user's files, or not an artifact at all
        raise ArtifactError(replace_problem(Path(dest)))
    # --force replaces only a quantkit artifact, and deletes only the files quantkit wrote there
    with staged_folder(dest, force, lambda p: replace_problem(p) is None, discard=remove_own_files) as stage:
        destination.download(stage, reporter)
        _verify_folder(stage, ref, None, reporter, downloaded=True)
    return dest
