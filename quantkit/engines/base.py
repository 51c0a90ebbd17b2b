"""The interface every quantization engine implements.

An engine turns one recipe output into files in a staging folder. It never writes the
manifest or moves folders: `quantkit.quantize` does that, the same way for every engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantkit.progress import NullReporter, Reporter

if TYPE_CHECKING:
    from quantkit.recipe import Recipe
    from quantkit.sources.calibration import CalibrationSet
    from quantkit.sources.models import ResolvedModel


@dataclass
class EngineJob:
    recipe: "Recipe"
    output: Any  # one of quantkit.recipe's *Output models
    model: "ResolvedModel"
    calibration: "CalibrationSet | None"
    staging_dir: Path
    reporter: Reporter = field(default_factory=NullReporter)


@dataclass
class EngineResult:
    format: str  # e.g. "compressed-tensors"
    timings_s: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)  # goes into the manifest under "engine"
    failures: list[str] = field(default_factory=list)  # parts that failed while the rest was written


class Engine(ABC):
    """One method family. Register an instance in `quantkit.engines.ENGINES`."""

    name: str
    methods: tuple[str, ...]  # the recipe `method` values it produces
    # runs torch and llm-compressor in this process: a recipe without such an output skips their
    # import (5 s) and the accelerator probe
    in_process_torch: bool = True
    # its heavy work runs in child processes (llama.cpp's tools): their peak memory is read from the
    # kernel, and this process is sampled only every 0.5 s (sampling beside them slowed them: quantkit.memory)
    work_in_subprocesses: bool = False

    @abstractmethod
    def needs_calibration(self, output) -> bool: ...

    @abstractmethod
    def describe(self, output) -> str:
        """One line saying what the output will be (scheme, bits, group size, algorithm)."""

    @abstractmethod
    def preflight(self, output, model: "ResolvedModel") -> None:
        """Check the output against the model's shapes before any heavy work; raise SchemeConstraintError."""

    def start(self, output, model: "ResolvedModel") -> None:
        """Begin, in the background, work that needs only the model (not the calibration set) for an output
        about to be made; `run` takes it over. Called before the calibration set is tokenized."""
        return None

    def abandon(self) -> None:
        """Stop and forget background work `run` did not take over (the run failed or was interrupted)."""
        return None

    @abstractmethod
    def run(self, job: EngineJob) -> EngineResult: ...

    @abstractmethod
    def artifact_patterns(self, output) -> tuple[str, ...]:
        """The files (fnmatch patterns of paths in the artifact) the output's format defines: an allow-list.
        Whatever else a run leaves in the staging folder (a model folder's code that save_pretrained copied)
        is left out of the artifact and named in the manifest (`dropped_files`)."""

    def tool_versions(self) -> dict:
        """Versions of tools outside the Python libraries that decide the output (llama.cpp's build);
        part of an output's input fingerprint, so a new toolchain redoes what it made."""
        return {}

    def needs_hessians(self, output) -> bool:
        """Whether making the output holds one Hessian (in_features² float32) per linear layer of the layer
        being calibrated: part of its peak memory estimate (quantkit.matrix.estimate)."""
        return False

    def compute_threads(self, output) -> int | None:
        """The CPU thread count the output's bytes depend on (quantkit.threads), pinned by `run`; part of
        the output's input fingerprint. None: its bytes do not depend on one."""
        return None
