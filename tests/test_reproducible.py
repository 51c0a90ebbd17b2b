"""Reproducible artifacts: the same inputs make the same bytes in this process, in `--jobs N` worker
processes and on Ray tasks. A calibrated output's bytes depend on torch's CPU thread count, so every
executor computes on QUANTKIT_THREADS (default 1), whatever the machine or OMP_NUM_THREADS says, and the
count is one of the output's input fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from test_matrix import ray_cluster  # noqa: F401 - the two-node cluster fixture of the Ray tests

from quantkit.threads import DEFAULT_THREADS, MAX_THREADS, THREADS_ENV, compute_threads, pinned_threads

pytestmark = pytest.mark.integration

# what the machine would say without the pin: two threads (unpinned, GPTQ's bytes then differ from a Ray task's)
MACHINE = {"OMP_NUM_THREADS": "2"}
OUTPUTS = ("  - {method: gptq, name: g4}\n"
           "  - {method: awq, name: a4, n_grid: 4}\n"
           "  - {method: rtn, name: r4}\n")


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory, tiny_tokenizer) -> Path:
    """A random 2-layer Llama of hidden size 256: the smallest tiny model whose GPTQ output changed with the
    thread count here (2 of 49 tensors between 1 and 2 threads; at hidden size 128 none did)."""
    from quantkit.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("wide") / "model", hidden_size=256, intermediate_size=512,
                            tokenizer=tiny_tokenizer)


def recipe_file(folder: Path, model: Path) -> Path:
    path = folder / "r.yaml"
    path.write_text(f"name: tiny\nmodel: {model}\noutput_dir: {folder / 'unused'}\n"
                    "calibration: {source: 'builtin:mixed', num_samples: 8, seq_len: 64}\n" f"outputs:\n{OUTPUTS}")
    return path


def weights(out: Path) -> dict[str, str]:
    """Each artifact's weights digest, as its manifest records it."""
    return {m.parent.name: json.loads(m.read_text())["files"]["model.safetensors"]["sha256"]
            for m in sorted(out.glob("*/quantkit.json"))}


def recorded(out: Path) -> dict[str, tuple]:
    """Each artifact's input fingerprints and the thread count its engine computed on."""
    manifests = {m.parent.name: json.loads(m.read_text()) for m in sorted(out.glob("*/quantkit.json"))}
    return {name: (m["inputs"], m["engine"].get("threads")) for name, m in manifests.items()}


@pytest.fixture(scope="module")
def in_process(wide_model, tmp_path_factory):
    """The recipe quantized in the CLI's own process, on a machine that offers two threads."""
    tmp = tmp_path_factory.mktemp("in-process")
    recipe = recipe_file(tmp, wide_model)
    r = run_cli("quantize", str(recipe), "-o", str(tmp / "out"), env=MACHINE)
    assert r.returncode == 0, r.stderr[-3000:]
    return recipe, tmp / "out"


def test_in_process_local_workers_and_ray_tasks_make_byte_identical_gptq_and_awq(in_process, ray_cluster,  # noqa: F811
                                                                               tmp_path):
    recipe, reference = in_process
    address, ray_env = ray_cluster
    r = run_cli("quantize", str(recipe), "-o", str(tmp_path / "jobs"), "--jobs", "2", "--json", env=MACHINE)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("quantize", str(recipe), "-o", str(tmp_path / "ray"), "--executor", "ray", "--ray-address", address,
                "--json", env=ray_env, timeout=900)  # a Ray task is given OMP_NUM_THREADS=1
    assert r.returncode == 0, r.stderr[-3000:]
    expected = weights(reference)
    assert sorted(expected) == ["a4", "g4", "r4"]
    assert weights(tmp_path / "jobs") == expected
    assert weights(tmp_path / "ray") == expected
    assert recorded(tmp_path / "jobs") == recorded(tmp_path / "ray") == recorded(reference)
    assert {threads for _, threads in recorded(reference).values()} == {compute_threads()}

    # more threads than any node has: refused with the figures, not left pending on the cluster
    r = run_cli("quantize", str(recipe), "-o", str(tmp_path / "ray"), "--executor", "ray", "--ray-address", address,
                "--json", env={**ray_env, THREADS_ENV: "64"}, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    jobs = {j["job"]: j for j in json.loads(r.stdout)}
    assert jobs["r4"]["status"] == "kept"  # data-free: no thread count changes it
    for name in ("g4", "a4"):
        assert jobs[name]["status"] == "failed" and "computes on 64 CPU threads (QUANTKIT_THREADS)" in jobs[name]["error"]
        assert "largest node of the cluster has 2 CPUs; set QUANTKIT_THREADS to 2 or less" in jobs[name]["error"]
    assert weights(tmp_path / "ray") == expected


def test_another_thread_count_redoes_calibrated_outputs_only(in_process):
    recipe, out = in_process
    r = run_cli("status", str(recipe), "-o", str(out), "--json", env={**MACHINE, THREADS_ENV: "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    states = {row["output"]: (row["state"], row["reason"]) for row in json.loads(r.stdout)}
    assert states == {"g4": ("to redo", "inputs changed: threads"), "a4": ("to redo", "inputs changed: threads"),
                      "r4": ("up to date", "")}
    r = run_cli("status", str(recipe), "-o", str(out), "--json", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and {row["state"] for row in json.loads(r.stdout)} == {"up to date"}, r.stderr[-3000:]


@pytest.mark.parametrize("value", ["0", f"{MAX_THREADS + 1}", "two"])
def test_a_bad_thread_count_is_refused_in_one_line_before_any_work(wide_model, tmp_path, value):
    recipe = recipe_file(tmp_path, wide_model)
    for extra in ([], ["--jobs", "2"]):
        r = run_cli("quantize", str(recipe), "-o", str(tmp_path / "out"), *extra, env={THREADS_ENV: value})
        assert r.returncode == 2, r.stderr[-3000:]
        assert f"{THREADS_ENV}={value!r}: must be a whole number from 1 to {MAX_THREADS}" in r.stderr
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "out" / "g4").exists()


@pytest.mark.unit
def test_pinned_threads_give_the_caller_its_count_back(monkeypatch):
    import torch

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert compute_threads() == DEFAULT_THREADS
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pinned_threads(1) as threads:
            assert threads == torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
