"""Matrix recipes and executors: a recipe of models × calibration sets expands into jobs, `quantkit plan`
prints them with their estimates, and the local and Ray executors run them, each artifact once, with
retries after a killed worker and no work for a re-submitted finished job."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli

from quantkit.errors import RecipeError
from quantkit.jobs import plan as jobs
from quantkit.matrix import shape_from_config
from quantkit.recipe_loader import parse_recipe

pytestmark = pytest.mark.integration

OUTPUTS = "outputs:\n  - {method: fp8, name: f8}\n  - {method: rtn, name: r4, scheme: W4A16, group_size: 32}\n"


def counts(rows: list[dict]) -> dict[str, int]:
    """The made / kept / failed tally of `quantize --json` rows (one row per job)."""
    return {k: sum(row["status"] == k for row in rows) for k in ("made", "kept", "failed")}


def matrix_text(models: list[Path], out: Path) -> str:
    return (f"name: mx\nmodels: [{', '.join(str(m) for m in models)}]\noutput_dir: {out}\n"
            "calibration: {num_samples: 4, seq_len: 16}\n" + OUTPUTS)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_tokenizer):
    from quantkit.testing import build_tiny_llama

    root = tmp_path_factory.mktemp("matrix-models")
    return [build_tiny_llama(root / name, tokenizer=tiny_tokenizer, seed=seed) for name, seed in (("m1", 0), ("m2", 1))]


@pytest.mark.unit
def test_a_matrix_expands_into_labelled_cells_and_jobs():
    r = parse_recipe("name: mx\nmodels: [./a, {source: org/b, name: bee}]\n"
                     "calibrations: [{source: 'builtin:mixed', num_samples: 8}, {source: data/code.jsonl}]\n"
                     "outputs:\n  - {method: fp8}\n  - {method: gptq, name: fixed}\n")
    cells = r.cells()
    # fp8 (FP8_DYNAMIC) needs no calibration data: one cell per model for it, in the model's folder
    assert [c.folder for c in cells] == ["a", "a/mixed", "a/code", "bee", "bee/mixed", "bee/code"]
    assert [c.recipe.calibration.num_samples for c in cells] == [8, 8, 64, 8, 8, 64]
    assert cells[3].recipe.model.source == "org/b"
    # default output names carry the cell's labels (unique artifact names); explicit names are kept
    assert [o.name for o in cells[3].recipe.outputs] == ["mx-bee-fp8-fp8-dynamic"]
    assert [o.name for o in cells[5].recipe.outputs] == ["fixed"]
    all_jobs = jobs(r, "/o")
    assert len(all_jobs) == 6 and len({j.dest for j in all_jobs}) == 6
    assert all_jobs[0].dest == Path("/o/a/mx-a-fp8-fp8-dynamic") and all_jobs[1].dest == Path("/o/a/mixed/fixed")
    assert [j.id for j in jobs(r, "/o", only=["fixed"])] == ["a/mixed/fixed", "a/code/fixed", "bee/mixed/fixed", "bee/code/fixed"]
    plain = parse_recipe("name: p\nmodel: x\noutputs: [{method: fp8}]\n")
    assert not plain.is_matrix and [j.dest for j in jobs(plain, "/o")] == [Path("/o/p-fp8-fp8-dynamic")]


@pytest.mark.unit
@pytest.mark.parametrize("text, message", [
    ("name: x\nmodel: a\nmodels: [b]\noutputs: [{method: fp8}]\n", "give either `model` (one model) or `models`"),
    ("name: x\noutputs: [{method: fp8}]\n", "model: Field required (the model to quantize; or several under `models`"),
    ("name: x\nmodels: [./a, /other/a]\noutputs: [{method: fp8}]\n", "models[1] and models[0] are both labelled 'a'"),
    ("name: x\nmodels: [a]\ncalibration: {num_samples: 4}\ncalibrations: [{source: 'builtin:code'}]\noutputs: [{method: fp8}]\n",
     "not both"),
])
def test_bad_matrices_are_refused_with_the_field(text, message):
    with pytest.raises(RecipeError) as e:
        parse_recipe(text)
    assert message in str(e.value)


# Published parameter counts (model cards) against the config arithmetic of quantkit.matrix
LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False}
LLAMA3_70B = {**LLAMA3_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64}
LLAMA31_405B = {**LLAMA3_8B, "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126,
                "num_attention_heads": 128}


@pytest.mark.unit
@pytest.mark.parametrize("config, params", [(LLAMA3_8B, 8_030_261_248), (LLAMA3_70B, 70_553_706_496),
                                            (LLAMA31_405B, 405_853_388_800)])
def test_parameter_count_from_config_matches_the_published_one(config, params):
    assert shape_from_config(config).params == params


@pytest.mark.unit
def test_parameter_count_matches_the_tiny_models_weights(two_models):
    from safetensors import safe_open

    with safe_open(str(two_models[0] / "model.safetensors"), "np") as f:
        actual = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    config = json.loads((two_models[0] / "config.json").read_text())
    assert shape_from_config(config).params == actual


def test_plan_prints_every_job_with_estimates(two_models, tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp_path / "out"))
    r = run_cli("plan", str(recipe), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["job"] for row in rows] == ["m1/f8", "m1/r4", "m2/f8", "m2/r4"]
    assert all(row["host_bytes"] > row["disk_bytes"] > 0 and row["device"] == "gpu preferred" for row in rows)
    r = run_cli("plan", str(recipe))
    assert r.returncode == 0 and "4 job(s) in 2 cell(s)" in r.stdout, r.stdout


def artifact_digests(out: Path) -> dict[str, dict]:
    found = {}
    for manifest in sorted(out.rglob("quantkit.json")):
        files = json.loads(manifest.read_text())["files"]
        found[str(manifest.parent.relative_to(out))] = {p: f["sha256"] for p, f in files.items() if p.endswith(".safetensors")}
    return found


@pytest.fixture(scope="module")
def local_run(two_models, tmp_path_factory):
    """The 2 models × 2 outputs matrix with two local worker processes: the reference artifacts."""
    tmp = tmp_path_factory.mktemp("local")
    recipe = tmp / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp / "out"))
    r = run_cli("quantize", str(recipe), "--jobs", "2", "--json", "--progress", "plain")
    return recipe, tmp / "out", r


def test_local_workers_make_every_artifact_once_and_a_resubmission_makes_none(local_run):
    recipe, out, r = local_run
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert counts(summary) == {"made": 4, "kept": 0, "failed": 0}
    assert sorted(artifact_digests(out)) == ["m1/f8", "m1/r4", "m2/f8", "m2/r4"]
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]
    assert "m1/f8: running" in r.stderr and "m2/r4: made" in r.stderr  # the log shows each job's way
    before = {p: p.stat().st_mtime_ns for p in out.rglob("quantkit.json")}
    again = run_cli("quantize", str(recipe), "--jobs", "2", "--json")
    assert again.returncode == 0 and counts(json.loads(again.stdout)) == {"made": 0, "kept": 4, "failed": 0}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("quantkit.json")} == before
    r = run_cli("status", str(recipe), "--json")
    assert r.returncode == 0, r.stderr
    assert {row["output"]: row["state"] for row in json.loads(r.stdout)} == {
        "m1/f8": "up to date", "m1/r4": "up to date", "m2/f8": "up to date", "m2/r4": "up to date"}


def test_a_matrix_in_this_process_writes_the_same_artifacts(local_run, two_models, tmp_path):
    _, reference, _ = local_run
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp_path / "out"))
    r = run_cli("quantize", str(recipe), "--only", "f8")
    assert r.returncode == 0, r.stderr
    digests = artifact_digests(tmp_path / "out")
    assert digests == {k: v for k, v in artifact_digests(reference).items() if k.endswith("f8")}


def test_a_job_that_fails_is_reported_and_the_others_finish(two_models, tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp_path / "out"))
    (tmp_path / "out" / "m2").mkdir(parents=True)
    (tmp_path / "out" / "m2" / "f8").write_text("not ours")  # quantize refuses to replace it: bad input, no retry
    r = run_cli("quantize", str(recipe), "--jobs", "2", "--retries", "2", "--json")
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert counts(summary) == {"made": 3, "kept": 0, "failed": 1}
    failed = next(j for j in summary if j["status"] == "failed")
    assert failed["job"] == "m2/f8" and failed["attempts"] == 1 and "not a quantkit artifact" in failed["error"]
    assert "1 of 4 job(s) failed" in r.stderr and (tmp_path / "out" / "m2" / "f8").read_text() == "not ours"


def test_unknown_executor_and_missing_cluster_are_clear_errors(two_models, tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp_path / "out"))
    r = run_cli("quantize", str(recipe), "--executor", "slurm")
    assert r.returncode == 2 and "--executor slurm: not an executor; choose one of local, ray" in r.stderr
    port = free_port()
    r = run_cli("quantize", str(recipe), "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", timeout=300)
    assert r.returncode == 2 and f"--ray-address 127.0.0.1:{port}: cannot connect to a Ray cluster" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """A real two-node Ray cluster on this machine: a head and a second node process, with its own
    temp folder and auth token (nothing under ~/.ray or /tmp/ray)."""
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip("ray is not installed (pip install 'quantkit[ray]')")
    port = free_port()
    temp = Path(f"/tmp/qk-ray-{os.getpid()}-{port}")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray-token"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    (tmp_path / "ray-token").write_text(os.urandom(16).hex())
    common = ["--disable-usage-stats", "--temp-dir", str(temp), "--object-store-memory", "100000000"]
    started = []
    try:
        subprocess.run([str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "2", "--include-dashboard=false", *common], env=env, check=True,
                       capture_output=True, timeout=180)
        started.append("head")
        subprocess.run([str(ray_bin), "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                        "--num-cpus", "1", *common], env=env, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}", env
    finally:
        stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_cluster(temp: Path) -> None:
    """Stop this cluster's processes only (`ray stop` would stop every Ray cluster of the machine)."""
    ours = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(temp) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    ours.append(int(proc.name))
            except OSError:
                continue
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and parent_of(int(p.name)) in ours]
    for pid in ours + children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def parent_of(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def kill_worker_of_first_job(out: Path, killed: list, stop: threading.Event) -> None:
    """Wait for a job's staging folder (`.NAME.partial-PID-…`), then SIGKILL the Ray worker that runs that
    quantize process (its parent): the job dies with its worker, as on a lost node."""
    while not stop.is_set():
        for staging in out.rglob(".*.partial-*"):
            pid = int(staging.name.split(".partial-", 1)[1].split("-")[0])
            worker = parent_of(pid)
            if worker and "ray::" in (Path("/proc") / str(worker) / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(worker, signal.SIGKILL)
                killed.append(str(staging.parent.relative_to(out) / staging.name.split(".partial-")[0].lstrip(".")))
                return
        time.sleep(0.02)


def test_ray_cluster_runs_the_matrix_retries_a_killed_worker_and_skips_finished_jobs(ray_cluster, local_run, two_models,
                                                                                     tmp_path):
    address, env = ray_cluster
    _, reference, _ = local_run
    out = tmp_path / "out"
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, out))
    killed: list[str] = []
    stop = threading.Event()
    killer = threading.Thread(target=kill_worker_of_first_job, args=(out, killed, stop), daemon=True)
    killer.start()
    try:
        r = run_cli("quantize", str(recipe), "--executor", "ray", "--ray-address", address, "--retries", "2",
                    "--json", "--progress", "plain", env=env, timeout=900)
    finally:
        stop.set()
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert counts(summary) == {"made": 4, "kept": 0, "failed": 0}, summary
    assert len(killed) == 1, "the killer never found a running job"
    attempts = {j["job"]: j["attempts"] for j in summary}
    assert attempts[killed[0]] == 2 and sum(attempts.values()) == 5, attempts
    # every artifact once, and the retried one identical to the reference run's
    assert artifact_digests(out) == artifact_digests(reference)
    assert not [p for p in out.rglob("*") if ".partial-" in p.name]

    before = {p: p.stat().st_mtime_ns for p in out.rglob("quantkit.json")}
    again = run_cli("quantize", str(recipe), "--executor", "ray", "--ray-address", address, "--json", env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert counts(json.loads(again.stdout)) == {"made": 0, "kept": 4, "failed": 0}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("quantkit.json")} == before


def test_a_missing_model_of_a_matrix_is_named_before_any_job_starts(two_models, tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text([two_models[0], tmp_path / "nope"], tmp_path / "out"))
    for extra in ([], ["--jobs", "2"]):
        r = run_cli("quantize", str(recipe), *extra)
        assert r.returncode == 2 and f"models[1].source: {tmp_path / 'nope'} does not exist" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_memory_preflight_refuses_what_cannot_fit_with_the_figures_and_what_would():
    from quantkit.matrix import memory_problems

    recipe = parse_recipe("name: big\nmodel: org/llama-70b\ncalibration: {num_samples: 512, seq_len: 2048}\n"
                          "outputs: [{method: gptq}, {method: gguf, types: [Q4_K_M]}]\n")
    [problem] = memory_problems(recipe, recipe.outputs, LLAMA3_70B, available=250 * 10**9)
    assert problem.startswith("output big-gptq-w4a16: needs about 3")  # the GGUF output streams: it fits
    assert "the 70.55B-parameter model in float32: 282.2 GB" in problem and "this machine has 250.0 GB available" in problem
    assert "What would fit: model.offload: disk (about " in problem and "model.dtype: bfloat16 (about 1" in problem
    # with room for part of the calibration set, fewer samples is offered too, and that many do fit
    [problem] = memory_problems(recipe, recipe.outputs[:1], LLAMA3_70B, available=330 * 10**9)
    samples = int(problem.split("calibration.num_samples: ")[1].split(".")[0])
    assert 0 < samples < 512
    fewer = recipe.model_copy(update={"calibration": recipe.calibration.model_copy(update={"num_samples": samples})})
    assert memory_problems(fewer, fewer.outputs[:1], LLAMA3_70B, available=330 * 10**9) == []
    bf16 = parse_recipe("name: big\nmodel: {source: org/llama-70b, dtype: bfloat16}\noutputs: [{method: gptq}]\n")
    assert memory_problems(bf16, bf16.outputs, LLAMA3_70B, available=250 * 10**9) == []


def test_quantize_refuses_before_loading_and_force_memory_overrides(two_models, tmp_path, monkeypatch):
    import quantkit.matrix
    from quantkit.errors import QuantkitError
    from quantkit.quantize import quantize

    recipe = parse_recipe(f"name: t\nmodel: {two_models[0]}\noutput_dir: {tmp_path / 'out'}\n"
                          "outputs: [{method: rtn, name: r4, scheme: W4A16, group_size: 32}]\n")
    monkeypatch.setattr(quantkit.matrix, "available_host_memory", lambda: 50 * 10**6)
    with pytest.raises(QuantkitError, match=r"output r4: needs about 1\.\d GB of host memory .* has 0\.1 GB available"):
        quantize(recipe)
    assert not (tmp_path / "out").exists()
    [art] = quantize(recipe, force_memory=True)
    assert art.path == tmp_path / "out" / "r4"


def remote_digests(fs, root: str) -> dict[str, dict]:
    """artifact_digests for an output root on an fsspec file system (what a reader of the store sees)."""
    found = {}
    for manifest in sorted(p for p in fs.find(root) if p.endswith("/quantkit.json")):
        files = json.loads(fs.cat_file(manifest))["files"]
        rel = manifest[len(root.rstrip("/")) + 1:].rsplit("/", 1)[0]
        found[rel] = {p: f["sha256"] for p, f in files.items() if p.endswith(".safetensors")}
        for p, f in files.items():  # what the store holds is what the manifest lists
            assert fs.info(f"{manifest.rsplit('/', 1)[0]}/{p}")["size"] == f["bytes"]
    return found


def test_a_url_output_root_gets_every_artifact_manifest_last_and_a_resubmission_keeps_them(local_run, two_models, tmp_path,
                                                                                           monkeypatch):
    import fsspec

    from quantkit.executors import run_jobs
    from quantkit.executors.local import LocalExecutor

    _, reference, _ = local_run
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    uploads: list[str] = []
    put_file = type(fs).put_file
    monkeypatch.setattr(type(fs), "put_file", lambda self, lpath, rpath, **kw: (uploads.append(rpath),
                                                                                put_file(self, lpath, rpath, **kw))[1])
    root = f"memory://qk-{os.getpid()}/out"
    recipe = parse_recipe(matrix_text(two_models, tmp_path / "unused"))
    run = run_jobs(jobs(recipe, root), LocalExecutor(jobs=2))
    assert run.counts() == {"made": 4, "kept": 0, "failed": 0}, run.failed
    assert remote_digests(fs, f"/qk-{os.getpid()}/out") == artifact_digests(reference)
    for artifact in ("m1/f8", "m2/r4"):  # the manifest, the commit mark, is the last file of each artifact sent
        mine = [u for u in uploads if f"/out/{artifact}/" in u]
        assert mine[-1].endswith(f"/out/{artifact}/quantkit.json") and len(mine) > 2
    assert not list((tmp_path / "cache" / "published-builds").iterdir())  # the build folders are gone

    fs.rm_file(f"/qk-{os.getpid()}/out/m2/f8/model.safetensors")  # damaged in the store: redone, the others kept
    from quantkit.resume import status

    rows = {r["output"]: (r["state"], r["reason"]) for r in status(recipe.cells()[1].recipe, f"{root}/m2")}
    assert rows == {"f8": ("to redo", "damaged (missing: model.safetensors)"), "r4": ("up to date", "")}
    again = run_jobs(jobs(recipe, root), LocalExecutor(jobs=2))
    assert {r.id: r.status for r in again.results} == {"m1/f8": "kept", "m1/r4": "kept", "m2/f8": "made", "m2/r4": "kept"}
    assert remote_digests(fs, f"/qk-{os.getpid()}/out") == artifact_digests(reference)


def test_a_file_url_root_from_the_cli_runs_under_the_worker_python_and_leaves_foreign_folders_alone(two_models, tmp_path):
    out = tmp_path / "store"
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp_path / "unused"))
    (out / "m2" / "f8").mkdir(parents=True)
    (out / "m2" / "f8" / "notes.txt").write_text("not ours")
    log = tmp_path / "python.log"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    r = run_cli("quantize", str(recipe), "-o", f"file://{out}", "--only", "f8", "--worker-python", str(wrapper), "--json",
                env={**os.environ, "QUANTKIT_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert {j["job"]: j["status"] for j in summary} == {"m1/f8": "made", "m2/f8": "failed"}
    failed = next(j for j in summary if j["status"] == "failed")
    assert f"file://{out}/m2/f8 exists and is not a quantkit artifact: left alone" in failed["error"] and failed["attempts"] == 1
    assert (out / "m2" / "f8" / "notes.txt").read_text() == "not ours" and len(list((out / "m2" / "f8").iterdir())) == 1
    assert sorted(artifact_digests(out)) == ["m1/f8"]
    assert log.read_text().count("quantkit.cli.main quantize") == 2  # each job ran under the given interpreter

    r = run_cli("quantize", str(recipe), "-o", f"file://{out}", "--worker-python", str(tmp_path / "nope"))
    assert r.returncode == 2 and f"--worker-python {tmp_path / 'nope'}: cannot run it" in r.stderr, r.stderr


@pytest.mark.parametrize("root, executor, message", [
    ("memory://x/out", "ray", "'memory://' lives in this process only; the workers of --executor ray cannot see it"),
    ("nope://x/out", "local", "'nope://' is not a storage protocol quantkit writes artifacts to"),
])
def test_an_output_root_no_worker_could_reach_is_refused_before_any_job(two_models, tmp_path, root, executor, message):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp_path / "unused"))
    r = run_cli("quantize", str(recipe), "-o", root, "--executor", executor)
    assert r.returncode == 2 and f"output_dir {root}: {message}" in r.stderr, r.stderr


def test_ray_caps_jobs_in_flight_and_publishes_to_a_url_root(ray_cluster, local_run, two_models, tmp_path):
    address, env = ray_cluster
    _, reference, _ = local_run
    out = tmp_path / "store"
    recipe = tmp_path / "m.yaml"
    recipe.write_text(matrix_text(two_models, tmp_path / "unused"))
    r = run_cli("quantize", str(recipe), "--executor", "ray", "--ray-address", address, "--jobs", "1", "-o", f"file://{out}",
                "--json", env={**env, "QUANTKIT_CACHE": str(tmp_path / "cache")}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    ran = sorted((j["started_at"], j["ended_at"]) for j in json.loads(r.stdout))
    assert len(ran) == 4 and all(end <= start for (_, end), (start, _) in zip(ran, ran[1:])), ran  # one at a time
    assert artifact_digests(out) == artifact_digests(reference)
