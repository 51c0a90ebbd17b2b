"""The model card pushed with an artifact, generated from its manifest and `validation.json` with
huggingface_hub's ModelCard/ModelCardData (front matter, model-index) and a body of plain Markdown
tables whose numbers are the ones `validate` wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

from quantkit.artifact import ATTESTATION_NAME, Artifact
from quantkit.errors import QuantkitError
from quantkit.formats import format_named
from quantkit.publish.bundle import LOCAL, VALIDATION_NAME, without_local_paths
from quantkit.report import card as report_card
from quantkit.report.model import EvaluatedTarget, ValidationReport

PROJECT_URL = "https://github.com/quantkit/quantkit"
TEXT_GENERATION = "text-generation"


@dataclass(frozen=True)
class CardContext:
    """What a card says beyond the artifact: where it is pushed and how it was signed."""

    ref: str  # how a user names the pushed model: a hub repo id, or oci://HOST/NAME:TAG
    pulled_before_run: bool  # the destination's files are pulled to a folder first (OCI), not read from `ref`
    verify_ref: str  # how `quantkit verify` names the pushed model
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
    return ["quantkit", m.method, *format_named(m.format).card_tags(art.targets(), m.scheme), "quantized"]


def _f(v, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def eval_results(art: Artifact, report: ValidationReport | None) -> list:
    return report_card.eval_results(report, scheme_in_names=format_named(art.manifest.format).several_models)


def front_matter(art: Artifact, report: ValidationReport | None, ctx: CardContext):
    from huggingface_hub import ModelCardData

    m = art.manifest
    results = eval_results(art, report)
    return ModelCardData(
        base_model=ctx.base_model_id,
        base_model_relation="quantized" if ctx.base_model_id else None,
        library_name=format_named(m.format).library_name,
        pipeline_tag=TEXT_GENERATION,
        license=ctx.license,
        tags=tags(art),
        model_name=ctx.ref.rsplit("/", 1)[-1],
        eval_results=results or None,
    )


def render(art: Artifact, report: ValidationReport | None, ctx: CardContext, prefixes: list[str]) -> str:
    """The card's full text: YAML front matter, then the body."""
    from huggingface_hub import ModelCard

    data = front_matter(art, report, ctx)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body(art, report, ctx, prefixes)}")
    if card.data.to_dict().get("base_model_relation") not in (None, "quantized"):
        raise QuantkitError("the model card's front matter did not round-trip")  # guards a huggingface_hub change
    return str(card)


def body(art: Artifact, report: ValidationReport | None, ctx: CardContext, prefixes: list[str]) -> str:
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


def files_section(art: Artifact, report: ValidationReport | None) -> list[str]:
    m = art.manifest
    kld = {t.scheme: _mean_kld(t) for t in (report.targets if report else [])}
    return format_named(m.format).card_files(m, art.targets(), kld.get)


def _mean_kld(target: EvaluatedTarget) -> float | None:
    return target.measured("kld_mean")


evaluation_section = report_card.evaluation_section


def run_section(art: Artifact, ctx: CardContext) -> list[str]:
    m = art.manifest
    pulled = "./model"
    if ctx.pulled_before_run:
        fetch = ["```bash", f"quantkit pull {ctx.ref} {pulled}", "```", ""]
        where = pulled
    else:
        fetch, where = [], ctx.ref
    out = ["## How to run", ""] + fetch
    return out + format_named(m.format).run_snippets(art.targets(), where, pulled=ctx.pulled_before_run)


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
    if (toolchain := format_named(m.format).toolchain(m)) is not None:
        libs[toolchain[0]] = toolchain[1]
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
                "```bash", f"quantkit verify {ctx.verify_ref} --key PUBLIC_KEY.pem", "```"]
    else:
        out += ["It is **not signed** (pushed without `--sign-key`): it records digests, not who made them."]
    return out + [""]
