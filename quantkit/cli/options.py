"""Typed option aliases shared by every command, so each option is spelled one way."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class ProgressMode(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    none = "none"


class SpeculativeMethod(str, Enum):
    ngram = "ngram"
    draft_model = "draft_model"
    none = "none"


class ServeDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    auto = "auto"


RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file (see `recipes/` and docs/recipes.md).", show_default=False)]
ArtifactArg = Annotated[Path, typer.Argument(help="Artifact folder written by `quantkit quantize`.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Override a recipe field before validation: KEY=VALUE, dotted path, VALUE parsed as YAML "
        "(e.g. --set calibration.num_samples=16 --set outputs.0.group_size=64). Repeatable.",
        show_default=False,
    ),
]
OutputDirOpt = Annotated[
    Optional[str],
    typer.Option("--output-dir", "-o", help="Folder for the artifacts, or a URL fsspec knows (s3://BUCKET/PREFIX, file:///PATH); "
                 "default: the recipe's output_dir.", show_default=False),
]
OnlyOpt = Annotated[
    Optional[list[str]], typer.Option("--only", help="Only this output: its name in the recipe, its artifact's name or its job id (as `quantkit plan` prints them). Repeatable.", show_default=False)
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo outputs that are up to date too (an artifact whose inputs changed is redone without it; a folder that is not an artifact is never replaced).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the libraries' own logs and progress bars (before the command: quantkit -v quantize ...).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
ProgressOpt = Annotated[
    Optional[ProgressMode],
    typer.Option("--progress", help="Progress on stderr: rich (bars), plain (timestamped start/end lines and a line every 30 s, "
                 "for CI logs) or none. Default: rich in a terminal, plain otherwise; or $QUANTKIT_PROGRESS.",
                 show_default=False),
]

# vLLM serving smoke test (validate --serve and serve-test)
VllmPythonOpt = Annotated[
    Optional[Path], typer.Option("--vllm-python", help="Python interpreter of a vLLM environment (default: $QUANTKIT_VLLM_PYTHON, else the one `quantkit env vllm` made).", show_default=False)
]
SpeculativeOpt = Annotated[SpeculativeMethod, typer.Option("--speculative", help="Speculative decoding to measure (draft_model needs --draft).")]
DraftOpt = Annotated[Optional[Path], typer.Option("--draft", help="Draft model for --speculative draft_model (e.g. the quantized artifact drafting for its float base).", show_default=False)]
ConcurrencyOpt = Annotated[Optional[list[int]], typer.Option("--concurrency", help="Concurrent requests of the speed workload. Repeatable (default: 1 and 8).", show_default=False)]
ServeMaxTokensOpt = Annotated[int, typer.Option("--serve-max-tokens", help="Output tokens per request of the speed workload.")]
ServePromptsOpt = Annotated[Optional[int], typer.Option("--serve-prompts", help="Use the first N of the 8 copy/edit/quote prompts (short runs for slow kernels such as FP8 on CPU).", show_default=False)]
ReadyTimeoutOpt = Annotated[float, typer.Option("--ready-timeout", help="Seconds to wait for the server's /health.")]
ServeDtypeOpt = Annotated[Optional[ServeDtype], typer.Option("--serve-dtype", help="vLLM --dtype (default on CPU: float32 for unquantized models, bfloat16 for quantized ones).", show_default=False)]
def serve_options(speculative: SpeculativeMethod, draft: Optional[Path], concurrency: Optional[list[int]], max_tokens: int,
                  prompts: Optional[int], ready_timeout: float, dtype: Optional[ServeDtype] = None):
    from quantkit.errors import QuantkitError
    from quantkit.serving.smoke import ServeOptions

    spec = None if speculative is SpeculativeMethod.none else speculative.value
    if spec == "draft_model" and draft is None:
        raise QuantkitError("--speculative draft_model needs --draft PATH (a model folder with the same tokenizer)")
    if draft is not None and not draft.exists():
        raise QuantkitError(f"--draft: not found: {draft.resolve()}")
    if concurrency and any(c < 1 for c in concurrency):
        raise QuantkitError("--concurrency must be at least 1")
    if max_tokens < 2 or (prompts is not None and prompts < 1):
        raise QuantkitError("--serve-max-tokens must be at least 2 and --serve-prompts at least 1")
    return ServeOptions(speculative=spec, draft_model=draft.resolve() if draft else None,
                        concurrency=tuple(concurrency or (1, 8)), max_tokens=max_tokens, prompts=prompts,
                        ready_timeout=ready_timeout, dtype=dtype.value if dtype is not None else None)
