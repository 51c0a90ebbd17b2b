"""What keeps quantkit no slower than the tools it wraps (issue 14): hashing that matches hashlib and
reads each file once, a base hashed at most once, artifacts hashed once, and commands that start
without importing torch. Timings themselves live in benchmarks/, never in assertions."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import quantkit
from quantkit import files
from quantkit.files import cached_sha256, sha256_file, sha256_files
from tests.conftest import REPO, tiny_recipe_text

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [0, 1, 2047, 4096, 4097, 3 * 1024 + 5, 64 * 1024 + 1])
def test_sha256_file_matches_hashlib(tmp_path, size):
    """Around the one-thread/two-thread threshold (2 chunks) with a 1 KiB chunk, so every path runs."""
    p = tmp_path / "f"
    p.write_bytes(os.urandom(size))
    assert sha256_file(p, chunk=1024) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_sha256_files_keeps_order_and_matches(tmp_path):
    paths = []
    for i, size in enumerate([5, 40_000_000, 0, 17_000_000, 3]):
        p = tmp_path / f"shard-{i}"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    assert sha256_files(paths) == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_reader_error_surfaces(tmp_path, monkeypatch):
    """A read that fails mid-file raises in the caller (no hang, no digest of half a file)."""
    p = tmp_path / "big"
    p.write_bytes(os.urandom(64 * 1024))
    real_open = open
    calls = Counter()

    class Failing:
        def __init__(self, f):
            self.f = f

        def readinto(self, buf):
            calls["read"] += 1
            if calls["read"] == 3:
                raise OSError(5, "Input/output error")
            return self.f.readinto(buf)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *a, **k: Failing(real_open(*a, **k)))
    with pytest.raises(OSError, match="Input/output error"):
        sha256_file(p, chunk=1024)


def _count_hashes(monkeypatch) -> Counter:
    counts: Counter = Counter()
    real = files.sha256_file

    def counting(path, *a, **k):
        counts[Path(path).resolve()] += 1
        return real(path, *a, **k)

    monkeypatch.setattr(files, "sha256_file", counting)
    return counts


def test_cached_sha256_rehashes_only_changed_files(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    counts = _count_hashes(monkeypatch)
    p = tmp_path / "w.bin"
    p.write_bytes(b"a" * 1000)
    first = cached_sha256(p)
    assert cached_sha256(p) == first and counts[p.resolve()] == 1  # unchanged: from the cache
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: hashed again
    assert cached_sha256(p) == first and counts[p.resolve()] == 2
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"b" * 1000)
    os.utime(replacement, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns))  # same size and mtime, new inode
    os.replace(replacement, p)
    assert cached_sha256(p) == hashlib.sha256(b"b" * 1000).hexdigest() and counts[p.resolve()] == 3


@pytest.mark.integration
def test_base_and_artifacts_hashed_once(tiny_model, tmp_path, monkeypatch):
    """One quantize of two outputs reads each base file at most once and each artifact file once; a second
    run on an unchanged base reads no base file; validate hashes the artifact's files once and no base file."""
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)  # a folder no other test has hashed into this cache
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    counts = _count_hashes(monkeypatch)
    outputs = ("  - {name: a, method: rtn, scheme: W4A16, group_size: 64}\n"
               "  - {name: b, method: rtn, scheme: W8A16, group_size: 64}\n")
    recipe = quantkit.parse_recipe(tiny_recipe_text(base, tmp_path / "out", outputs))
    arts = quantkit.quantize(recipe)
    base_counts = {p: n for p, n in counts.items() if p.parent == base.resolve()}
    assert base_counts and set(base_counts.values()) == {1}, base_counts
    out = (tmp_path / "out").resolve()
    by_output: dict[str, dict[str, int]] = {}
    for p, n in counts.items():
        if out in p.parents:  # hashed in the staging folder `.NAME.partial-…` that became NAME
            top, *rest = p.relative_to(out).parts
            by_output.setdefault(top.lstrip(".").split(files.PARTIAL_MARK)[0], {})["/".join(rest)] = n
    assert by_output == {art.name: {rel: 1 for rel in art.manifest.files} for art in arts}, by_output

    counts.clear()
    quantkit.quantize(recipe, force=True)
    assert not [p for p in counts if p.parent == base.resolve()], "an unchanged base was hashed again"

    counts.clear()
    from quantkit.validate import validate

    validate(arts[0].path, max_tokens=64, context=32, stride=32)
    assert not [p for p in counts if p.parent == base.resolve()]
    hashed = Counter({p.name: n for p, n in counts.items() if arts[0].path.resolve() in p.parents})
    assert hashed and set(hashed.values()) == {1}, hashed


HEAVY = ("torch", "transformers", "llmcompressor", "compressed_tensors", "numpy", "datasets")


@pytest.mark.integration
@pytest.mark.parametrize("args", [["--help"], ["quantize", "--help"], ["validate", "--help"], ["push", "--help"],
                                  ["recipes", "validate", "recipes/smollm2-135m.yaml"],
                                  ["recipes", "validate", "recipes/smollm2-135m.yaml", "--json"],
                                  ["recipes", "schema"]])
def test_light_commands_import_no_torch(args):
    """`quantkit --help` and `recipes validate` start in well under a second because they import none of
    the heavy libraries (measured: benchmarks/startup.py); `-X importtime` lists every module imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "quantkit.cli.main", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in imported  # the listing works
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


CASES = [{"scheme": s} for s in ("W4A16", "W4A16_ASYM", "W8A16")] + [
    {"scheme": "W4A16", "group_size": 32}, {"scheme": "W8A16", "group_size": "channel"}, {"scheme": "W4A16", "bits": 8},
    {"scheme": "W4A16_ASYM", "symmetric": True}]


@pytest.mark.parametrize("output", [
    *({"method": "gptq", **c} for c in CASES),
    {"method": "int8"}, {"method": "int8", "activations": "static"}, {"method": "int8", "group_size": "channel"},
    {"method": "fp8", "scheme": "FP8_DYNAMIC"}, {"method": "fp8", "scheme": "FP8"}, {"method": "fp8", "scheme": "FP8_BLOCK"},
])
def test_scheme_table_equals_compressed_tensors(output):
    """The preset table that describes outputs without importing torch says what compressed-tensors would build."""
    from quantkit.engines.llmcompressor_schemes import resolved_scheme, scheme_summary
    from quantkit.recipe import Recipe

    out = Recipe.model_validate({"name": "r", "model": "m", "outputs": [{"name": "o", **output}]}).outputs[0]
    weights, activations = scheme_summary(out)
    real = resolved_scheme(out)

    def as_dict(args, keys):
        return None if args is None else {k: getattr(getattr(args, k), "value", getattr(args, k)) for k in keys}

    assert weights == as_dict(real.weights, weights)
    assert activations == as_dict(real.input_activations, activations or {})


@pytest.mark.integration
def test_base_hashed_while_the_output_is_made(tiny_model, tmp_path, monkeypatch):
    """A new output does not wait for the base's fingerprint before its engine starts: the hash runs in the
    background and is joined for the manifest (on a first run of a large base, seconds of wall time)."""
    import shutil
    import threading

    from quantkit.engines.llmcompressor import LLMCompressorEngine
    from quantkit.sources import models

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    engine_started = threading.Event()
    waited: list[bool] = []
    real_fingerprint, real_run = models._fingerprint, LLMCompressorEngine.run

    def fingerprint_after_engine_start(paths):
        waited.append(engine_started.wait(timeout=60))  # False: quantize joined the hash before starting the engine
        return real_fingerprint(paths)

    def run(self, job):
        engine_started.set()
        return real_run(self, job)

    monkeypatch.setattr(models, "_fingerprint", fingerprint_after_engine_start)
    monkeypatch.setattr(LLMCompressorEngine, "run", run)
    [art] = quantkit.quantize(quantkit.parse_recipe(tiny_recipe_text(
        base, tmp_path / "out", "  - {name: a, method: rtn, scheme: W4A16, group_size: 64}\n")))
    assert waited == [True]
    assert art.manifest.base_model.fingerprint == models.fingerprint_folder(base)[0]


def test_hashing_holds_a_few_buffers_not_the_file(tmp_path):
    """Hashing a 96 MB file in a fresh process raises its peak RSS by a few fixed buffers, not by the file
    or by a heap of freed blocks (the page cache holds the file; RSS counts only the process's memory)."""
    p = tmp_path / "big.bin"
    with open(p, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(1 << 20))
    code = ("import resource, sys; from pathlib import Path; from quantkit.files import sha256_files;"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "sha256_files([Path(sys.argv[1]), Path(sys.argv[1])]);"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    grown_kb = int(subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True,
                                  cwd=REPO).stdout)
    assert grown_kb < 24 * 1024, f"peak RSS grew {grown_kb / 1024:.0f} MB hashing two 96 MB files"


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
@pytest.mark.parametrize("code", [0, 2, 143, None])
def test_exit_now_keeps_code_output_and_atexit(code):
    """The CLI skips the interpreter's teardown (1.2-1.6 s once transformers is imported) but keeps what
    a normal exit guarantees: the exit code, buffered output (more than a pipe holds) and atexit handlers."""
    big = "x" * 200_000
    proc = _run_python(
        "import atexit, logging, sys\n"
        "from quantkit.cli.main import exit_now\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "atexit.register(lambda: sys.stdout.write('atexit ran'))\n"
        f"sys.stdout.write('x' * {len(big)}); logging.getLogger('q').warning('logged')\n"
        f"exit_now({code!r})\n"
        "print('not reached')\n")
    assert proc.returncode == (code or 0), proc.stderr
    assert proc.stdout == big + "atexit ran"
    assert "logged" in proc.stderr


@pytest.mark.integration
def test_exit_now_waits_for_a_running_thread():
    """A non-daemon thread still at work gets Python's own exit, which waits for it to finish."""
    proc = _run_python(
        "import threading, time, sys\n"
        "from quantkit.cli.main import exit_now\n"
        "t = threading.Thread(target=lambda: (time.sleep(0.5), sys.stdout.write('thread finished')))\n"
        "t.start()\n"
        "exit_now(3)\n")
    assert (proc.returncode, proc.stdout) == (3, "thread finished"), proc.stderr


@pytest.mark.integration
def test_cli_exit_codes_through_exit_now(tmp_path):
    """The installed entry point (`main`) keeps its exit codes: 0 with the whole output, 2 with the one-line error."""
    ok = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "recipes", "schema"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["title"] == "Recipe"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: smollm2-135m\noutputs: [{name: a, method: nope}]\n")
    proc = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "recipes", "validate", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr, proc.stdout + proc.stderr
