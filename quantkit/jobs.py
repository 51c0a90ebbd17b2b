"""The job: one artifact to make, the only unit of a quantize run. A plain recipe is a matrix of one cell,
so `plan` is the one planner for both, and `quantize` (in this process), `status`, `validate --recipe`
and every executor iterate the same jobs.

The types here cross the executor boundary (a child process, a Ray task): the run's options, a job's
spec and its result are frozen dataclasses with `to_json`/`from_json`, never dicts read by key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from quantkit.errors import JobsFailed, QuantkitError
from quantkit.recipe import Cell, Recipe

if TYPE_CHECKING:
    from quantkit.artifact import Artifact, Manifest

MAX_LISTED = 8  # job ids an --only error names before "and N more"

Status = Literal["made", "kept", "failed"]


@dataclass(frozen=True)
class Job:
    """One artifact to make: an output of one cell of the recipe."""

    id: str  # `<cell folder>/<artifact name>`, or the artifact name for a plain recipe
    cell: Cell
    index: int  # position of the output in the cell's recipe
    dest: Path | str  # a folder, or a URL when the output root is one (quantkit.output_roots)
    listed: str  # the output's name as the recipe lists it (a cell names its artifact after its labels)

    @property
    def output(self):
        return self.cell.recipe.outputs[self.index]

    @property
    def remote(self) -> bool:
        return isinstance(self.dest, str)


def plan(recipe: Recipe, output_dir: str | Path | None = None, only: list[str] | None = None) -> list[Job]:
    """Every job of the recipe, model-major. `only` selects jobs by an output's name as the recipe lists
    it (every cell's), an artifact's name (as quantize prints it) or a job id (as plan prints it)."""
    from quantkit.output_roots import under

    root = output_dir or recipe.output_dir
    all_jobs = [Job(f"{c.folder}/{o.name}" if c.folder else o.name, c, i, under(root, c.folder, o.name),
                    recipe.outputs[c.output_indices[i]].name)
                for c in recipe.cells() for i, o in enumerate(c.recipe.outputs)]
    if not only:
        return all_jobs
    known = {name for j in all_jobs for name in (j.id, j.listed, j.output.name)}
    for n in only:
        if n not in known:
            raise QuantkitError(f"--only {n}: {only_choices(recipe, all_jobs)}")
    return [j for j in all_jobs if {j.id, j.listed, j.output.name} & set(only)]


def only_choices(recipe: Recipe, all_jobs: list[Job]) -> str:
    """What --only accepts, for its error: the recipe's output names, and the job ids (a few, when many)."""
    listed = [o.name for o in recipe.outputs]
    ids = [j.id for j in all_jobs if j.id not in listed]
    if not ids:  # every job is named by its output: there is nothing else to choose
        return f"the recipe has no output of that name; outputs: {', '.join(listed)}"
    text = f"not an output, artifact or job of this recipe; outputs: {', '.join(listed)}"
    more = f" and {len(ids) - MAX_LISTED:,} more (quantkit plan lists them)" if len(ids) > MAX_LISTED else ""
    return text + f"; jobs (or their last part, the artifact name): {', '.join(ids[:MAX_LISTED])}{more}"


def by_cell(jobs: list[Job]) -> list[tuple[Cell, list[Job]]]:
    """The jobs grouped by cell, in order: a cell's jobs share its resolved model and calibration set."""
    cells: dict[str, tuple[Cell, list[Job]]] = {}
    for job in jobs:
        cells.setdefault(job.cell.folder, (job.cell, []))[1].append(job)
    return list(cells.values())


class _Json:
    """to_json/from_json of a frozen dataclass of JSON values (nested ones named in `_nested`)."""

    _nested: dict[str, Any] = {}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name, kind in cls._nested.items():
            if values.get(name) is not None:
                values[name] = kind.from_dict(values[name])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class RunOptions(_Json):
    """How a run treats its jobs, decided once (by the CLI or the caller) and applied by whoever runs a
    job: this process, or the child of an executor's worker (`child_args`)."""

    force: bool = False  # redo up-to-date outputs too
    force_space: bool = False  # start although the artifacts' estimate exceeds the free disk space
    force_memory: bool = False  # start although the estimated peak exceeds the available memory
    keep_going: bool = True  # a failed output (a cell, in this process) does not stop the others
    retries: int = 1  # of a job that crashed or whose worker died (executors)
    validate: bool = False  # validate each artifact in its job, right after it is made (executors)

    def child_args(self) -> list[str]:
        """The flags that make the child `quantkit quantize` of one job apply these options."""
        return [flag for flag, on in (("--force", self.force), ("--force-space", self.force_space),
                                      ("--force-memory", self.force_memory)) if on]


DEFAULT_OPTIONS = RunOptions()


@dataclass(frozen=True)
class JobSpec(_Json):
    """A job as plain data for a worker (made by executors.job_spec): the cell recipe with local paths made
    absolute, where the artifact goes, the environment to forward, the run's options, and the resources
    the plan estimates."""

    id: str
    recipe: str  # the cell recipe as JSON
    output: str  # the artifact's name in the cell recipe
    dest: str  # a folder, or a URL
    remote: bool
    cwd: str
    threads: int  # the CPU thread count every worker computes on (quantkit.threads)
    options: RunOptions = field(default_factory=RunOptions)
    python: str | None = None  # the interpreter the job runs under (default: the worker's)
    env: dict[str, str] = field(default_factory=dict)
    host_bytes: int | None = None
    wants_gpu: bool = True
    gpus: int = 1

    _nested = {"options": RunOptions}


@dataclass(frozen=True)
class ArtifactSummary(_Json):
    """What a run's row says of an artifact, read from its manifest."""

    name: str
    method: str
    scheme: str
    size_bytes: int
    compression_ratio: float | None
    time_s: float | None
    peak_rss_bytes: int | None

    @classmethod
    def of(cls, manifest: "Manifest") -> "ArtifactSummary":
        return cls(manifest.name, manifest.method, manifest.scheme, manifest.size_bytes, manifest.compression_ratio,
                   manifest.timings_s.get("total_s"), manifest.peak_rss_bytes)


@dataclass(frozen=True)
class JobResult(_Json):
    """What became of one job, wherever it ran."""

    id: str
    name: str  # the artifact's name
    status: Status
    dest: str
    attempts: int = 0
    seconds: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    host: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    error: str | None = None
    failed_at: str | None = None  # quantize, validate or publish
    retryable: bool = False  # a crash or a killed process may not recur; bad input and failed gates do
    artifact: ArtifactSummary | None = None  # what is at `dest` (a failed job's partial artifact too)

    _nested = {"artifact": ArtifactSummary}


@dataclass
class QuantizeRun:
    """A quantize run: one result per job, however the jobs ran. `rows()` is its one JSON rendering
    (`quantkit quantize --json`): each artifact's row (path, name, method, scheme, sizes, time, peak
    RSS), with the job's own fields."""

    results: list[JobResult]
    seconds: float = 0.0
    artifacts: list["Artifact"] = field(default_factory=list)  # those made or kept in this process

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]

    def counts(self) -> dict[str, int]:
        return {k: sum(r.status == k for r in self.results) for k in ("made", "kept", "failed")}

    def rows(self) -> list[dict]:
        rows = []
        for r in self.results:
            a = r.artifact
            rows.append({
                "path": r.dest, "name": a.name if a else r.name, "method": a.method if a else None,
                "scheme": a.scheme if a else None, "size_bytes": a.size_bytes if a else None,
                "compression_ratio": a.compression_ratio if a else None, "time_s": a.time_s if a else None,
                "peak_rss_bytes": a.peak_rss_bytes if a else None,
                "job": r.id, "status": r.status, "attempts": r.attempts, "seconds": r.seconds, "host": r.host,
                "started_at": r.started_at, "ended_at": r.ended_at, "error": r.error, "failed_at": r.failed_at,
            })
        return rows

    def error(self) -> JobsFailed | None:
        """The failure to raise after the results are shown (exit 1), or None."""
        if not self.failed:
            return None
        lines = "\n".join(f"  - {r.id}: {((r.error or '').strip().splitlines() or ['failed'])[-1]}" for r in self.failed)
        return JobsFailed(f"{len(self.failed)} of {len(self.results)} job(s) failed, wholly or in part:\n{lines}")
