"""The coverage check: every tensor of the base checkpoint is accounted for in each target of an artifact
(quantized with its scheme, kept in float by a named rule, tied, or dropped for a named reason), and the
artifact holds nothing the base does not. Read from the headers alone (no weights loaded); each format maps
its own tensor names (`Format.map_tensors`). `quantize` records the table in the manifest and fails an output
that does not pass; `validate` recomputes it from the artifact's files and refuses one that does not."""

from __future__ import annotations

import json
import re
from pathlib import Path

from quantkit.artifact import Artifact
from quantkit.errors import ArtifactError, ModelSourceError
from quantkit.formats import Format, Target, format_named
from quantkit.formats.tensors import Accounted, BaseTensor, Coverage, tally
from quantkit.sources.checkpoint import checkpoint_files, read_checkpoint_headers

# tensors a base checkpoint may hold that no loader reads, and why they are not in an artifact
DROPPED = {re.compile(r"(^|\.)rotary_emb\.inv_freq$"): "rotary inv_freq buffer (recomputed from config.json on load)"}
SHOWN_PROBLEMS = 8


# (folder, trust, the stat of every file in it) -> base_tensors' answer: a recipe's outputs share one base,
# whose headers and meta-device model are then read and built once per run, not once per output
_BASE_CACHE: dict[tuple, tuple[tuple[BaseTensor, ...], tuple[Accounted, ...]]] = {}


def base_tensors(folder: Path, trust_remote_code: bool = False) -> tuple[list[BaseTensor], list[Accounted]]:
    """The base checkpoint's tensors every target must account for, and those accounted for already (tied
    to another tensor, or dropped for a reason in DROPPED). Cached while the folder's files are unchanged."""
    folder = Path(folder)
    try:
        key = (str(folder.resolve()), trust_remote_code,
               tuple(sorted((p.name, st.st_mtime_ns, st.st_size) for p in folder.iterdir() if p.is_file()
                            for st in [p.stat()])))
    except OSError:
        key = None
    if key is not None and key in _BASE_CACHE:
        base, aside = _BASE_CACHE[key]
        return list(base), list(aside)
    base, aside = _read_base_tensors(folder, trust_remote_code)
    if key is not None:
        _BASE_CACHE.clear()  # one base at a time: a matrix moves from model to model
        _BASE_CACHE[key] = (tuple(base), tuple(aside))
    return base, aside


def _read_base_tensors(folder: Path, trust_remote_code: bool) -> tuple[list[BaseTensor], list[Accounted]]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"the base model's config.json at {folder} cannot be read ({type(e).__name__})") from None
    headers = read_checkpoint_headers(checkpoint_files(folder, config if isinstance(config, dict) else {}))
    kinds, tied = _module_kinds(folder, trust_remote_code)
    present = {h.name: h for h in headers}
    base, aside = [], []
    for h in headers:
        kind = kinds.get(h.name.rpartition(".")[0], "?")
        why = next((why for pattern, why in DROPPED.items() if pattern.search(h.name)), None)
        if why:
            aside.append(Accounted(h.name, kind, "dropped", h.dtype, h.numel, 0, why))
        else:
            base.append(BaseTensor(h.name, h.dtype, h.shape, kind))
    for target, source in sorted(tied.items()):
        if target not in present and source in present:
            aside.append(Accounted(target, kinds.get(target.rpartition(".")[0], "?"), "tied", present[source].dtype,
                                   present[source].numel, 0, f"tied to {source} (tie_word_embeddings)"))
    return base, aside


def _module_kinds(folder: Path, trust_remote_code: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Each module's class name and the tied parameters (target -> source), from the model built on the meta
    device (nothing allocated); empty when transformers cannot build it (then no module kind is checked)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - a config AutoModelForCausalLM has no class for: names and shapes are still checked
        return {}, {}
    tied = getattr(model, "all_tied_weights_keys", None)
    return {name: type(m).__name__ for name, m in model.named_modules()}, dict(tied) if isinstance(tied, dict) else {}


def target_coverage(fmt: Format, targets: list[Target], output, base_folder: Path,
                    trust_remote_code: bool = False) -> dict[str, Coverage]:
    """The coverage table of each target (keyed by target name) against the base at `base_folder`."""
    base, aside = base_tensors(base_folder, trust_remote_code)
    out = {}
    for target in targets:
        try:
            tensors = fmt.artifact_tensors(target)
        except ModelSourceError as e:
            raise ArtifactError(str(e)) from None
        mapped = fmt.map_tensors(base, tensors, output)
        out[target.name] = tally(mapped.accounted + aside, len(tensors), mapped.problems, mapped.mapping)
    return out


def refuse_uncovered(coverage: dict[str, Coverage], where: str) -> None:
    """ArtifactError naming the tensors of every target whose coverage has problems."""
    lines = [f"{name}: {p}" for name, cov in coverage.items() for p in cov.problems]
    if lines:
        shown = lines[:SHOWN_PROBLEMS] + ([f"... and {len(lines) - SHOWN_PROBLEMS} more"] if len(lines) > SHOWN_PROBLEMS else [])
        raise ArtifactError(f"{where}: not every tensor of the base model is accounted for (coverage check):\n  "
                            + "\n  ".join(shown))


def check_artifact(art: Artifact, base_folder: Path) -> dict[str, Coverage]:
    """validate's coverage check: recomputed from the artifact's files, whatever its manifest records."""
    trust = (art.manifest.recipe.get("model") or {}).get("trust_remote_code") is True
    coverage = target_coverage(format_named(art.manifest.format), art.targets(), art.manifest.spec, base_folder, trust)
    refuse_uncovered(coverage, str(art.path))
    return coverage
