"""The vLLM serving smoke test without vLLM: metrics parsing, server lifecycle, the client, the
whole `serve_test` against a stand-in server (tests/fake_vllm), reports and gates. The real
server runs in tests/test_vllm.py."""

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from quantkit.serving.metrics import parse_counters, percentile, spec_decode_stats
from quantkit.serving.results import ServeOptions, summary_line
from quantkit.serving.server import ServerError, ServerProcess, failure_reason, free_port, kernel_lines, reported_quantization
from quantkit.serving.smoke import serve_test
from quantkit.toolchains.vllm import VllmEnv

pytestmark = pytest.mark.unit

FAKE = Path(__file__).parent / "fake_vllm"
METRICS = """# HELP vllm:spec_decode_num_drafts Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="smol"} 103.0
vllm:spec_decode_num_drafts_created{engine="0",model_name="smol"} 1.7956481313740652e+09
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="smol"} 412.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="smol"} 259.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="smol",position="0"} 90.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="smol"} 1.0
"""


def test_metrics_parsing_sums_label_sets_and_derives_acceptance():
    c = parse_counters(METRICS)
    assert c["vllm:spec_decode_num_drafts_total"] == 104.0  # two engines
    assert c["vllm:spec_decode_num_draft_tokens_total"] == 412.0
    stats = spec_decode_stats({}, parse_counters(METRICS.replace("engine=\"1\",model_name=\"smol\"} 1.0", "x=\"1\"} 0.0")))
    assert stats["acceptance_rate"] == pytest.approx(259 / 412)
    assert stats["mean_acceptance_length"] == pytest.approx(1 + 259 / 103)
    # a window between two snapshots
    later = parse_counters(METRICS.replace("103.0", "113.0").replace("412.0", "452.0").replace("259.0", "279.0"))
    window = spec_decode_stats(c, later)
    assert (window["drafts"], window["draft_tokens"], window["accepted_tokens"]) == (10, 40, 20)
    assert window["acceptance_rate"] == 0.5 and window["mean_acceptance_length"] == 3.0
    assert spec_decode_stats({}, {"vllm:other_total": 1.0})["available"] is False


def test_percentile_matches_linear_interpolation():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10.0], 95) == 10.0
    assert percentile([0, 10], 95) == pytest.approx(9.5)
    assert percentile([None], 50) is None


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_log_parsing():
    log = ("(EngineCore pid=9) INFO 11-25 23:08:33 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
           "model='/m', quantization=compressed-tensors, enforce_eager=True\n"
           "(EngineCore pid=9) INFO 11-25 23:08:40 [cpu_wna16.py:12] Using CPUWNA16LinearKernel for CompressedTensorsWNA16\n")
    assert reported_quantization(log) == "compressed-tensors"
    assert reported_quantization(log.replace("compressed-tensors,", "None,")) is None
    assert kernel_lines(log) == ["Using CPUWNA16LinearKernel for CompressedTensorsWNA16"]
    assert failure_reason("a\nTraceback\nValueError: GGUF model is not supported\n") == "ValueError: GGUF model is not supported"
    assert failure_reason("just a line\n") == "just a line"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie awaiting its parent counts as gone
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_server_that_never_gets_ready_times_out_and_is_killed(tmp_path):
    # a slow process that ignores SIGTERM: stop() must escalate to SIGKILL
    slow = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"]
    server = ServerProcess(slow, tmp_path / "slow.log")
    server.start()
    try:
        with pytest.raises(ServerError, match="not ready within 1 s"):
            server.wait_ready(timeout=1, poll=0.1)
    finally:
        start = time.monotonic()
        server.stop(grace=1)
    assert not _alive(server.proc.pid) and time.monotonic() - start < 15
    assert server.workdir is None


def test_a_server_that_exits_reports_its_own_reason(tmp_path):
    crash = [sys.executable, "-c", "import sys; print('ValueError: no kernel for uint8b128'); sys.exit(3)"]
    with ServerProcess(crash, tmp_path / "crash.log") as server:
        with pytest.raises(ServerError) as e:
            server.wait_ready(timeout=30, poll=0.1)
    assert "exited with code 3" in str(e.value) and "ValueError: no kernel for uint8b128" in str(e.value)
    assert "uint8b128" in e.value.log_tail


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(FAKE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return VllmEnv(Path(sys.executable), {"distribution": "fake-vllm", "vllm": "0.0.0", "device": "cpu"})


def test_serve_test_against_a_stand_in_server(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_QUANT", "compressed-tensors")
    monkeypatch.setenv("FAKE_VLLM_READY_DELAY", "0.5")
    opts = ServeOptions(max_tokens=12, prompts=3, concurrency=(1, 3), greedy_tokens=4)
    r = serve_test(tmp_path / "model", fake_env, expected_quantization="compressed-tensors", options=opts,
                   log_dir=tmp_path / "logs", greedy_reference=[100, 101, 7, 103])
    assert r.status == "measured", r.reason
    assert r.ready_s >= 0.5 and r.quantization == "compressed-tensors" and r.quantization_matches
    assert r.kernels == ["Using FakeLinearKernel for FakeScheme"]
    assert r.smoke["requests"] == 3 and r.smoke["failed"] == 0  # --serve-prompts bounds the smoke phase too
    assert r.greedy["agreeing_tokens"] == 2  # the reference differs at its third token
    for c in ("1", "3"):
        p = r.performance[c]
        assert p["requests"] == 3 and p["failed"] == 0 and p["output_tokens"] == 36
        assert 0 < p["ttft_p50_s"] <= p["ttft_p95_s"] and p["tpot_p50_s"] > 0 and p["output_tokens_per_s"] > 0
    sd = r.speculative
    assert sd["method"] == "ngram" and sd["compared_outputs"] == 6 and sd["mismatches"] == 0
    assert sd["acceptance"]["1"]["drafts"] == 18 and sd["acceptance_rate"] == pytest.approx(0.25)
    assert sd["speedup"]["1"] > 0
    assert r.metrics() == {"serve_loaded": 1.0, "serve_failed_requests": 0.0, "serve_ready_s": r.ready_s,
                           "serve_quantization_match": 1.0, "spec_mismatches": 0.0}
    assert (tmp_path / "logs" / "serve-vllm.log").is_file() and (tmp_path / "logs" / "serve-vllm-spec.log").is_file()
    assert "ngram speedup" in summary_line({"status": "measured", "reason": None, "details": r.to_dict()})


def test_serve_test_catches_speculative_mismatch_and_wrong_quantization(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_SPEC_DIFFERENT", "1")  # FAKE_VLLM_QUANT unset: the server reports none
    r = serve_test(tmp_path / "m", fake_env, expected_quantization="compressed-tensors",
                   options=ServeOptions(max_tokens=6, prompts=2, concurrency=(2,)), log_dir=tmp_path / "logs")
    assert r.status == "measured"
    assert r.speculative["mismatches"] == 2 and r.speculative["diverged"][0]["request"] == "copy-0"
    assert r.metrics()["spec_mismatches"] == 2.0 and r.metrics()["serve_quantization_match"] == 0.0


def test_a_model_vllm_cannot_load_is_failed_with_its_reason(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_CRASH", "GGUF is not supported")
    r = serve_test(tmp_path / "m.gguf", fake_env, expected_quantization="gguf", options=ServeOptions(), log_dir=tmp_path / "l")
    assert r.status == "failed" and "ValueError: GGUF is not supported" in r.reason
    assert r.metrics() == {"serve_loaded": 0.0}
    assert "GGUF is not supported" in r.log_tail


@pytest.mark.integration
def test_serve_test_cli_with_a_stand_in_server(fake_env, tiny_model, tmp_path):
    r = run_cli("serve-test", str(tiny_model), "--vllm-python", sys.executable, "--serve-max-tokens", "8",
                "--serve-prompts", "2", "--concurrency", "2", "--json", "--output", str(tmp_path / "serve.json"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] and {g["gate"] for g in doc["gates"]} >= {"serve_loaded_min", "spec_mismatches_max"}
    assert json.loads((tmp_path / "serve.json").read_text())["result"]["status"] == "measured"
    assert doc["result"]["greedy"]["reference"] == "transformers"

    r = run_cli("serve-test", str(tiny_model), "--vllm-python", sys.executable, "--speculative", "medusa")
    assert r.returncode == 2 and "'medusa' is not one of" in r.stderr and "ngram" in r.stderr  # Typer enforces the choice
    r = run_cli("serve-test", str(tmp_path / "nope"), "--vllm-python", sys.executable)
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.integration
def test_no_vllm_environment_is_a_clear_error_or_a_skip(tiny_model, tmp_path):
    env = {"QUANTKIT_CACHE": str(tmp_path / "empty-cache"), "QUANTKIT_VLLM_PYTHON": ""}
    r = run_cli("serve-test", str(tiny_model), env=env)
    assert r.returncode == 2 and "quantkit env vllm" in r.stderr
    r = run_cli("serve-test", str(tiny_model), "--vllm-python", str(tmp_path / "no-python"), env=env)
    assert r.returncode == 2 and "vLLM interpreter not found" in r.stderr


@pytest.mark.integration
def test_validate_runs_the_serving_check_and_gates_it(fake_env, tiny_model, tmp_path, monkeypatch):
    from conftest import tiny_recipe_text

    import quantkit
    from quantkit.checks.serve import ServeSettings
    from quantkit.validate import validate

    [art] = quantkit.quantize(quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", "  - {method: fp8}\n")))
    opts = ServeOptions(max_tokens=6, prompts=2, concurrency=(1,))
    loose = {"kld_mean_max": 100.0, "ppl_increase_max": 100.0}

    monkeypatch.setenv("FAKE_VLLM_QUANT", "compressed-tensors")
    report = validate(art.path, max_tokens=64, context=32, gate_overrides=loose, serve=ServeSettings(opts, fake_env))
    [t] = report.targets
    serve = next(c for c in t.checks if c.check == "serve")
    assert serve.status == "measured" and serve.details["quantization"] == "compressed-tensors"
    assert {g.gate for g in t.gates} >= {"serve_loaded_min", "serve_failed_requests_max", "spec_mismatches_max"}
    assert report.passed
    assert "vLLM serving smoke test" in (art.path / "validation.md").read_text()
    assert (art.path / "serve-logs" / t.target / "serve-vllm.log").is_file()
    quantkit.Artifact.load(art.path)  # the logs do not break the checksums
    from quantkit.report.html import write_run_report

    page = write_run_report([report], tmp_path).read_text()
    assert page.count("data:image/png;base64,") == 4  # size/KLD, per-domain ppl, KLD by position, vLLM throughput
    assert "vLLM serving smoke test" in page and "ngram speedup" in page

    # explicitly asked for, no vLLM environment: skipped with the reason, and the gates fail
    report = validate(art.path, max_tokens=64, context=32, gate_overrides=loose,
                      serve=ServeSettings(opts, None, "no vLLM environment", explicit=True))
    [t] = report.targets
    serve = next(c for c in t.checks if c.check == "serve")
    assert serve.status == "skipped" and serve.reason == "no vLLM environment"
    assert not report.passed and next(g for g in t.gates if g.gate == "serve_loaded_min").value is None

    # not installed and not asked for: skipped, no serving gates
    report = validate(art.path, max_tokens=64, context=32, gate_overrides=loose, serve=ServeSettings(opts, None, "none here"))
    assert report.passed and not any(g.gate.startswith("serve") for g in report.targets[0].gates)


def test_a_server_that_fails_requests_is_failed_with_the_logged_reason(fake_env, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_500", "1")
    r = serve_test(tmp_path / "m", fake_env, expected_quantization="compressed-tensors", options=ServeOptions(prompts=1),
                   log_dir=tmp_path / "l")
    assert r.status == "failed" and r.ready_s is not None
    assert "NotImplementedError" in r.reason and "cpu_gemm_wna16" in r.reason
    # it loaded; both smoke requests (--serve-prompts 1: one chat, one completion) failed and the greedy request
    # raised: the failed-requests gate says so
    assert r.metrics() == {"serve_loaded": 1.0, "serve_ready_s": r.ready_s, "serve_quantization_match": 0.0,
                           "serve_failed_requests": 3.0}
    assert r.dtype == "bfloat16"  # quantized on CPU: the dtype vLLM's CPU kernels implement


@pytest.mark.integration
def test_a_failed_vllm_environment_build_leaves_nothing(tmp_path, monkeypatch):
    import quantkit.toolchains.vllm as vllm_env
    from quantkit.toolchains.vllm import VllmEnvError, build_environment, environment_dir, find_environment

    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QUANTKIT_VLLM_PYTHON", raising=False)
    empty_lock = tmp_path / "lock.txt"
    empty_lock.write_text("# nothing: vllm will not import\n")
    monkeypatch.setattr(vllm_env, "lock_file", lambda: empty_lock)
    with pytest.raises(VllmEnvError, match="import vllm"):
        build_environment(gpu=False)
    assert not environment_dir(gpu=False).exists()  # a half-built environment is never left to be trusted
    assert find_environment() is None


def test_draft_model_speculation_config_and_dtype(fake_env, tmp_path):
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
    opts = ServeOptions(speculative="draft_model", draft_model=draft, max_tokens=6, prompts=1, concurrency=(1,))
    r = serve_test(tmp_path / "float-model", fake_env, expected_quantization=None, options=opts, log_dir=tmp_path / "l")
    assert r.status == "measured" and r.speculative["config"] == {"method": "draft_model", "model": str(draft),
                                                                  "num_speculative_tokens": 4}
    assert r.dtype == "bfloat16"  # a quantized draft on CPU: both run in the dtype its kernels implement
    with pytest.raises(ValueError, match="draft model path"):
        ServeOptions(speculative="draft_model").speculative_config()


def test_server_command():
    from quantkit.serving.server import vllm_server_command

    cmd = vllm_server_command(Path("/env/bin/python"), Path("/m"), served_name="s", max_model_len=1024, cpu=True,
                              speculative_config={"method": "ngram", "num_speculative_tokens": 4}, dtype="float32")
    assert cmd[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server"]  # not `vllm serve`: see decisions.md
    joined = " ".join(cmd)
    assert "--enforce-eager" in cmd and "--dtype float32" in joined and "--max-model-len 1024" in joined
    assert json.loads(cmd[cmd.index("--speculative-config") + 1])["method"] == "ngram"
    gpu = vllm_server_command(Path("p"), Path("/m"), served_name="s", max_model_len=1024, cpu=False)
    assert "--enforce-eager" not in gpu and "--dtype" not in gpu and "--speculative-config" not in gpu


def test_the_greedy_reference_follows_validates_device_and_dtype(tiny_model):
    """validate hands --device/--dtype to the serve check: its transformers greedy reference is not
    pinned to float32 on the CPU (a 70B model would not fit)."""
    from quantkit.checks import build_checks
    from quantkit.serving.reference import transformers_greedy_ids

    serve = next(c for c in build_checks(device="cpu", dtype="bfloat16") if c.name == "serve")
    assert (serve.device, serve.dtype) == ("cpu", "bfloat16")
    ids32 = transformers_greedy_ids(tiny_model, "def add(a, b):", 8)
    ids16 = transformers_greedy_ids(tiny_model, "def add(a, b):", 8, "cpu", "bfloat16")
    assert len(ids32) == len(ids16) == 8 and all(isinstance(i, int) for i in ids16)
