"""`quantkit serve-test PATH` as a library call: `run_serve_test` serves one model in vLLM and gates the result.

A verb (floor 6 in tests/test_layers.py, with validate) inside the serving package (floor 4): it gates the
result with checks.serve's gates, one floor up, so the package's `__init__` never imports it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.checks.serve import serving_gates
from quantkit.errors import QuantkitError
from quantkit.gates import GateResult, evaluate_gates, parse_gate_overrides
from quantkit.progress import NullReporter, Reporter
from quantkit.serving.reference import greedy_reference
from quantkit.serving.results import ServeOptions, ServeResult
from quantkit.serving.smoke import serve_test, unsupported_result
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

    @classmethod
    def from_dict(cls, doc: dict) -> "ServeReport":
        """A report read back from its JSON (`serve-test --json`, `--output`)."""
        return cls(Path(doc["target"]), ServeResult.model_validate(doc["result"]), [GateResult(**g) for g in doc["gates"]])


def describe_target(path: Path) -> tuple[Path, str | None, Path, bool]:
    """(what vLLM loads, the quantization it should report, where logs go, whether transformers runs
    what vLLM runs: the greedy reference)."""
    from quantkit.artifact import MANIFEST_NAME, SERVE_LOGS, Artifact
    from quantkit.files import cache_dir
    from quantkit.formats import format_named

    path = Path(path).expanduser()
    if not path.exists():
        raise QuantkitError(f"not found: {path.resolve()}")
    if path.is_file():
        if path.suffix != ".gguf":
            raise QuantkitError(f"{path}: expected a model folder or a .gguf file")
        gguf = format_named("gguf")  # the only single-file format
        return path, gguf.vllm_quantization, cache_dir() / "serve-logs" / path.stem, gguf.transformers_reference
    if (path / MANIFEST_NAME).is_file():
        art = Artifact.load(path)  # checksums first
        logs = path / SERVE_LOGS / "serve-test"
        first = art.targets()[0]
        fmt = format_named(first.format)
        return first.path, fmt.vllm_quantization, logs, fmt.transformers_reference
    config = path / "config.json"
    if not config.is_file():
        raise QuantkitError(f"{path} has neither {MANIFEST_NAME} nor config.json: not a model folder")
    qc = json.loads(config.read_text()).get("quantization_config") or {}
    return path, qc.get("quant_method"), cache_dir() / "serve-logs" / path.name, True


def run_serve_test(path: str | Path, options: ServeOptions | None = None, *, vllm_python: str | Path | None = None,
                   gate_overrides: list[str] | None = None, reporter: Reporter | None = None) -> ServeReport:
    from quantkit.toolchains.vllm import require_environment

    options = options or ServeOptions()
    reporter = reporter or NullReporter()
    overrides = parse_gate_overrides(gate_overrides)
    model, expected, log_dir, has_reference = describe_target(Path(path))
    env = require_environment(vllm_python)
    with reporter.task("vLLM: can this machine's kernels serve it (kernel library probe, cached)"):
        result = unsupported_result(model, env, expected_quantization=expected, options=options)
    if result is None:
        reference = None
        if has_reference:
            with reporter.task(f"transformers: greedy reference for {GREEDY_PROMPT!r}"):
                reference = greedy_reference(model, options.greedy_tokens)
        result = serve_test(model, env, expected_quantization=expected, options=options, log_dir=log_dir,
                            greedy_reference=reference, reporter=reporter)
    gates = {**serving_gates(options), **overrides}
    return ServeReport(model, result, evaluate_gates(gates, result.metrics()))
