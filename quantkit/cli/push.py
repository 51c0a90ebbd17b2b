"""`quantkit push`, `verify`, `pull`: artifacts to hubs and OCI registries, checked on the way back."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from quantkit.cli.options import JsonOpt, ProgressOpt
from quantkit.cli.output import human_bytes, make_reporter, say, sigterm_as_exit, styled
from quantkit.cli.render import Column, Output, Rows

if TYPE_CHECKING:
    from quantkit.publish.bundle import BundleFile


def register(app: typer.Typer) -> None:
    app.command("push")(push_command)
    app.command("verify")(verify_command)
    app.command("pull")(pull_command)


def push_command(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder, or a folder of artifacts (then put {name} in --repo/--to).", show_default=False)],
    repo: Annotated[Optional[str], typer.Option("--repo", help="Hugging Face repo id ORG/NAME; {base}, {name}, {method}, {scheme} are filled in per artifact.", show_default=False)] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Another destination: oci://HOST/NAME:TAG (or hf://ORG/NAME).", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be uploaded (files, sizes, card, attestation) and touch nothing.")] = False,
    sign_key: Annotated[Optional[Path], typer.Option("--sign-key", help="PEM private key (EC P-256/P-384, Ed25519, RSA) that signs the provenance attestation; a password goes in $QUANTKIT_SIGN_KEY_PASSWORD.", show_default=False)] = None,
    license_: Annotated[Optional[str], typer.Option("--license", help="License of the pushed model (SPDX id); default: the base model's.", show_default=False)] = None,
    base_model: Annotated[Optional[str], typer.Option("--base-model", help="Hub id of the base model for the card, when the base was a local folder.", show_default=False)] = None,
    allow_unvalidated: Annotated[bool, typer.Option("--allow-unvalidated", help="Push an artifact that was never validated (the card says so first).")] = False,
    allow_failed: Annotated[bool, typer.Option("--allow-failed", help="Push an artifact that failed a validation gate (the card says so first).")] = False,
    include_logs: Annotated[bool, typer.Option("--include-logs", help="Also upload the serving check's logs (local paths removed).")] = False,
    private: Annotated[bool, typer.Option("--private", help="Create the hub repo private.")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Hub branch to commit to (created if absent).", show_default=False)] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request on the hub instead of committing.")] = False,
    commit_message: Annotated[Optional[str], typer.Option("--commit-message", help="Hub commit message.", show_default=False)] = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Push validated artifacts to a model hub or an OCI registry, with a generated model card and a
    provenance attestation.

    Examples:

      quantkit push out/smollm2-135m-gptq-w4a16 --repo my-org/SmolLM2-135M-Instruct-GPTQ --sign-key ec.key

      quantkit push out/ --repo "my-org/{base}-{name}" --dry-run

      quantkit push out/smollm2-135m-gguf --to oci://localhost:5000/models/smollm2:gguf
    """
    from quantkit.errors import QuantkitError
    from quantkit.publish.destinations import PushOptions
    from quantkit.publish.verbs import PushSettings, push

    if (repo is None) == (to is None):
        raise QuantkitError("give exactly one of --repo ORG/NAME (Hugging Face Hub) and --to oci://HOST/NAME:TAG")
    settings = PushSettings(license_, base_model, allow_unvalidated, allow_failed, include_logs, sign_key)
    options = PushOptions(private, revision, create_pr, commit_message)
    with sigterm_as_exit(), make_reporter(progress) as reporter:
        outcomes = push(artifact, repo if repo is not None else to, settings=settings, options=options, dry_run=dry_run,
                        reporter=reporter)
    out = Output([_outcome_json(o, dry_run) for o in outcomes])
    for o in outcomes:
        verb = "would push" if dry_run else "pushed"
        out.table(_files(o, title=f"{o.artifact.name}: {verb} {len(o.bundle.files)} files, {human_bytes(o.bundle.size)} "
                                  f"to {o.destination}"))
        for note in o.bundle.notes:
            out.line(styled("  [yellow]card says first:[/] "), note)
        if o.result is not None:
            r = o.result
            where = r.pr_url or r.url or r.ref
            out.line(f"  done: {where}" + (f" (manifest {r.digest})" if r.digest else ""))
    if dry_run:
        card = outcomes[0].bundle.file("README.md") if len(outcomes) == 1 else None
        if card is not None:
            out.rule("README.md (model card)").verbatim(card.data.decode())
        out.verbatim("dry run: nothing was uploaded")
    out.emit(as_json)


FILE_COLUMNS: tuple[Column[BundleFile], ...] = (
    Column("path", "file", lambda f: f.path),
    Column("bytes", "size", lambda f: f.size, format=human_bytes, justify="right"),
    Column("sha256", "sha256", lambda f: f.sha256, format=lambda digest: digest[:16]),
    Column("role", None, lambda f: f.role),
    Column("made", None, lambda f: f.data is not None),
    Column(None, "what", lambda f: "made for the push" if f.data is not None else f.role),
)


def _files(o, title: str | None = None) -> Rows[BundleFile]:
    return Rows(FILE_COLUMNS, o.bundle.files, title=title, title_justify="left")


def _outcome_json(o, dry_run: bool) -> dict:
    out = {"artifact": str(o.artifact), "destination": o.destination, "dry_run": dry_run,
           "bytes": o.bundle.size, "notes": o.bundle.notes, "files": _files(o).json()}
    if o.result is not None:
        r = o.result
        out["result"] = {"ref": r.ref, "url": r.url, "pr_url": r.pr_url, "digest": r.digest, "details": r.details}
    return out


def verify_command(
    source: Annotated[str, typer.Argument(help="A pushed artifact: local folder, oci://HOST/NAME:TAG, or hf://ORG/NAME.", show_default=False)],
    key: Annotated[Optional[Path], typer.Option("--key", help="PEM public key of the --sign-key that signed the push.", show_default=False)] = None,
    digests_only: Annotated[bool, typer.Option("--digests-only", help="Check the file digests against the attestation without checking its signature.")] = False,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a pushed artifact: the attestation's signature, the sha256 of every file, no file added, and
    print its provenance. A pulled folder may also hold the reports of a later `quantkit validate`: they are
    named as not attested, and the attested validation.json is checked where validate kept it
    (validation.attested.json). Exit 1 on any mismatch."""
    from quantkit.publish.verbs import verify

    with sigterm_as_exit(), make_reporter(progress) as reporter:
        report = verify(source, key=key, digests_only=digests_only, reporter=reporter)
    pred = report.predicate
    out = Output({"source": report.source, "verified": True, "key_id": report.key_id,
                  "files": report.files, "predicate": pred, "validation_report": report.validation_report,
                  "local_reports": report.local_reports})
    signed = f"signature verified (key id {report.key_id[:16]})" if report.key_id else "signature NOT checked (--digests-only)"
    out.line(styled("[bold green]verified[/] "), f"{report.source}: {signed}; {len(report.files)} files match their sha256")
    if report.validation_report:
        out.line(f"  validation report checked: {report.validation_report} (the attested one"
                 + (", kept there by a local quantkit validate)" if report.validation_report != "validation.json" else ")"))
    if report.local_reports:
        out.line(f"  not attested, written here after the pull (quantkit validate): {', '.join(report.local_reports)}")
    out.lines(lambda: [f"  {line}" for line in provenance_lines(pred)])
    out.emit(as_json)


def provenance_lines(pred: dict) -> list[str]:
    build = pred.get("buildDefinition", {})
    out = []
    for dep in build.get("resolvedDependencies", []):
        out.append(f"{dep.get('name')}: sha256 {dep.get('digest', {}).get('sha256', '?')[:16]}" +
                   (f" ({dep['uri']})" if dep.get("uri") else ""))
    output = build.get("externalParameters", {}).get("output", {})
    if output:
        scheme = output.get("scheme") or ",".join(output.get("types") or [])
        out.append(f"output {output.get('name')}: {output.get('method')} {scheme}".rstrip())
    versions = pred.get("runDetails", {}).get("builder", {}).get("version", {})
    if versions:
        out.append("tools: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    for b in pred.get("runDetails", {}).get("byproducts", []):
        ann = b.get("annotations", {})
        verdicts = ", ".join(f"{t['target']} {'pass' if t['passed'] else 'FAIL'}" for t in ann.get("targets", []))
        out.append(f"{b.get('name')}: {'PASS' if ann.get('passed') else 'FAIL'} ({verdicts})")
    return out


def pull_command(
    ref: Annotated[str, typer.Argument(help="oci://HOST/NAME:TAG (or @sha256:DIGEST).", show_default=False)],
    dest: Annotated[Path, typer.Argument(help="New folder for the artifact (must not exist, unless --force).", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it is a quantkit artifact (a folder with a valid quantkit.json); any other folder is left alone.")] = False,
    progress: ProgressOpt = None,
) -> None:
    """Bring a pushed artifact back as a local artifact (digests checked) that `quantkit validate` accepts.
    Requests time out after $QUANTKIT_REGISTRY_TIMEOUT seconds of silence (default 60)."""
    from quantkit.publish.verbs import pull

    with sigterm_as_exit(), make_reporter(progress) as reporter:
        out = pull(ref, dest, force=force, reporter=reporter)
    say(f"pulled {ref} into {out}; every file matches the attestation's sha256")
