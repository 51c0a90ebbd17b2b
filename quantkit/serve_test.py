"""`quantkit serve-test PATH` as a library call: `run_serve_test` serves one model in vLLM and gates the result."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.checks.serve import serving_gates
from quantkit.errors import QuantkitError
from quantkit.gates import GateResult, evaluate_gates, parse_gate_overrides
from quantkit.progress import NullReporter, Reporter
from quantkit.serving.smoke import ServeOptions, ServeResult, greedy_reference, serve_test, unsupported_result
from quantkit.serving.workload import GREEDY_PROMPT


@dataclass
class ServeReport:
    target: Path
    result: ServeResult
    gates: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict:
        return {"target": str(self.target), "passed": self.passed, "result": self.result.to_dict(),
                "gates": [g.to_dict() for g in self.gates]}


def describe_target(path: Path) -> tuple[Path, str | None, Path]:
    """(what vLLM loads, the quantization it should report, where logs go)."""
    from quantkit.artifact import MANIFEST_NAME, SERVE_LOGS, Artifact
    from quantkit.files import cache_dir

    path = Path(path).expanduser()
    if not path.exists():
        raise QuantkitError(f"not found: {path.resolve()}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise QuantkitError(f"{path}: expected a model folder or a .gguf file")
        return path, "gguf", cache_dir() / "serve-logs" / path.stem
    if (path / MANIFEST_NAME).is_file():
        art = Artifact.load(path)  # checksums first
        logs = path / SERVE_LOGS / "serve-test"
        first = art.targets()[0]
        return first.path, first.format, logs
    config = path / "config.json"
    if not config.is_file():
        raise QuantkitError(f"{path} has neither {MANIFEST_NAME} nor config.json: not a model folder")
    qc = json.loads(config.read_text()).get("quantization_config") or {}
    return path, qc.get("quant_method"), cache_dir() / "serve-logs" / path.name


def run_serve_test(path: str | Path, options: ServeOptions | None = None, *, vllm_python: str | Path | None = None,
                   gate_overrides: list[str] | None = None, reporter: Reporter | None = None) -> ServeReport:
    from quantkit.toolchains.vllm import require_environment

    options = options or ServeOptions()
    reporter = reporter or NullReporter()
    overrides = parse_gate_overrides(gate_overrides)
    model, expected, log_dir = describe_target(Path(path))
    env = require_environment(vllm_python)
    with reporter.task("vLLM: can this machine's kernels serve it (kernel library probe, cached)"):
        result = unsupported_result(model, env, expected_quantization=expected, options=options)
    if result is None:
        with reporter.task(f"transformers: greedy reference for {GREEDY_PROMPT!r}"):
            reference = greedy_reference(model, expected, options.greedy_tokens)
        result = serve_test(model, env, expected_quantization=expected, options=options, log_dir=log_dir,
                            greedy_reference=reference, reporter=reporter)
    gates = {**serving_gates(options), **overrides}
    return ServeReport(model, result, evaluate_gates(gates, result.metrics()))
