"""A pinned llama.cpp toolchain, built once from the PyPI sdist of llama-cpp-python.

No PyPI package ships Linux llama-quantize / llama-imatrix / llama-perplexity executables,
and the converter only works with its own sibling gguf-py. The llama-cpp-python sdist
vendors llama.cpp at a known commit, so `build_toolchain` (toolchains/llamacpp_build.py)
downloads that sdist with pip (sha256-checked), builds the few tools quantkit needs with cmake,
and copies them with the converter into `~/.cache/quantkit/llama.cpp/<version>/`. This module
finds the built toolchain and runs its tools. See docs/decisions.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import QuantkitError
from quantkit.files import atomic_write_text, cache_dir
from quantkit.progress import Reporter

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-tokenize", "llama-completion")
INFO_NAME = "toolchain.json"


class ToolchainError(QuantkitError):
    """The llama.cpp toolchain is missing, broken, or a tool failed."""


@dataclass(frozen=True)
class LlamaCpp:
    root: Path
    info: dict

    @property
    def version(self) -> str:
        return self.info["version"]

    def tool(self, name: str) -> Path:
        return self.root / "bin" / name

    @property
    def converter(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    def supports_architecture(self, arch: str) -> bool:
        return arch in self.info["architectures"]

    def manifest_entry(self) -> dict:
        keys = ("version", "llama_cpp_commit", "source", "source_sha256", "cmake_flags")
        return {k: self.info[k] for k in keys}

    def run(self, tool: str, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a tool; raise ToolchainError with the tail of its output when it fails.

        Text-reading tools get `--no-escape` from their callers: llama.cpp otherwise turns the
        two characters `\\n` in a prompt *or a -f file* into a newline, silently changing code."""
        cmd = [str(self.tool(tool)), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
            raise ToolchainError(f"{tool} failed (exit {proc.returncode}):\n{tail}")
        return proc

    def complete(self, gguf_file: Path, prompt: str, n_tokens: int = 16) -> str:
        """Greedy continuation of `prompt` by llama.cpp (proves the file loads and generates)."""
        proc = self.run(
            "llama-completion",
            ["-m", str(gguf_file), "-p", prompt, "-n", str(n_tokens), "--temp", "0", "-no-cnv",
             "--no-display-prompt", "-t", str(os.cpu_count() or 1), "--no-warmup", "--no-escape"],
            timeout=600,
        )
        return proc.stdout

    def perplexity(self, gguf_file: Path, text_file: Path, ctx: int, chunks: int | None = None,
                   save_logits: Path | None = None) -> dict:
        """llama-perplexity on a text file; with `save_logits`, also writes the logits for KLD runs."""
        args = ["-m", str(gguf_file), "-f", str(text_file), "-c", str(ctx), "-t", str(os.cpu_count() or 1), "--no-escape"]
        if chunks:
            args += ["--chunks", str(chunks)]
        if save_logits:
            args += ["--kl-divergence-base", str(save_logits)]
        proc = self.run("llama-perplexity", args, timeout=3600)
        log = proc.stdout + proc.stderr
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
        if not m:
            raise ToolchainError("llama-perplexity printed no final estimate")
        n = re.search(r"calculating perplexity over (\d+) chunks", log)
        return {"ppl": float(m.group(1)), "ppl_stderr": float(m.group(2)), "chunks": int(n.group(1)) if n else None}

    def kl_divergence(self, gguf_file: Path, base_logits: Path, ctx: int, chunks: int | None = None) -> dict:
        """llama-perplexity --kl-divergence against logits saved from the base model."""
        args = ["-m", str(gguf_file), "-c", str(ctx), "-t", str(os.cpu_count() or 1),
                "--kl-divergence-base", str(base_logits), "--kl-divergence"]
        if chunks:
            args += ["--chunks", str(chunks)]
        out = self.run("llama-perplexity", args, timeout=3600).stdout
        num = r"(-?nan|-?[0-9.]+(?:e[-+]?[0-9]+)?)"  # tiny KLDs print as -0.000000, degenerate ones as nan
        patterns = {
            "mean_kld": r"^Mean\s+KLD:\s+" + num,
            "median_kld": r"^Median\s+KLD:\s+" + num,
            "p99_kld": r"^99\.0%\s+KLD:\s+" + num,
            "same_top_p": r"^Same top p:\s+" + num,
            "ppl": r"^Mean PPL\(Q\)\s+:\s+" + num,
            "ppl_base": r"^Mean PPL\(base\)\s+:\s+" + num,
        }
        result = {}
        for key, pat in patterns.items():
            m = re.search(pat, out, re.MULTILINE)
            if not m:
                raise ToolchainError(f"llama-perplexity --kl-divergence output has no '{key}' line")
            result[key] = float(m.group(1))
        return result

    def convert(self, model_dir: Path, outfile: Path, outtype: str, model_name: str | None = None,
                trust_remote_code: bool = False) -> subprocess.CompletedProcess:
        """Run the converter through quantkit's guard: it cannot import code from `model_dir` unless
        `trust_remote_code` (the converter itself passes trust_remote_code=True for some architectures)."""
        from quantkit.toolchains import convert_guard

        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.root / "gguf-py"), os.environ.get("PYTHONPATH", "")]),
               "QUANTKIT_TRUST_REMOTE_CODE": "1" if trust_remote_code else "0"}
        cmd = [sys.executable, convert_guard.__file__, str(self.converter), str(model_dir), "--outtype", outtype.lower(),
               "--outfile", str(outfile)]
        if model_name:
            cmd += ["--model-name", model_name]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              errors="replace") as child:
            _CONVERTERS.add(child)
            try:
                stdout, stderr = child.communicate()
            finally:
                _CONVERTERS.discard(child)
        proc = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
        if proc.returncode != 0:
            log = proc.stdout + proc.stderr
            refusal = next((line for line in log.splitlines() if convert_guard.REFUSAL_MARK in line), None)
            if refusal:
                raise ToolchainError(f"convert_hf_to_gguf.py on {model_dir}: {refusal.strip()}")
            tail = "\n".join(log.strip().splitlines()[-12:])
            raise ToolchainError(f"convert_hf_to_gguf.py failed on {model_dir} (exit {proc.returncode}):\n{tail}")
        return proc

    @property
    def remote_code_architectures(self) -> frozenset[str]:
        """Architectures whose conversion calls transformers with trust_remote_code=True (read from the
        converter's source: classes that pass it, or call a helper of the base class that does)."""
        return remote_code_architectures(self.root)


_CONVERTERS: set[subprocess.Popen] = set()  # converter processes running now, from any thread


def stop_converters() -> None:
    """Terminate every converter this process started that is still running (a conversion begun in the
    background for a run that then failed); their partial files are removed by converted_base."""
    for child in list(_CONVERTERS):
        child.terminate()


def _converter_sources(root: Path) -> list[Path]:
    return [p for p in [root / "convert_hf_to_gguf.py", *sorted((root / "conversion").glob("*.py"))] if p.is_file()]


@functools.lru_cache(maxsize=4)
def remote_code_architectures(root: Path) -> frozenset[str]:
    """The AST scan takes about a second; its result is kept in the cache, keyed by the converter
    sources' paths, sizes and mtimes (a rebuilt or edited converter is scanned again)."""
    key = [[str(p), st.st_size, st.st_mtime_ns] for p in _converter_sources(root) for st in [p.stat()]]
    record = cache_dir() / "llama.cpp-scans" / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(record.read_text())
        if cached.get("key") == key:
            return frozenset(cached["remote_code_architectures"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    archs = _scan_remote_code_architectures(root)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({"key": key, "remote_code_architectures": sorted(archs)}) + "\n")
    return archs


def _scan_remote_code_architectures(root: Path) -> frozenset[str]:
    import ast

    trees = {p.name: ast.parse(p.read_text(encoding="utf-8", errors="replace")) for p in _converter_sources(root)}

    def trusts(node) -> bool:
        return any(isinstance(k, ast.keyword) and k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant)
                   and k.value.value is True for k in ast.walk(node))

    # the shared base class's helpers that trust (`_set_vocab_qwen`, ...), called by name from model classes
    shared = [trees[n] for n in ("base.py", "convert_hf_to_gguf.py") if n in trees]
    helpers = {f.name for tree in shared for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and trusts(f)}
    helpers -= {"set_vocab", "get_vocab_base", "__init__"}  # overridden everywhere: a name, not a behaviour
    trees = list(trees.values())
    archs: set[str] = set()
    for tree in trees:
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            calls = {c.func.attr for c in ast.walk(cls) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}
            if not (trusts(cls) or calls & helpers):
                continue
            for deco in cls.decorator_list:  # @ModelBase.register("QWenLMHeadModel", ...)
                if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "register":
                    archs |= {a.value for a in deco.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return frozenset(archs)


def toolchain_dir() -> Path:
    override = os.environ.get("QUANTKIT_LLAMA_CPP")
    return Path(override) if override else cache_dir() / "llama.cpp" / f"{SDIST_VERSION}-{LLAMA_CPP_COMMIT[:9]}"


def find_toolchain() -> LlamaCpp | None:
    root = toolchain_dir()
    info_path = root / INFO_NAME
    if not info_path.is_file():
        return None
    info = json.loads(info_path.read_text())
    if not all((root / "bin" / t).is_file() for t in TOOLS) or not (root / "convert_hf_to_gguf.py").is_file():
        return None
    return LlamaCpp(root, info)


def require_toolchain() -> LlamaCpp:
    tc = find_toolchain()
    if tc is None:
        raise ToolchainError(
            f"the llama.cpp toolchain is not installed (looked in {toolchain_dir()}); "
            "run `quantkit env llama.cpp` once to build it (about 5 minutes on 2 cores)"
        )
    return tc


# ------------------------------------------------------------------ shared by quantization and validation

FIDELITY_TEXT = (
    "Quantization maps 2024 float weights to 4-bit integers; café, naïve, 東京 and emoji 🙂 must survive.\n"
    "def f(x):\n    return x ** 2  # squared\n\tTabs,  double  spaces and <|im_end|> text.\n"
    r'print("a\nb\tc")  # backslash sequences in source code stay two characters' "\n"
)


def converted_base(tc: LlamaCpp, model, base_type: str, reporter: Reporter) -> Path:
    """The model (a quantkit.sources.models.ResolvedModel) converted to a high-precision GGUF, cached per
    model fingerprint and toolchain: quantization converts to F16/BF16, validation to F32 for reference logits."""
    commit = tc.info["llama_cpp_commit"][:9]
    target = cache_dir() / "gguf" / f"{model.fingerprint[:16]}-{base_type}-{commit}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    try:
        with reporter.task(f"converting to GGUF {base_type} (llama.cpp convert_hf_to_gguf.py, once per model)"):
            tc.convert(model.path, partial, base_type, model_name=Path(model.spec.source).name,
                       trust_remote_code=model.spec.trust_remote_code)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def gguf_tokens(tc: LlamaCpp, gguf_file: Path, text: str) -> list[int]:
    """Token ids of `text` as llama.cpp tokenizes it (no BOS added, special tokens as text)."""
    proc = tc.run("llama-tokenize", ["-m", str(gguf_file), "-p", text, "--ids", "--no-bos", "--no-escape", "--log-disable"])
    match = re.search(r"\[([\d,\s]*)\]\s*$", proc.stdout.strip())
    if not match:
        raise ToolchainError(f"could not read token ids from llama-tokenize output: {proc.stdout[-200:]!r}")
    return [int(t) for t in match.group(1).replace(",", " ").split()]


def check_tokenizer_fidelity(tc: LlamaCpp, gguf_file: Path, tokenizer, text: str = FIDELITY_TEXT) -> None:
    """Refuse a GGUF whose tokenizer disagrees with the model's Hugging Face tokenizer: every eval would be off."""
    hf = tokenizer(text, add_special_tokens=False)["input_ids"]
    llama = gguf_tokens(tc, gguf_file, text)
    if hf != llama:
        at = next((i for i, (a, b) in enumerate(zip(hf, llama)) if a != b), min(len(hf), len(llama)))
        raise ToolchainError(
            f"the GGUF tokenizer disagrees with the Hugging Face tokenizer at token {at} "
            f"(HF {hf[at:at + 5]}, llama.cpp {llama[at:at + 5]}); the converter probably picked the wrong "
            "pre-tokenizer for this model"
        )
