"""What validate reads and writes: domain files read only as far as --max-tokens scores, the base named
with --base (fingerprint-checked), and one-line errors for a read-only artifact or a full cache disk."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe_text

import quantkit
from quantkit.cache_store import REFERENCES, CacheStore
from quantkit.errors import ArtifactError, QuantkitError
from quantkit.sources.heldout import DomainText, domain_text
from quantkit.sources.models import fingerprint_folder
from quantkit.validate import validate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fp8(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("validate-inputs") / "out"
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, "  - {method: fp8}\n"))
    [art] = quantkit.quantize(recipe)
    return art.path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("QUANTKIT_CACHE", str(root))
    return root


def held_out_records() -> list[str]:
    from quantkit.sources.calibration import builtin_texts

    return builtin_texts("prose", "holdout") + builtin_texts("code", "holdout")


def write_jsonl(path: Path, n_bytes: int) -> Path:
    records = [json.dumps({"text": t}) + "\n" for t in held_out_records()]
    with open(path, "w") as f:
        written = i = 0
        while written < n_bytes:
            f.write(records[i % len(records)])
            written += len(records[i % len(records)])
            i += 1
    return path


def pulled_copy(art: Path, where: Path) -> Path:
    """The artifact as a pull brings it to another machine: no local side file naming its base folder."""
    copy = where / art.name
    shutil.copytree(art, copy)
    (copy / "quantkit.local.json").unlink(missing_ok=True)
    return copy


def changed_base(tiny_model: Path, where: Path) -> Path:
    from safetensors.torch import load_file, save_file

    other = where / "other-base"
    shutil.copytree(tiny_model, other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] * 1.01
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    return other


# --- domain files: read and tokenized only as far as --max-tokens scores ---

def test_validate_memory_is_bounded_by_max_tokens_not_by_the_domain_file(fp8, tmp_path, cache):
    """A 30 MB domain file scored for 256 tokens: the validating process stays near its own size (0.55 GB
    measured); reading and tokenizing the whole file took 5-6 GB (0.77 GB for 1 MB, 10 GB for 50 MB)."""
    domain = write_jsonl(tmp_path / "big.jsonl", 30_000_000)
    art = tmp_path / "art"
    shutil.copytree(fp8, art)
    # through a small intermediate interpreter: Linux carries a parent's peak into its child's ru_maxrss
    # across fork and exec, and pytest's own peak could be larger than what is measured
    via = ("import resource, subprocess, sys\n"
           "r = subprocess.run([sys.executable, '-m', 'quantkit.cli.main', *sys.argv[1:]], stdout=subprocess.DEVNULL)\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
           "sys.exit(r.returncode)\n")
    r = subprocess.run([sys.executable, "-c", via, "validate", str(art), "--no-serve", "--device", "cpu",
                        "--domain", f"big={domain}", "--max-tokens", "256"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-3000:]
    peak = int(r.stdout.split()[-1])
    assert peak < 1_500_000_000, f"validate peaked at {peak / 1e9:.2f} GB for 256 scored tokens"
    [target] = json.loads((art / "validation.json").read_text())["targets"]
    [scores] = target["domains"]
    assert scores["domain"] == "big" and scores["n_tokens"] == 256 == scores["scored_tokens"]["scored"]


@pytest.mark.unit
def test_only_the_scored_prefix_is_read_and_it_tokenizes_as_the_whole_text(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", 3_000_000)
    tokenized_chars = []

    def count(text: str) -> int:
        tokenized_chars.append(len(text))
        return len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])

    whole = domain_text(path)
    whole_ids = tiny_tokenizer(whole[:200_000], add_special_tokens=False)["input_ids"]
    for n in (1, 300, 4000):
        tokenized_chars.clear()
        prefix = DomainText.from_file(path).prefix(count, n)
        assert whole.startswith(prefix) and len(prefix) < 100_000
        assert sum(tokenized_chars) < 200_000  # of 3 MB
        assert tiny_tokenizer(prefix, add_special_tokens=False)["input_ids"][:n] == whole_ids[:n]
    short = tmp_path / "short.txt"
    short.write_text("a few words\r\nonly")
    assert DomainText.from_file(short).prefix(count, 10_000) == domain_text(short) == "a few words\nonly"


@pytest.mark.unit
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".txt", ".parquet"])
def test_streamed_domain_files_are_the_text_as_written(tmp_path, suffix):
    texts = ["  indented\n\n\n", "", "b" * 40_000, "é\u2028 unicode", "last"]
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t}) + "\n\n" for t in texts))
    elif suffix == ".json":
        path.write_text(json.dumps([{"text": t, "n": 1.5} for t in texts], indent=1))
    elif suffix == ".txt":
        path.write_text("\n\n".join(texts))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts}), path, row_group_size=2)
    expected = "\n\n".join(t for t in texts if t or suffix != ".parquet")  # parquet drops empty rows, as calibration
    assert domain_text(path) == expected


@pytest.mark.unit
def test_unreadable_domain_files_are_one_line_errors(tmp_path):
    from quantkit.sources.heldout import load_domains

    cases = {"bad.jsonl": b'{"text": "ok"}\n{"text": \n', "bad.json": b'[{"text": "a"}, {"text": }]',
             "notlist.json": b'{"text": "a"}', "latin1.txt": "caf\xe9".encode("latin-1"), "x.csv": b"text\na\n",
             "nofield.jsonl": b'{"body": "a"}\n'}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(QuantkitError) as e:
            domain_text(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value), str(e.value)
    with pytest.raises(QuantkitError, match="no field 'text'"):  # the first record is checked before any model loads
        load_domains([f"x={tmp_path / 'nofield.jsonl'}"])


# --- --base: naming the base of a pulled artifact ---

def test_a_pulled_artifact_is_validated_against_the_base_named_with_base(fp8, tiny_model, tmp_path, cache):
    pulled = pulled_copy(fp8, tmp_path)
    r = run_cli("validate", "--no-serve", str(pulled), "--max-tokens", "64", "--context", "64")
    assert r.returncode == 2 and "was a local source on another machine" in r.stderr and "--base" in r.stderr
    r = run_cli("validate", "--no-serve", str(pulled), "--max-tokens", "64", "--context", "64", "--base", str(tiny_model))
    assert r.returncode in (0, 1), r.stderr[-2000:]
    base = json.loads((pulled / "validation.json").read_text())["base"]
    recorded = quantkit.Artifact.load(fp8).manifest.base_model.fingerprint
    assert base == {"path": str(tiny_model.resolve()), "given": str(tiny_model), "fingerprint": recorded,
                    "recorded_fingerprint": recorded, "fingerprint_matches": True}


def test_a_base_with_another_fingerprint_is_refused_in_one_line(fp8, tiny_model, tmp_path, cache):
    pulled = pulled_copy(fp8, tmp_path)
    other = changed_base(tiny_model, tmp_path)
    recorded = quantkit.Artifact.load(fp8).manifest.base_model.fingerprint
    found = fingerprint_folder(other)[0]
    r = run_cli("validate", "--no-serve", str(pulled), "--max-tokens", "64", "--context", "64", "--base", str(other))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    assert recorded[:12] in line and found[:12] in line and "--allow-base-mismatch" in line
    assert not (pulled / "validation.json").exists()


def test_allowing_a_base_mismatch_is_recorded_and_caches_under_the_base_used(fp8, tiny_model, tmp_path, cache):
    pulled = pulled_copy(fp8, tmp_path)
    other = changed_base(tiny_model, tmp_path)
    recorded = quantkit.Artifact.load(fp8).manifest.base_model.fingerprint
    found = fingerprint_folder(other)[0]
    report = validate(pulled, base=other, allow_base_mismatch=True, max_tokens=64, context=64, device="cpu")
    data = json.loads((pulled / "validation.json").read_text())["base"]
    assert data == {"path": str(other.resolve()), "given": str(other), "fingerprint": found,
                    "recorded_fingerprint": recorded, "fingerprint_matches": False}
    assert report.base is not None and not report.base.matches
    assert "(--allow-base-mismatch)" in (pulled / "validation.md").read_text()
    # the stored base reference is keyed by the base that computed it, never by the recorded one
    keys = {e.key["base_fingerprint"] for e in CacheStore(REFERENCES, root=cache).entries()}
    assert keys == {found}


# --- writes: a read-only artifact, a full cache disk ---

def test_a_read_only_artifact_is_refused_before_the_evaluation(fp8, tmp_path, cache, monkeypatch):
    import quantkit.validate as validate_module
    from quantkit.progress import NullReporter

    art = tmp_path / "art"
    shutil.copytree(fp8, art)
    real = Path.write_bytes

    def read_only(self, data):
        if self.parent == art:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    steps = []

    class Steps(NullReporter):
        def task(self, name, *a, **kw):
            steps.append(name)
            return super().task(name, *a, **kw)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(ArtifactError) as e:
        validate(art, max_tokens=64, context=64, device="cpu", reporter=Steps())
    message = str(e.value)
    assert "\n" not in message and str(art) in message and "Read-only file system" in message and "--no-write" in message
    assert steps == []  # refused before any model was loaded
    report = validate(art, max_tokens=64, context=64, device="cpu", write=False)  # --no-write
    assert report.targets[0].scores and not (art / "validation.json").exists()
    # a disk that fills up during the evaluation: one line when the reports are written
    monkeypatch.setattr(Path, "write_bytes", real)
    monkeypatch.setattr(validate_module, "atomic_write_text",
                        lambda path, text: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(ArtifactError, match=r"cannot write validation reports into .*no space left on its disk"):
        validate(art, max_tokens=64, context=64, device="cpu")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a chmod a-w folder")
def test_cli_read_only_artifact_folder_one_line(fp8, tmp_path, cache):
    art = tmp_path / "art"
    shutil.copytree(fp8, art)
    art.chmod(0o555)
    try:
        r = run_cli("validate", "--no-serve", str(art), "--max-tokens", "64", "--context", "64")
        assert r.returncode == 2 and "Traceback" not in r.stderr and "--no-write" in r.stderr
        r = run_cli("validate", "--no-serve", "--no-write", str(art), "--max-tokens", "64", "--context", "64")
        assert r.returncode in (0, 1), r.stderr[-2000:]
    finally:
        art.chmod(0o755)


def test_cli_no_write_leaves_the_artifact_as_it_was(fp8, tmp_path, cache):
    art = tmp_path / "art"
    shutil.copytree(fp8, art)
    before = sorted(p.name for p in art.iterdir())
    r = run_cli("validate", "--no-serve", "--no-write", str(art), "--max-tokens", "64", "--context", "64")
    assert r.returncode in (0, 1), r.stderr[-2000:]
    assert sorted(p.name for p in art.iterdir()) == before and "tiny-fp8-fp8-dynamic" in r.stdout


def test_a_full_cache_disk_is_one_line(tmp_path, fp8, cache, monkeypatch):
    store = CacheStore("references", root=tmp_path / "c")

    def fills_the_disk(folder):
        with open(folder / "logprobs.u16", "wb") as f:
            f.write(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(QuantkitError) as e:
        with store.entry({"k": 1}, fills_the_disk):
            pass
    assert "\n" not in str(e.value) and "no space left" in str(e.value) and str(store.root) in str(e.value)
    assert not [p for p in store.root.iterdir() if p.name != ".locks"]  # the half-built entry is gone
    # a build's own error about some other file is not reported as the cache's
    with pytest.raises(OSError):
        with store.entry({"k": 2}, lambda folder: open(tmp_path / "missing" / "f")):
            pass
    # a read-only cache folder
    real_mkdir = Path.mkdir

    def read_only(self, *a, **kw):
        if str(self).startswith(str(cache)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(QuantkitError, match=r"cannot write to quantkit's cache at .*Read-only file system"):
        validate(fp8, max_tokens=64, context=64, device="cpu", write=False)


@pytest.mark.parametrize("max_tokens", [64, 1000])
def test_llamacpp_is_given_only_the_chunks_it_scores(tiny_model, tiny_tokenizer, tmp_path, cache, monkeypatch, max_tokens):
    """llama-perplexity tokenizes the whole file it is handed: it gets the scored chunks (at least the two
    contexts it insists on), not the domain file. The tool is a stand-in here; the text handed over is real."""
    from types import SimpleNamespace

    from quantkit.artifact import Target
    from quantkit.progress import NullReporter
    from quantkit.runtimes import BaseFolder, EvaluationSettings
    from quantkit.runtimes import llamacpp as runtime

    handed = []

    class Tool:
        version = "stand-in"

        def perplexity(self, gguf, text_file, ctx, chunks, save_logits):
            handed.append(text_file.read_text())
            save_logits.write_bytes(b"logits")
            return {"chunks": chunks}

        def kl_divergence(self, gguf, logits, ctx, chunks):
            return {"ppl_base": 2.0, "ppl": 2.0, "mean_kld": 0.0, "median_kld": 0.0, "p99_kld": 0.0, "same_top_p": 100.0}

    monkeypatch.setattr(runtime, "require_toolchain", lambda: Tool())
    monkeypatch.setattr(runtime, "converted_base", lambda tc, model, base_type, reporter: tmp_path / "f32.gguf")
    monkeypatch.setattr(runtime, "check_tokenizer_fidelity", lambda *a, **kw: None)
    base = SimpleNamespace(source=str(tiny_model), kind="local", fingerprint="f" * 64, weight_bytes=1)
    art = SimpleNamespace(manifest=SimpleNamespace(base_model=base, recipe={}),
                          targets=lambda: [Target("g/Q8_0", tmp_path / "g-Q8_0.gguf", "gguf", "gguf", "Q8_0", 1)])
    domain = write_jsonl(tmp_path / "d.jsonl", 5_000_000)
    context = 128
    [scored] = runtime.LlamaCppRuntime().evaluate(art, BaseFolder(tiny_model, "f" * 64), {"d": DomainText.from_file(domain)},
                                                  EvaluationSettings(context, context, max_tokens), NullReporter())
    [text] = handed
    chunks = max(1, max_tokens // (context // 2))
    n = len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert max(chunks, 2) * context < n < max(chunks, 2) * context + 10_000  # of the file's ~1.5 million
    assert domain_text(domain).startswith(text) and scored.scores[0].n_tokens == chunks * (context - 1 - context // 2)
