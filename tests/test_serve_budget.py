"""The serving check within bounds: --serve-prompts/--serve-max-tokens bound every phase, --serve-timeout
bounds the whole stage and keeps what was measured, a scheme this machine serves very slowly (FP8 on
CPU) gets a short workload, gate values come from what was measured, and SIGTERM during serving stops
the server at once. All against the stand-in server (tests/fake_vllm)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import run_cli

from quantkit.checks.serve import serving_gates
from quantkit.errors import QuantkitError
from quantkit.gates import evaluate_gates
from quantkit.serving.results import ServeOptions, summary_line
from quantkit.serving.smoke import serve_test
from quantkit.toolchains.vllm import VllmEnv

pytestmark = pytest.mark.unit

FAKE = Path(__file__).parent / "fake_vllm"
FP8_CONFIG = {"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {
    "group_0": {"weights": {"num_bits": 8, "type": "float"}, "input_activations": {"num_bits": 8, "type": "float"}}}}}


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(FAKE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("FAKE_VLLM_QUANT", "compressed-tensors")
    return VllmEnv(Path(sys.executable), {"distribution": "fake-vllm", "vllm": "0.0.0", "device": "cpu"})


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie awaiting its parent counts as gone
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _requests(log: Path) -> list[tuple[str, int]]:
    """(path, max_tokens) of every request the stand-in server received."""
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"^request (\S+) max_tokens=(\d+)$", log.read_text(), re.M)]


def test_prompt_and_token_options_bound_every_phase(fake_env, tmp_path):
    """--serve-prompts 2 --serve-max-tokens 4: smoke and greedy too (they sent 8 smoke requests of 32 tokens
    and 16 greedy tokens whatever was asked)."""
    opts = ServeOptions(prompts=2, max_tokens=4, concurrency=(1, 2))
    r = serve_test(tmp_path / "m", fake_env, expected_quantization="compressed-tensors", options=opts, log_dir=tmp_path / "l")
    assert r.status == "measured", r.reason
    plain, spec = _requests(tmp_path / "l" / "serve-vllm.log"), _requests(tmp_path / "l" / "serve-vllm-spec.log")
    assert all(n <= 4 for _, n in plain + spec)
    # 2 smoke (one chat, one completion), 1 greedy, 2 prompts at each of 2 concurrencies; the same 4 with speculation
    assert len(plain) == 2 + 1 + 4 and len(spec) == 4
    assert {path for path, _ in plain[:2]} == {"/v1/chat/completions", "/v1/completions"}
    assert r.smoke["requests"] == 2 and r.greedy["tokens"] == 4 and r.not_measured == {}


def test_fp8_on_cpu_gets_a_short_workload_with_every_gate_measured(fake_env, tmp_path):
    from quantkit.serving.support import SERVING_CLASSES
    from quantkit.serving.workload import plan_workload

    assert SERVING_CLASSES["FP8"].cpu_slow and not SERVING_CLASSES["W8A8"].cpu_slow  # the fact lives in support.py
    model = tmp_path / "fp8"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(FP8_CONFIG))
    r = serve_test(model, fake_env, expected_quantization="compressed-tensors", options=ServeOptions(), log_dir=tmp_path / "l")
    assert r.status == "measured" and r.serving_class == "FP8"
    plain, spec = _requests(tmp_path / "l" / "serve-vllm.log"), _requests(tmp_path / "l" / "serve-vllm-spec.log")
    assert len(plain) == 2 + 1 + 2 and len(spec) == 2 and all(n <= 32 for _, n in plain + spec)
    assert list(r.performance) == ["1"]
    assert r.not_measured["concurrency 8"] == "not measured here: FP8 on CPU, short workload"
    assert r.plan["short_because"].startswith("FP8 on CPU: vLLM's CPU build has no fast FP8 kernel")
    gates = evaluate_gates(serving_gates(ServeOptions()), r.metrics())
    assert all(g.value is not None and g.passed for g in gates)
    line = summary_line({"status": "measured", "reason": None, "details": r.to_dict()})
    assert "short workload (2 x 32 tokens)" in line and "(concurrency 8)" in line
    # the full workload elsewhere: on a GPU build, and for W8A8 on CPU
    assert plan_workload(ServeOptions(), "FP8", "gpu").short_because is None
    full = plan_workload(ServeOptions(), "W8A8", "cpu")
    assert (len(full.smoke), len(full.workload), full.concurrency) == (8, 8, (1, 8))


@pytest.mark.integration  # tens of seconds by design: too slow for the unit tier
def test_a_serve_timeout_stops_the_server_and_keeps_what_was_measured(fake_env, tmp_path, monkeypatch):
    """Ready, smoke and greedy fit the budget; the copy workload does not (one prompt streams at 1 s/token, 60
    tokens). The budget leaves ~25 s for the first three, which take ~3 s on an idle machine: a loaded CI
    machine must not turn the test into a race."""
    monkeypatch.setenv("FAKE_VLLM_SLOW_PROMPT", "Copy this Python function")
    monkeypatch.setenv("FAKE_VLLM_PIDS_FILE", str(tmp_path / "pids"))
    opts = ServeOptions(prompts=1, max_tokens=60, concurrency=(1, 8), timeout=30)
    r = serve_test(tmp_path / "m", fake_env, expected_quantization="compressed-tensors", options=opts, log_dir=tmp_path / "l")
    assert r.timed_out and r.status == "measured" and r.reason == "serve timeout of 30 s reached", r.to_dict()
    assert r.ready_s is not None and r.quantization_matches and r.smoke["failed"] == 0 and r.greedy["vllm_ids"]
    why = "not measured: serve timeout of 30 s reached"
    assert r.not_measured == {"concurrency 1": why, "concurrency 8": why, "speculative": why}
    assert r.performance == {} and r.speculative["status"] == "not measured"
    assert not (tmp_path / "l" / "serve-vllm-spec.log").exists()  # the speculative server never started
    assert all(_gone(int(pid)) for pid in (tmp_path / "pids").read_text().split())
    # measured values stay; the gates of what was not measured fail, with the reason
    gates = {g.gate: g for g in evaluate_gates(serving_gates(opts), r.metrics())}
    assert gates["serve_loaded_min"].passed and gates["serve_ready_s_max"].passed
    assert gates["serve_quantization_match_min"].passed
    assert gates["serve_failed_requests_max"].value is None and not gates["serve_failed_requests_max"].passed
    assert gates["spec_mismatches_max"].value is None and not gates["spec_mismatches_max"].passed
    assert r.unmeasured_metrics() == {"serve_failed_requests": why, "spec_mismatches": why}
    assert f"{why} (concurrency 1, concurrency 8, speculative)" in summary_line(
        {"status": "measured", "reason": r.reason, "details": r.to_dict()})
    from rich.console import Console

    from quantkit.cli.serving import serve_table
    from quantkit.serving.verb import ServeReport

    console = Console(width=240, record=True, file=open(os.devnull, "w"))
    console.print(serve_table(ServeReport(tmp_path / "m", r, list(gates.values())).to_dict()))
    table = console.export_text()
    for gate in ("serve_failed_requests_max", "spec_mismatches_max"):
        assert re.search(rf"gate {gate}\s*│ ✗ {why} ", table), table


def test_a_serve_timeout_before_ready_leaves_the_load_unmeasured(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_READY_DELAY", "60")
    r = serve_test(tmp_path / "m", fake_env, expected_quantization="compressed-tensors",
                   options=ServeOptions(timeout=2, ready_timeout=600), log_dir=tmp_path / "l")
    assert r.status == "failed" and r.timed_out and r.ready_s is None
    assert r.not_measured["server start"] == "not measured: serve timeout of 2 s reached"
    assert r.metrics() == {}  # not "did not load" (0): whether it loads was not measured
    assert not any(g.passed for g in evaluate_gates(serving_gates(ServeOptions()), r.metrics()))


def test_gate_values_come_from_what_was_measured_when_a_later_request_fails(fake_env, tiny_model, tmp_path, monkeypatch):
    """A server that got ready with the right quantization, whose greedy request then failed: ready time and
    quantization match are gate values (they were 'not measured' and serve_loaded 0), the failure fails
    serve_failed_requests_max."""
    from quantkit.serving.verb import run_serve_test

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_VLLM_NO_TOKEN_IDS", "1")
    monkeypatch.delenv("FAKE_VLLM_QUANT")  # a float model folder: vLLM reports no quantization, as expected
    report = run_serve_test(tiny_model, ServeOptions(prompts=1, max_tokens=4, concurrency=(1,)), vllm_python=sys.executable)
    r = report.result
    assert r.status == "failed" and "token ids" in r.reason and r.ready_s is not None
    gates = {g.gate: g for g in report.gates}
    assert gates["serve_loaded_min"].value == 1.0 and gates["serve_loaded_min"].passed
    assert gates["serve_ready_s_max"].value == r.ready_s and gates["serve_ready_s_max"].passed
    assert gates["serve_quantization_match_min"].value == 1.0
    assert gates["serve_failed_requests_max"].value == 1.0 and not gates["serve_failed_requests_max"].passed
    assert not report.passed


@pytest.mark.integration
def test_serve_timeout_option_is_checked(tiny_model):
    for value in ("0", "-5", "inf"):
        r = run_cli("serve-test", str(tiny_model), "--vllm-python", sys.executable, "--serve-timeout", value)
        assert r.returncode == 2 and "--serve-timeout" in r.stderr and "positive, finite number of seconds" in r.stderr
    with pytest.raises(QuantkitError, match="--serve-timeout"):
        ServeOptions(timeout=float("nan"))


@pytest.mark.integration
def test_sigterm_during_the_smoke_requests_stops_the_server_and_exits_143(fake_env, tiny_model, tmp_path):
    """The real CLI, the stand-in server streaming at 1 s/token and ignoring SIGTERM (vLLM drains its
    requests): SIGTERM in the smoke phase ends the command with 143 within seconds, its server and the
    server's child process gone. It waited for the streamed requests, then 20 s for the server."""
    pids = tmp_path / "pids"
    env = {**os.environ, "COLUMNS": "200", "QUANTKIT_CACHE": str(tmp_path / "cache"), "FAKE_VLLM_TOKEN_DELAY": "1",
           "FAKE_VLLM_IGNORE_SIGTERM": "1", "FAKE_VLLM_PIDS_FILE": str(pids)}
    proc = subprocess.Popen([sys.executable, "-m", "quantkit.cli.main", "serve-test", str(tiny_model), "--vllm-python",
                             sys.executable, "--serve-prompts", "2", "--serve-max-tokens", "32", "--progress", "plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    smoke_started = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if re.search(r"start +vLLM: \d+ smoke requests", line):
                smoke_started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert smoke_started.wait(timeout=300), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 143
    finally:
        proc.kill()
        proc.wait()
    reader.join(timeout=5)
    assert "interrupted (SIGTERM)" in "".join(lines)
    assert all(_gone(int(pid)) for pid in pids.read_text().split())
