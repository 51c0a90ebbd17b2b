"""Resume: a re-run keeps outputs whose inputs are unchanged, redoes exactly what a changed input
invalidates, finishes what a killed run left, and `quantkit status` says which is which."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli, tiny_recipe_text

from quantkit.artifact import Artifact

pytestmark = pytest.mark.integration

OUTPUTS = ("  - {method: rtn, name: t-rtn, scheme: W8A16}\n"  # no calibration
           "  - {method: gptq, name: t-gptq, group_size: 64}\n")  # calibrated


def created(out, name):
    return json.loads((out / name / "quantkit.json").read_text())["created"]


def test_rerun_keeps_current_outputs_and_redoes_what_an_input_change_invalidates(tiny_model, tmp_path):
    out, recipe = tmp_path / "out", tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, out, OUTPUTS))
    assert run_cli("quantize", str(recipe)).returncode == 0
    first = {n: created(out, n) for n in ("t-rtn", "t-gptq")}
    manifest = json.loads((out / "t-gptq" / "quantkit.json").read_text())
    assert set(manifest["inputs"]) == {"model", "calibration", "output", "libraries", "tools", "threads", "all"}

    time.sleep(1.1)
    r = run_cli("quantize", str(recipe))
    assert r.returncode == 0 and r.stderr.count("up to date (inputs unchanged), kept") == 2, r.stderr
    assert {n: created(out, n) for n in first} == first

    r = run_cli("status", str(recipe), "--json")
    assert r.returncode == 0, r.stderr
    assert [row["state"] for row in json.loads(r.stdout)] == ["up to date", "up to date"]

    # a calibration change invalidates only the calibrated output
    r = run_cli("status", str(recipe), "--set", "calibration.num_samples=4", "--json")
    rows = {row["output"]: row for row in json.loads(r.stdout)}
    assert rows["t-rtn"]["state"] == "up to date"
    assert rows["t-gptq"]["state"] == "to redo" and rows["t-gptq"]["reason"] == "inputs changed: calibration"
    r = run_cli("quantize", str(recipe), "--set", "calibration.num_samples=4")
    assert r.returncode == 0 and "t-gptq (gptq W4A16); inputs changed: calibration: redoing it" in r.stderr, r.stderr
    assert created(out, "t-rtn") == first["t-rtn"] and created(out, "t-gptq") != first["t-gptq"]

    # a damaged artifact (one of its own files changed) is redone; --force redoes what is current
    config = out / "t-rtn" / "generation_config.json"
    config.write_text(config.read_text() + " ")
    r = run_cli("status", str(recipe), "--set", "calibration.num_samples=4", "--json")
    assert json.loads(r.stdout)[0]["reason"].startswith("damaged")
    r = run_cli("quantize", str(recipe), "--set", "calibration.num_samples=4")
    assert r.returncode == 0 and "t-rtn (rtn W8A16); damaged" in r.stderr, r.stderr
    assert Artifact.load(out / "t-rtn")  # remade whole
    r = run_cli("quantize", str(recipe), "--set", "calibration.num_samples=4", "--force")
    assert r.returncode == 0 and r.stderr.count("--force: redoing it") == 2


# the real CLI with one addition: the first module forward pass once OUTPUT's staging folder exists (inside
# llm-compressor's calibration of that output) writes READY and waits there for the test's signal, so the
# kill lands mid-calibration on any machine, fast or loaded, and the AWQ itself can be small
HELD_RUN = """
import sys, time
from pathlib import Path

import torch

out, output, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])


def hold(module, args):
    if not ready.exists() and any(out.glob(f".{output}.partial-*")):
        ready.write_text(type(module).__name__)
        while True:
            time.sleep(0.1)


torch.nn.modules.module.register_module_forward_pre_hook(hold)
from quantkit.cli.main import main

sys.argv = ["quantkit", *sys.argv[4:]]
sys.exit(main())
"""
AWQ = "  - {method: awq, name: t-awq, group_size: 64, n_grid: 3}\n"
HELD_OUTPUTS = "  - {method: rtn, name: t-rtn, scheme: W8A16}\n" + AWQ


def start_held_run(recipe, out, output: str = "t-awq") -> subprocess.Popen:
    """`quantkit quantize RECIPE`, returned once it is held inside llm-compressor calibrating `output`."""
    ready = out.parent / f"{output}.held"
    proc = subprocess.Popen([sys.executable, "-c", HELD_RUN, str(out), output, str(ready), "quantize", str(recipe)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert ready.exists(), "the run never reached its calibration"
    assert any(out.glob(f".{output}.partial-*")) and not (out / output).exists()
    return proc


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory):
    """HELD_OUTPUTS made by one plain run: what a killed-and-resumed run must equal."""
    root = tmp_path_factory.mktemp("uninterrupted")
    recipe = root / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, root / "out", HELD_OUTPUTS))
    r = run_cli("quantize", str(recipe))
    assert r.returncode == 0, r.stderr
    return root / "out"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_run_killed_after_its_first_output_finishes_on_a_plain_rerun(sig, tiny_model, tmp_path, uninterrupted):
    out, recipe = tmp_path / "out", tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, out, HELD_OUTPUTS))
    proc = start_held_run(recipe, out)
    first = created(out, "t-rtn")
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert not (out / "t-awq").exists()

    r = run_cli("status", str(recipe), "--json")
    rows = {row["output"]: row for row in json.loads(r.stdout)}
    assert rows["t-rtn"]["state"] == "up to date" and rows["t-awq"]["state"] == "not made"
    assert bool(rows["t-awq"]["stale_partials"]) == (sig == signal.SIGKILL)  # SIGTERM cleans up on the way out

    r = run_cli("quantize", str(recipe))
    assert r.returncode == 0, r.stderr
    assert "t-rtn: up to date" in r.stderr and created(out, "t-rtn") == first
    assert sorted(p.name for p in out.iterdir()) == ["t-awq", "t-rtn"]  # the killed run's staging folder is gone

    # the resumed artifacts equal an uninterrupted run's, tensor for tensor (AWQ and RTN are deterministic on CPU)
    from safetensors.numpy import load_file

    for name in ("t-rtn", "t-awq"):
        a, b = load_file(out / name / "model.safetensors"), load_file(uninterrupted / name / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name


def test_a_run_that_cannot_fit_on_disk_is_refused_before_calibration(tiny_model, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import quantkit
    from quantkit.errors import QuantkitError
    from quantkit.progress import NullReporter

    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", OUTPUTS))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    reporter = NullReporter()
    with pytest.raises(QuantkitError, match=r"the artifacts need about .* GB .* has 0.00 GB free.*--force-space"):
        quantkit.quantize(recipe, reporter=reporter)
    assert not any("calibration" in s for s in reporter.steps) and not (tmp_path / "out").exists()
    assert {a.name for a in quantkit.quantize(recipe, force_space=True)} == {"t-rtn", "t-gptq"}


def test_a_second_run_on_the_same_outputs_is_refused_while_the_first_runs(tiny_model, tmp_path):
    out, recipe = tmp_path / "out", tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, out, AWQ))
    first = start_held_run(recipe, out)
    second = run_cli("quantize", str(recipe), timeout=120)
    assert second.returncode == 2 and f"another quantkit run (pid {first.pid}) is writing" in second.stderr, second.stderr
    r = run_cli("status", str(recipe), "--json")
    assert [x["pid"] for x in json.loads(r.stdout)[0]["running"]] == [first.pid]
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=60)


def test_disk_full_while_saving_leaves_nothing_and_a_rerun_finishes(tiny_model, tmp_path, monkeypatch):
    """ENOSPC raised while an output's files are written (simulated: CI has no small tmpfs to fill):
    that output fails with the OS's message, its staging folder is gone, the others stand, and the
    plain re-run makes only the missing one."""
    import errno

    import quantkit
    from quantkit.quantize import QuantizeFailed

    q = sys.modules["quantkit.quantize"]  # the module (quantkit.quantize is the function)

    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", OUTPUTS))
    real = q.write_manifest

    def full_disk(folder, fields):
        if fields["name"] == "t-gptq":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, fields)

    monkeypatch.setattr(q, "write_manifest", full_disk)
    with pytest.raises(QuantizeFailed, match="t-gptq: OSError: .*No space left on device"):
        quantkit.quantize(recipe)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t-rtn"]
    first = created(tmp_path / "out", "t-rtn")
    monkeypatch.setattr(q, "write_manifest", real)
    assert {a.name for a in quantkit.quantize(recipe)} == {"t-rtn", "t-gptq"}
    assert created(tmp_path / "out", "t-rtn") == first


def test_a_read_only_output_folder_is_refused_before_any_work(tiny_model, tmp_path, monkeypatch):
    """os.access decides (as root, CI's user, every folder is writable, so the answer is simulated)."""
    import os

    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, tmp_path / "out", OUTPUTS))
    import quantkit
    from quantkit.errors import RecipeError
    from quantkit.preflight import preflight_problems

    parsed = quantkit.load_recipe(recipe)
    assert preflight_problems(parsed) == []
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert preflight_problems(parsed) == [f"output_dir: {tmp_path} is not writable"]
    with pytest.raises(RecipeError, match="is not writable"):
        quantkit.quantize(parsed)
