"""What a new user hit (issue "What a new user hit", items 4, 8, 9, 10): a pulled artifact stays verifiable
after a local validate, output that is not a terminal is never wrapped, a failed step is never "done", the
imatrix counter advances per chunk, and the smaller ones (recipes list, help(quantkit), llm-compressor's logs
in library use, GGUF ratios in inspect, cache rows, file modes, the local side file of URL roots, plan's help)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, run_cli, tiny_recipe_text

import quantkit
from quantkit.artifact import ATTESTED_VALIDATION_NAME, LOCAL_NAME, MANIFEST_NAME
from quantkit.progress import TqdmBridge
from quantkit.reporters import PlainReporter

pytestmark = pytest.mark.integration

LOOSE = {"kld_mean_max": 100.0, "ppl_increase_max": 100.0, "top1_agreement_min": 0.0}  # a random model's gates


def env_without(*names: str, **extra: str) -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in names}, **extra}


# ------------------------------------------------------------------ one artifact, made through the library API

LIBRARY_RUN = textwrap.dedent("""
    import json, os, sys
    os.umask(0o022)
    import quantkit
    [art] = quantkit.quantize(quantkit.parse_recipe(sys.argv[1]))
    from loguru import logger
    # records as llm-compressor's modules write them, at each level the issue saw on stdout
    as_llmcompressor = logger.patch(lambda record: record.update(name="llmcompressor.fake"))
    as_llmcompressor.info("INFO-LINE")
    as_llmcompressor.log("METRIC", "METRIC-LINE")
    as_llmcompressor.warning("WARNING-LINE")
    print(json.dumps({"artifact": str(art.path)}))
""")


@pytest.fixture(scope="module")
def library_run(tiny_model, tmp_path_factory) -> SimpleNamespace:
    """A tiny RTN artifact quantized by a fresh interpreter through `quantkit.quantize` (no CLI, no
    LLM_COMPRESSOR_* variables), with what it printed."""
    out = tmp_path_factory.mktemp("new-user") / "out"
    recipe = tiny_recipe_text(tiny_model, out, "  - {method: rtn, name: tiny-w8a16, scheme: W8A16}\n")
    env = env_without(*[k for k in os.environ if k.startswith("LLM_COMPRESSOR_")], "COLUMNS")
    r = subprocess.run([sys.executable, "-c", LIBRARY_RUN, recipe], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return SimpleNamespace(stdout=r.stdout, stderr=r.stderr, artifact=out / "tiny-w8a16")


def test_llmcompressor_logs_stay_off_stdout_in_library_use(library_run):
    assert library_run.stdout.splitlines() == [json.dumps({"artifact": str(library_run.artifact)})], library_run.stdout
    assert "WARNING-LINE" in library_run.stderr and "METRIC-LINE" in library_run.stderr  # METRIC is above WARNING
    assert "INFO-LINE" not in library_run.stderr


def test_weights_get_the_umask_default_mode(library_run):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in library_run.artifact.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == 0o644, modes  # safetensors writes 0600 through a temporary file
    assert set(modes.values()) == {0o644}, modes


def test_a_url_root_does_not_receive_the_local_side_file(library_run, tmp_path):
    from quantkit.output_roots import publish

    local = Path(shutil.copytree(library_run.artifact, tmp_path / "built" / "tiny-w8a16"))
    assert json.loads((local / LOCAL_NAME).read_text())["base_model_path"].startswith("/")  # this machine's folder
    publish(local, f"file://{tmp_path}/root/tiny-w8a16")
    published = tmp_path / "root" / "tiny-w8a16"
    assert (published / MANIFEST_NAME).is_file() and not (published / LOCAL_NAME).exists()
    assert quantkit.Artifact.load(published).name == "tiny-w8a16"


# ------------------------------------------------------------------ (4) pull, validate, verify


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "ec.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    (folder / "ec.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    return folder / "ec.key", folder / "ec.pub"


def test_validate_keeps_a_pulled_artifact_verifiable(library_run, keys, tiny_model, tmp_path):
    from test_pull_hostile import FakeRegistry

    from quantkit.publish.verbs import PushSettings
    from quantkit.validate import validate

    art = Path(shutil.copytree(library_run.artifact, tmp_path / "art" / "tiny-w8a16"))
    validate(art, max_tokens=64, context=32, gate_overrides=LOOSE)
    pulled = tmp_path / "pulled"
    with FakeRegistry() as registry:
        quantkit.push(art, registry.ref, settings=PushSettings(license="mit", sign_key=keys[0]))
        assert run_cli("pull", registry.ref, str(pulled)).returncode == 0
        attested = (pulled / "validation.json").read_bytes()

        r = run_cli("validate", str(pulled), "--base", str(tiny_model), "--max-tokens", "64", "--context", "32",
                    "--no-serve", *[f"--gate={k}={v}" for k, v in LOOSE.items()])
        assert r.returncode == 0, r.stderr
        assert (pulled / ATTESTED_VALIDATION_NAME).read_bytes() == attested  # moved aside, not rewritten
        assert (pulled / "validation.json").read_bytes() != attested  # this run's report, which push reads
        assert f"kept as {ATTESTED_VALIDATION_NAME}" in r.stderr + r.stdout

        r = run_cli("verify", str(pulled), "--key", str(keys[1]))
        assert r.returncode == 0, r.stderr
        assert f"validation report checked: {ATTESTED_VALIDATION_NAME}" in r.stdout, r.stdout
        assert re.search(r"not attested, written here after the pull \(quantkit validate\): .*validation\.json", r.stdout)
        again = run_cli("validate", str(pulled), "--base", str(tiny_model), "--max-tokens", "64", "--context", "32",
                        "--no-serve", *[f"--gate={k}={v}" for k, v in LOOSE.items()])
        assert again.returncode == 0 and (pulled / ATTESTED_VALIDATION_NAME).read_bytes() == attested
        assert run_cli("verify", str(pulled), "--key", str(keys[1])).returncode == 0
        remote = quantkit.verify(registry.ref, key=keys[1])  # what a registry serves: no local report there
        assert remote.validation_report == "validation.json" and remote.local_reports == []

    kept = json.loads(attested)
    kept["passed"] = not kept["passed"]
    (pulled / ATTESTED_VALIDATION_NAME).write_text(json.dumps(kept))
    r = run_cli("verify", str(pulled), "--key", str(keys[1]))
    assert r.returncode == 1 and f"modified: validation.json (kept as {ATTESTED_VALIDATION_NAME}" in r.stderr, r.stderr
    (pulled / ATTESTED_VALIDATION_NAME).write_bytes(attested)
    (pulled / "notes.txt").write_text("mine")  # anything else is still refused
    r = run_cli("verify", str(pulled), "--key", str(keys[1]))
    assert r.returncode == 1 and "not in the attestation: notes.txt" in r.stderr, r.stderr


# ------------------------------------------------------------------ (8) output that is not a terminal


def test_a_pipe_gets_whole_lines_of_the_dry_run_card(library_run):
    r = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "push", str(library_run.artifact), "--repo", "me/x",
                        "--license", "mit", "--dry-run", "--allow-unvalidated"],
                       capture_output=True, text=True, env=env_without("COLUMNS"), timeout=300)
    assert r.returncode == 0, r.stderr
    card = r.stdout.split("README.md (model card)", 1)[1]
    fingerprint = json.loads((library_run.artifact / MANIFEST_NAME).read_text())["base_model"]["fingerprint"]
    [line] = [x for x in card.splitlines() if fingerprint in x]
    assert line.startswith("- Base model: ") and line.rstrip().endswith(f"`{fingerprint}`"), line
    rows = [x for x in card.splitlines() if x.startswith("| `")]
    assert rows and all(x.rstrip().endswith("|") for x in rows), rows
    assert [x for x in card.splitlines() if "NOT VALIDATED" in x][0].rstrip().endswith("**")  # one line, not cut at 80


# ------------------------------------------------------------------ (9) progress


def plain() -> tuple[PlainReporter, io.StringIO]:
    stream = io.StringIO()
    return PlainReporter(stream, heartbeat=0), stream


@pytest.mark.unit
def test_a_step_that_raised_or_was_interrupted_is_not_done():
    reporter, stream = plain()
    with reporter.task("fine"):
        pass
    with pytest.raises(RuntimeError), reporter.task("broken"):
        raise RuntimeError("x")
    with pytest.raises(KeyboardInterrupt), reporter.task("stopped"):
        raise KeyboardInterrupt
    ends = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines() if not line.split(" ", 2)[1] == "start"]
    assert [e.split(" (")[0].split() for e in ends] == [["done", "fine"], ["FAILED", "broken"], ["interrupted", "stopped"]]


@pytest.mark.unit
def test_calibration_that_raised_does_not_end_its_layers_step_done():
    from quantkit.engines.llmcompressor import progress_from_tqdm

    for error, word in ((RuntimeError("awq failed"), "FAILED"), (KeyboardInterrupt(), "interrupted")):
        reporter, stream = plain()
        with pytest.raises(type(error)), progress_from_tqdm(reporter):
            bridge_tqdm = sys.modules["llmcompressor.pipelines.sequential.pipeline"].tqdm
            list(bridge_tqdm(range(3), desc="(1/4): Calibrating"))
            raise error
        last = stream.getvalue().splitlines()[-1]
        assert re.match(rf"\d\d:\d\d:\d\d {word} calibrating layers", last), stream.getvalue()

    reporter, stream = plain()
    bridge = TqdmBridge(reporter)
    list(bridge.tqdm(range(2), desc="(1/1): Calibrating"))
    bridge.close()
    assert " done  calibrating layers" in stream.getvalue()


FAKE_IMATRIX = textwrap.dedent("""
    import pathlib, sys, time
    # what the pinned llama-imatrix (tools/imatrix/imatrix.cpp, compute_imatrix) prints: its log lines, then
    # "[N]PPL," for each chunk, flushed, only while it computes perplexity (--no-ppl turns that off)
    args = sys.argv[1:]
    go = pathlib.Path(args[args.index("-o") + 1]).parent
    n = int(args[args.index("--chunks") + 1])
    sys.stderr.write(f"compute_imatrix: tokenizing the input ..\\ncompute_imatrix: computing over {n} chunks, n_ctx=64, "
                     "batch_size=64, n_seq=1\\n")
    sys.stderr.flush()
    for i in range(1, n + 1):
        if "--no-ppl" not in args:
            sys.stdout.write(f"[{i}]{10 + i}.1234,")
            sys.stdout.flush()
        deadline = time.monotonic() + 60
        while not (go / f"go-{i}").exists() and time.monotonic() < deadline:  # the test lets the next chunk start
            time.sleep(0.01)
    sys.stdout.write("\\nFinal estimate: PPL = 12.1234 +/- 0.50000\\n")
    pathlib.Path(args[args.index("-o") + 1]).write_bytes(b"imatrix")
""")


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_the_imatrix_counter_advances_with_each_chunk(tmp_path):
    from quantkit.engines.gguf import compute_imatrix

    tool = tmp_path / "llama-imatrix"
    tool.write_text(f"#!{sys.executable}\n{FAKE_IMATRIX}")
    tool.chmod(0o755)
    seen: list[float] = []
    advanced = threading.Condition()

    class Task:
        def advance(self, n=1):
            pass

        def update(self, *, completed=None, total=None, description=None):
            with advanced:
                seen.append(completed)
                advanced.notify_all()

    class Reporter:
        def task(self, *args, **kwargs):
            import contextlib

            return contextlib.nullcontext(Task())

    chunks = 3
    cal = SimpleNamespace(input_ids=[[1, 2]] * chunks, spec=SimpleNamespace(seq_len=64), fingerprint="f" * 64)
    job = SimpleNamespace(calibration=cal, reporter=Reporter())
    tc = SimpleNamespace(tool=lambda name: tool)
    out: dict = {}
    tok = SimpleNamespace(decode=lambda ids: "text ")
    run = lambda: out.update(compute_imatrix(tc, tmp_path / "base.gguf", job, tmp_path / "imatrix.gguf", tok))
    worker = threading.Thread(target=run)
    worker.start()
    for i in range(1, chunks + 1):
        with advanced:  # chunk i is counted while the tool still waits before chunk i + 1
            assert advanced.wait_for(lambda i=i: i in seen, timeout=30), f"the counter stayed at {seen} before chunk {i + 1}"
        (tmp_path / f"go-{i}").touch()
    worker.join(timeout=30)
    assert seen == [1, 2, 3] and out["chunks"] == chunks


# ------------------------------------------------------------------ (10) the smaller ones


def test_recipes_list_of_a_missing_folder_is_one_line_and_exit_2(tmp_path):
    for args in (["recipes", "list", str(tmp_path / "nope")], ["recipes", "list", "--folder", str(tmp_path / "nope")]):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.strip().count("\n") == 0, (r.stdout, r.stderr)
        assert "folder not found" in r.stderr and str(tmp_path / "nope") in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("recipes", "list", str(tmp_path / "empty"))
    assert r.returncode == 2 and "holds no recipe" in r.stderr


def test_recipes_list_without_a_folder_lists_the_shipped_ones(tmp_path):
    r = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "recipes", "list", "--json"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)  # not a checkout: no recipes/ here
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert Path(row["recipe"]).name == "smollm2-135m.yaml" and row["valid"] and "smollm2-135m-gguf" in row["outputs"]


def test_the_wheel_ships_the_recipes(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("quantkit", "calibration", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import zipfile

    [wheel] = (tmp_path / "dist").glob("quantkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"quantkit_recipes/{p.name}" for p in (REPO / "recipes").glob("*.yaml")} <= set(names), names


@pytest.mark.unit
def test_help_quantkit_lists_the_public_api():
    import pydoc

    names = [n for n in quantkit.__all__ if n != "__version__"]
    missing = [n for n in names if not re.search(rf"^ {{4}}{n}\b", quantkit.__doc__, re.M)]
    assert not missing, f"not in the module docstring's API list: {missing}"
    shown = pydoc.render_doc(quantkit, renderer=pydoc.plaintext)
    assert all(re.search(rf"\b{n}\b", shown) for n in names)


def test_inspect_gives_each_gguf_file_its_own_ratio(tmp_path):
    from quantkit.artifact import utc_now, write_manifest

    art = tmp_path / "g"
    art.mkdir()
    sizes = {"F16": 2_000, "Q8_0": 1_000, "Q4_K_M": 500}
    for q, n in sizes.items():
        (art / f"g-{q}.gguf").write_bytes(b"\0" * n)
    (art / "imatrix.gguf").write_bytes(b"\0" * 100)
    total = sum(sizes.values()) + 100
    write_manifest(art, {
        "name": "g", "created": utc_now(), "format": "gguf", "scheme": ",".join(sizes),
        "output": {"name": "g", "method": "gguf", "types": list(sizes)},
        "base_model": {"source": "m", "kind": "local", "path": "", "fingerprint": "a" * 64, "weight_bytes": 4_000},
        "engine": {"types": {q: {"file": f"g-{q}.gguf", "bytes": n} for q, n in sizes.items()}},
        "compression_ratio": round(4_000 / total, 3),  # what quantize records for the folder: 1.107, all files together
    })
    r = run_cli("inspect", str(art))
    assert r.returncode == 0, r.stderr
    assert f"{4_000 / total:.3f}x" not in r.stdout and "1.107x" not in r.stdout, r.stdout
    for q, ratio in (("F16", "2.00x"), ("Q8_0", "4.00x"), ("Q4_K_M", "8.00x")):
        assert re.search(rf"^\s+{q}: g-{q}\.gguf, .*, {re.escape(ratio)} smaller$", r.stdout, re.M), r.stdout


def test_cache_rows_of_two_domains_differ(tmp_path, monkeypatch):
    from quantkit.cache_store import REFERENCES, CacheStore

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    store = CacheStore(REFERENCES)
    for text in ("1" * 64, "2" * 64):  # two domains' token fingerprints, everything else alike
        key = {"kind": "transformers-base-reference", "base_fingerprint": "b" * 64, "tokens_sha256": text,
               "n_tokens": 100, "context": 64, "stride": 32, "dtype": "float32"}
        with store.entry(key, lambda folder: (folder / "x").write_bytes(b"x")):
            pass
    r = run_cli("cache", "list")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "references" in line]
    assert len(rows) == 2 and "text 111111111111" in rows[0] + rows[1] and "text 222222222222" in rows[0] + rows[1], r.stdout


def test_plan_help_names_a_recipe_that_exists():
    r = run_cli("plan", "--help")
    assert r.returncode == 0
    named = re.findall(r"quantkit plan (\S+\.ya?ml)", r.stdout)
    assert named and all((REPO / n).is_file() for n in named), named


def test_one_artifact_gets_its_html_report_with_legends_beside_the_plots(library_run, tmp_path, monkeypatch):
    art = Path(shutil.copytree(library_run.artifact, tmp_path / library_run.artifact.name))
    r = run_cli("validate", "--no-serve", str(art), "--max-tokens", "64", "--context", "32",
                "--gate", "kld_mean_max=100", "--gate", "ppl_increase_max=100", "--gate", "top1_agreement_min=0")
    assert r.returncode == 0, r.stderr
    assert (art / "validation.html").read_text().count("data:image/png;base64,") >= 2 and "run report:" in r.stderr

    from quantkit.report import html as report_html
    from quantkit.validate import validate

    report = validate(art, max_tokens=64, context=32, gate_overrides=LOOSE)
    figures = []
    monkeypatch.setattr(report_html, "_png", lambda fig: figures.append(fig) or "")
    report_html.domain_ppl_plot([report])
    report_html.kld_by_position_plot([report])
    assert figures
    for fig in figures:
        fig.canvas.draw()
        ax = fig.axes[0]
        legend, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= plot.x1, (legend, plot)  # beside the axes, over none of the bars or lines
