"""What a push uploads: the artifact's own files (verified against its manifest) plus the files made for
the upload (the card, a copy of the manifest and the validation report without local paths, the
provenance attestation). Nothing else leaves the machine: no caches, staging folders or logs unless asked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from quantkit.artifact import LOCAL_NAME, MANIFEST_NAME, SERVE_LOGS, Artifact
from quantkit.errors import ArtifactError
from quantkit.files import cache_dir, sha256_file
from quantkit.formats import format_named
from quantkit.report.model import ValidationReport

VALIDATION_NAME = "validation.json"
CARD_NAME = "README.md"
LOCAL = "<local>"  # what an absolute path of the user's machine becomes in anything uploaded

# roles decide the OCI layer media type and the order of the listing
WEIGHTS, CONFIG, DOC, LOG = "weights", "config", "doc", "log"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class BundleFile:
    """One file of an upload: on disk (`source`) or made for the upload (`data`)."""

    path: str  # path inside the pushed repository
    role: str
    size: int
    sha256: str
    source: Path | None = None
    data: bytes | None = None

    @classmethod
    def made(cls, path: str, role: str, data: bytes) -> "BundleFile":
        return cls(path, role, len(data), hashlib.sha256(data).hexdigest(), data=data)

    def read(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()


@dataclass
class Bundle:
    artifact: Artifact
    files: list[BundleFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the card says first (unvalidated, failed gates)
    license: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> BundleFile | None:
        return next((f for f in self.files if f.path == path), None)

    def add(self, f: BundleFile) -> None:
        self.files = [x for x in self.files if x.path != f.path] + [f]


def role_of(rel: str, fmt: str | None = None) -> str:
    """A file's OCI layer role; its format decides first for the files it defines (GGUF's importance matrix)."""
    if fmt is not None and (role := format_named(fmt).file_role(rel)) is not None:
        return role
    if rel.endswith(WEIGHT_SUFFIXES):
        return WEIGHTS
    if rel.startswith(SERVE_LOGS + "/"):
        return LOG
    if rel.lower().endswith((".md", ".txt")) and "/" not in rel:
        return DOC
    return CONFIG


def _absolute_paths(value) -> set[str]:
    """Every absolute path string in parsed JSON (keys too), with the folder that holds it."""
    if isinstance(value, dict):
        return set().union(set(), *(_absolute_paths(k) | _absolute_paths(v) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(set(), *(_absolute_paths(v) for v in value))
    if isinstance(value, str) and value.startswith(("/", "~/")) and "\n" not in value and len(value) < 4096:
        path = Path(value).expanduser()
        return {str(path), str(path.parent)}
    return set()


def local_prefixes(art: Artifact) -> list[str]:
    """Absolute paths of this machine that an uploaded file must not contain, longest first: the artifact,
    its output root, the cache, home, the working folder, and every absolute path the manifest, the local
    side file and the validation report mention (a calibration or domain file, the base model's folder)."""
    home = os.path.expanduser("~")
    found = {str(art.path.resolve()), str(art.path.resolve().parent), str(cache_dir().resolve()), home,
             str(Path.cwd().resolve())}
    if art.base_path:
        found.add(str(art.base_path.resolve()))
    found |= _absolute_paths(art.manifest.to_json())
    for side in (LOCAL_NAME, VALIDATION_NAME):
        try:
            found |= _absolute_paths(json.loads((art.path / side).read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError):
            pass
    # "/" itself or one-letter roots would match everything
    return sorted((p for p in found if len(p) > 1 and p != os.sep), key=len, reverse=True)


_ABS = re.compile(r"^(/|[A-Za-z]:[\\/]|~/)")


def without_local_paths(value, prefixes: list[str]):
    """`value` (parsed JSON) with every absolute path of this machine replaced by `<local>/NAME`."""
    if isinstance(value, dict):
        return {k: without_local_paths(v, prefixes) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v, prefixes) for v in value]
    if isinstance(value, str):
        if _ABS.match(value) and "\n" not in value:
            return f"{LOCAL}/{Path(value).name}" if Path(value).name else LOCAL
        return scrub_text(value, prefixes)
    return value


def scrub_text(text: str, prefixes: list[str]) -> str:
    for p in prefixes:
        text = text.replace(p, LOCAL)
    return text


def pushed_manifest(art: Artifact, prefixes: list[str]) -> bytes:
    """The manifest as uploaded: the base model's local path dropped (the base is found again from its
    source and fingerprint), every other local path reduced to its name."""
    data = without_local_paths(art.manifest.to_json(), prefixes)
    data["base_model"]["path"] = ""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def pushed_validation(report: ValidationReport, prefixes: list[str]) -> bytes:
    """validation.json as uploaded: the keys it was read with, every local path reduced to its name."""
    named = report.model_copy(update={"artifact": report.path.name})
    return (json.dumps(without_local_paths(named.to_dict(), prefixes), indent=2) + "\n").encode()


def read_validation(art: Artifact) -> ValidationReport | None:
    path = art.path / VALIDATION_NAME
    if not path.is_file():
        return None
    rerun = f"re-run `quantkit validate {art.path}`"
    try:
        return ValidationReport.model_validate_json(path.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise ArtifactError(f"{path} is not valid JSON ({first['msg'][:120]}); {rerun}") from None
        where = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise ArtifactError(f"{path} is not a quantkit validation report ({where}: {first['msg']}); {rerun}") from None


def verdict_problems(report: ValidationReport) -> list[str]:
    """Where a report's verdict disagrees with its own figures (an edited validation.json): each gate's
    `passed` against its value and threshold, each target's against its gates, the report's against its targets."""
    from quantkit.gates import GATE_KEYS

    problems = []
    for target in report.targets:
        for g in target.gates:
            if g.gate not in GATE_KEYS:
                problems.append(f"{target.target}: unknown gate {g.gate!r}")
                continue
            kind = GATE_KEYS[g.gate][1]
            holds = g.value is not None and (g.value <= g.threshold if kind == "max" else g.value >= g.threshold)
            if holds != g.passed:
                problems.append(f"{target.target}: gate {g.gate} says {'pass' if g.passed else 'fail'} for "
                                f"{_fmt(g.value)} against {g.threshold:g}")
        if target.passed and not all(g.passed for g in target.gates):
            problems.append(f"{target.target} says pass with a failed gate")
    if report.passed and not all(t.passed for t in report.targets):
        problems.append("the report says pass with a failed target")
    return problems


def validation_problem(art: Artifact, report: ValidationReport | None) -> str | None:
    """Why the artifact may not be pushed as validated: never validated, validated before it changed,
    or a failed gate. None when it passed."""
    if report is None:
        return f"{art.name} was never validated (no {VALIDATION_NAME}); run `quantkit validate {art.path}`"
    recorded = report.manifest_sha256
    actual = sha256_file(art.path / MANIFEST_NAME)
    if recorded != actual:
        why = "does not name the manifest it checked (made by an older quantkit)" if recorded is None \
            else "was made for a different quantkit.json"
        return f"{art.name}: {VALIDATION_NAME} {why}; re-run `quantkit validate {art.path}`"
    edited = verdict_problems(report)
    if edited:
        return (f"{art.name}: {VALIDATION_NAME} contradicts its own figures ({'; '.join(edited[:3])}): edited by hand; "
                f"re-run `quantkit validate {art.path}`")
    if not report.passed:
        failed = [f"{t.target}: {g.gate} {_fmt(g.value)} vs {g.threshold}" for t in report.targets for g in t.gates
                  if not g.passed]
        return f"{art.name} failed validation gates ({'; '.join(failed) or 'a target failed'})"
    return None


def _fmt(v) -> str:
    return "missing" if v is None else f"{v:.4g}"


def artifact_files(art: Artifact, include_logs: bool, prefixes: list[str]) -> list[BundleFile]:
    """The artifact's own files, each checked against the manifest's sha256 as it is listed."""
    art.verify()
    out = [BundleFile(rel, role_of(rel, art.manifest.format), rec.bytes, rec.sha256, source=art.path / rel)
           for rel, rec in sorted(art.manifest.files.items())]
    logs = art.path / SERVE_LOGS
    if include_logs and (logs.is_dir() or logs.is_symlink()):
        # regular files inside the artifact only: a link (to a system file, or out of the folder) is refused
        links = ([SERVE_LOGS] if logs.is_symlink() else
                 [p.relative_to(art.path).as_posix() for p in sorted(logs.rglob("*")) if p.is_symlink()])
        if links:
            raise ArtifactError(f"{art.path}: {', '.join(links[:5])} is a symlink; --include-logs uploads only regular "
                                "files inside the artifact: remove the link or push without --include-logs")
        for p in sorted(logs.rglob("*")):
            if p.is_file():
                text = scrub_text(p.read_text(errors="replace"), prefixes)
                out.append(BundleFile.made(p.relative_to(art.path).as_posix(), LOG, text.encode()))
    return out


def leaked_local_paths(bundle: Bundle, prefixes: list[str], token: str | None = None) -> list[str]:
    """Files of `bundle` that contain a local absolute path or the token (text files up to 64 MB are read;
    weights are binary and come from the artifact as quantize wrote them)."""
    needles = [p.encode() for p in prefixes] + ([token.encode()] if token and len(token) >= 8 else [])
    found = []
    for f in bundle.files:
        if f.role == WEIGHTS or f.size > 64 << 20:
            continue
        data = f.read()
        for n in needles:
            if n in data:
                found.append(f"{f.path} contains {'the token' if token and n == token.encode() else n.decode()}")
    return found
