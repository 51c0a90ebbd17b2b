"""The validation report as typed records: what `validate` writes to validation.json and `push` reads back.

One model for both sides. The JSON keeps the keys, values and order validation.json always had; fields a
report written by an earlier quantkit lacks have defaults, and fields from a newer one are kept (extra="allow"),
so every report this project ever wrote still loads. `report_json` writes only the fields that were set: a
report read and written again keeps its keys (an older report gains none of today's defaults).

Also here, for the checks and renderers (quantkit.report): a check's table (`Section`) and its figures in a
model card's model-index (`CardResult`). This module imports nothing of quantkit's: it sits on a low floor,
so the checks (which build `CheckResult`s) and the renderers above them both import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPORT_VERSION = 1

Number = int | float  # smart union: an int stays an int, as json.dumps wrote it before


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)


class ReadByKey:
    # validate()'s callers read settings and resources by key (report.settings["device"]) from when they were dicts
    def __getitem__(self, key: str):
        return getattr(self, key)


class DomainRow(Record):
    """One held-out text scored by the target's runtime (quantkit.runtimes.DomainScores as recorded)."""

    domain: str
    runtime: str
    n_tokens: int  # scored tokens
    context: int
    stride: int
    base_ppl: float
    ppl: float
    kld_mean: float
    kld_median: float | None = None
    kld_p99: float
    top1_agreement: float
    kld_by_position: list[float | None] | None = None  # only runtimes with per-token values (transformers)
    scored_tokens: dict[str, Any] | None = None  # the rule and windows (transformers)
    ppl_increase: float


class CheckResult(Record):
    """What one check found for one target. `metrics` are gate keys' metrics (the worst over domains);
    `per_domain`, `sample` and `details` are the check's own record (e.g. the serving report)."""

    check: str
    # "measured" | "skipped" | "failed" (could not run the artifact: its gates fail)
    # | "unsupported" (this machine cannot run it)
    status: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    per_domain: dict[str, Any] = Field(default_factory=dict)
    sample: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    def __init__(self, check: str | None = None, status: str | None = None, /, **data: Any) -> None:
        # a check builds it positionally, like the dataclass it was: CheckResult(self.name, "skipped", reason=...)
        made_by_a_check = check is not None
        if made_by_a_check:
            data.update(check=check, status=status)
        super().__init__(**data)
        if made_by_a_check:  # every field is written, defaults too; one read from a report keeps the keys it had
            self.__pydantic_fields_set__.update(type(self).model_fields)


class GateRecord(Record):
    """One gate applied (quantkit.gates.GateResult as recorded)."""

    gate: str
    metric: str | None = None
    value: Number | None
    threshold: Number
    passed: bool

    @classmethod
    def of(cls, result) -> "GateRecord":
        return cls(gate=result.gate, metric=result.metric, value=result.value, threshold=result.threshold,
                   passed=result.passed)


class BaseUsed(Record):
    """The base an artifact was scored against."""

    path: Path
    given: str | None = None  # --base as given; None: found from the artifact itself
    fingerprint: str  # of that folder
    recorded_fingerprint: str  # the one in the artifact's manifest
    fingerprint_matches: bool

    @classmethod
    def of(cls, path: Path, fingerprint: str, recorded_fingerprint: str, given: str | None = None) -> "BaseUsed":
        return cls(path=Path(path), given=given, fingerprint=fingerprint, recorded_fingerprint=recorded_fingerprint,
                   fingerprint_matches=fingerprint == recorded_fingerprint)

    @property
    def matches(self) -> bool:
        return self.fingerprint == self.recorded_fingerprint


class EvaluatedTarget(Record):
    """One deployable file or checkpoint: a compressed-tensors artifact, or one GGUF type."""

    artifact: str
    target: str
    method: str
    scheme: str
    size_bytes: int
    runtime: str
    device: str | None = None  # where the runtime ran (--device applies to transformers; llama.cpp runs on the CPU)
    passed: bool  # as recorded: push checks it against the gates (quantkit.publish.bundle.verdict_problems)
    runtime_unavailable: str | None = None  # set when the runtime could not run: its checks are skipped
    domains: list[DomainRow] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    gates: list[GateRecord] = Field(default_factory=list)
    path: Path | None = Field(default=None, exclude=True)  # the folder or GGUF file evaluated (this machine only)

    @property
    def scores(self) -> list[DomainRow]:
        return self.domains

    def result(self, check: str) -> CheckResult | None:
        """The result of the check registered as `check` (None: that check did not run here)."""
        return next((c for c in self.checks if c.check == check), None)

    def measured(self, metric: str) -> float | None:
        """A metric's value from the check that measured it (e.g. "kld_mean"); None where none did."""
        return next((c.metrics.get(metric) for c in self.checks if c.status == "measured" and metric in c.metrics), None)


class ValidationSettings(ReadByKey, Record):
    """How validate scored: windows, tokens, device, tasks, serving options. Reports from before
    --device and --task read as the CPU, float32 and no tasks they were."""

    context: int
    stride: int
    max_tokens: int
    domains: list[str] = Field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float32"
    tasks: list[str] = Field(default_factory=list)
    task_limit: int | None = None
    serve: dict[str, Any] | None = None  # ServeOptions.to_dict(); None: serving was not requested


class Resources(ReadByKey, Record):
    wall_s: float
    peak_rss_bytes: int
    peak_rss_note: str | None = None
    peak_gpu_bytes: int | None = None  # written only where the device was a GPU


class ValidationReport(Record):
    report_version: int = REPORT_VERSION
    created: str = ""
    artifact: str  # the artifact folder (its name only in a pushed report)
    manifest_sha256: str | None = None  # of the quantkit.json it checked
    passed: bool
    base: BaseUsed | None = None
    settings: ValidationSettings | None = None
    resources: Resources | None = None
    libraries: dict[str, str | None] = Field(default_factory=dict)
    targets: list[EvaluatedTarget]

    @property
    def path(self) -> Path:
        return Path(self.artifact)

    def mean_kld(self, scheme: str) -> float | None:
        """The mean KLD measured for the target of `scheme` (a GGUF type), None where none was."""
        return next((t.measured("kld_mean") for t in self.targets if t.scheme == scheme), None)


def fixed(v: float | None, digits: int = 4) -> str:
    """A figure in a table: fixed digits, "—" where it was not measured."""
    return "—" if v is None else f"{v:.{digits}f}"


def report_json(report: ValidationReport) -> str:
    """validation.json's text."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False  # right-aligned


@dataclass(frozen=True)
class Section:
    """A check's table in a report: a title, an optional note, and one row per target (or per target and
    task), its first cell the target's name. Renderers lay it out; the check decides what it says."""

    title: str
    columns: tuple[Column, ...]  # after the target column
    rows: tuple[tuple[str, ...], ...]
    note: str | None = None  # a sentence under the title, e.g. what workload the figures come from


@dataclass(frozen=True)
class CardResult:
    """One figure for the model card's model-index (huggingface_hub's EvalResult, without the library)."""

    dataset_type: str
    dataset_name: str
    metric_type: str
    metric_value: float
    metric_name: str

    @classmethod
    def on_heldout(cls, row: DomainRow, metric_type: str, value: float, name: str) -> "CardResult":
        """A figure measured on one held-out domain (its dataset named by the domain and its tokens)."""
        return cls(f"quantkit/holdout-{row.domain}", f"{row.domain} held-out text ({row.n_tokens} tokens)", metric_type,
                   value, name)
