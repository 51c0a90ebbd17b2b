"""Every method on a tiny random Llama: real llm-compressor runs, seconds each."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli, tiny_recipe_text

import quantkit
from quantkit.artifact import Artifact
from quantkit.errors import QuantkitError, SchemeConstraintError
from quantkit.files import sha256_file
from quantkit.progress import NullReporter

pytestmark = pytest.mark.integration

METHOD_OUTPUTS = {
    "awq": ("  - {method: awq, group_size: 64, n_grid: 3}\n", "pack-quantized", 4, None),
    "gptq": ("  - {method: gptq, scheme: W4A16_ASYM, group_size: 64}\n", "pack-quantized", 4, None),
    "int8": ("  - {method: int8}\n", "int-quantized", 8, "int"),
    "int8-static": (
        "  - {method: int8, activations: static, weight_algorithm: rtn, smoothing_strength: 0.5}\n",
        "int-quantized",
        8,
        "int",
    ),
    "fp8": ("  - {method: fp8}\n", "float-quantized", 8, "float"),
    "rtn": ("  - {method: rtn, group_size: 32}\n", "pack-quantized", 4, None),
}
# the vLLM kernel class each method's checkpoint needs (quantkit.serving.support)
SERVING_CLASS = {"awq": "W4A16", "gptq": "W4A16", "int8": "W8A8", "int8-static": "W8A8", "fp8": "FP8", "rtn": "W4A16"}


@pytest.mark.parametrize("method", list(METHOD_OUTPUTS))
def test_method_writes_loadable_checkpoint(method, tiny_model, tmp_path):
    outputs, fmt, bits, act_type = METHOD_OUTPUTS[method]
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", outputs))
    reporter = NullReporter()
    [art] = quantkit.quantize(recipe, reporter=reporter)

    config = json.loads((art.path / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == fmt
    group = qc["config_groups"]["group_0"]
    assert group["weights"]["num_bits"] == bits
    assert "lm_head" in qc["ignore"]
    if act_type:
        acts = group["input_activations"]
        assert acts["type"] == act_type and acts["dynamic"] is (method != "int8-static")
        assert acts["strategy"] == ("tensor" if method == "int8-static" else "token")
    else:
        assert group["input_activations"] is None
    from quantkit.serving.support import serving_class

    assert serving_class(art.path) == SERVING_CLASS[method]

    # calibrated methods ran layer by layer and reported it
    calibrated = method in ("awq", "gptq", "int8", "int8-static")
    assert ("calibrating layers" in reporter.steps) == calibrated
    assert (art.manifest.calibration is not None) == calibrated

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(art.path)
    tok = AutoTokenizer.from_pretrained(art.path)
    out = model.generate(**tok("def f", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > 2


def test_manifest_records_inputs_and_checksums(tiny_model, tmp_path):
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", METHOD_OUTPUTS["gptq"][0]))
    [art] = quantkit.quantize(recipe)
    m = json.loads((art.path / "quantkit.json").read_text())
    assert m["recipe"]["name"] == "tiny" and m["output"]["group_size"] == 64
    assert m["base_model"]["kind"] == "local" and len(m["base_model"]["fingerprint"]) == 64
    assert m["calibration"]["num_tokens"] == 8 * 64 and len(m["calibration"]["fingerprint"]) == 64
    for lib in ("torch", "transformers", "llmcompressor", "compressed-tensors", "quantkit"):
        assert lib in m["libraries"]
    assert set(m["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    for rel, info in m["files"].items():
        assert sha256_file(art.path / rel) == info["sha256"]
    assert m["timings_s"]["total_s"] >= m["timings_s"]["quantize_s"] > 0
    assert m["peak_rss_bytes"] > 10_000_000
    assert m["compression_ratio"] > 1
    assert Artifact.load(art.path).name == art.name


def test_no_model_kept_alive_between_outputs(tiny_model, tmp_path):
    import gc

    from llmcompressor.core import active_session
    from transformers import LlamaForCausalLM

    outputs = METHOD_OUTPUTS["gptq"][0] + METHOD_OUTPUTS["int8"][0]
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", outputs))
    quantkit.quantize(recipe)
    assert active_session().state.model is None
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, LlamaForCausalLM)]
    assert alive == [], f"{len(alive)} quantized model(s) still referenced after quantize() returned"


def test_same_inputs_same_fingerprints(tiny_model, tmp_path):
    outputs = METHOD_OUTPUTS["gptq"][0] + METHOD_OUTPUTS["int8"][0]
    arts = quantkit.quantize(quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", outputs)))
    assert len({a.manifest.calibration.fingerprint for a in arts}) == 1
    assert len({a.manifest.base_model.fingerprint for a in arts}) == 1


def test_group_size_divisibility_fails_before_calibration(odd_model, tmp_path):
    recipe = quantkit.parse_recipe(
        tiny_recipe_text(odd_model, tmp_path / "out", "  - {method: gptq, group_size: 64}\n  - {method: fp8}\n")
    )
    reporter = NullReporter()
    with pytest.raises(SchemeConstraintError) as e:
        quantkit.quantize(recipe, reporter=reporter)
    msg = str(e.value)
    assert "group_size 64 does not divide" in msg and "model.layers.0.self_attn.q_proj" in msg
    assert "Group sizes that divide every targeted layer: 16, 32" in msg
    assert not any("calibrat" in s for s in reporter.steps)  # nothing heavy ran
    assert not (tmp_path / "out").exists()  # and nothing was written, not even the fp8 output


def test_targets_matching_nothing(tiny_model, tmp_path):
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", "  - {method: fp8, targets: [Conv2d]}\n"))
    with pytest.raises(SchemeConstraintError, match="match no layer"):
        quantkit.quantize(recipe)


def test_only_selects_outputs(tiny_model, tmp_path):
    outputs = METHOD_OUTPUTS["fp8"][0] + METHOD_OUTPUTS["rtn"][0]
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", outputs))
    arts = quantkit.quantize(recipe, only=["tiny-rtn-w4a16-g32"])
    assert [a.name for a in arts] == ["tiny-rtn-w4a16-g32"]
    with pytest.raises(QuantkitError, match="no output of that name; outputs: tiny-fp8-fp8-dynamic, tiny-rtn-w4a16-g32"):
        quantkit.quantize(recipe, only=["nope"])


def test_cli_quantize_table_force_and_exit_codes(tiny_model, write_recipe, tmp_path):
    recipe = write_recipe(tiny_model, METHOD_OUTPUTS["fp8"][0])
    r = run_cli("quantize", str(recipe))
    assert r.returncode == 0, r.stderr
    for header in ("artifact", "method", "scheme", "size", "vs float", "time", "peak RSS"):
        assert header in r.stdout
    assert "tiny-fp8-fp8-dynamic" in r.stdout and "FP8_DYNAMIC" in r.stdout
    first = json.loads((tmp_path / "out" / "tiny-fp8-fp8-dynamic" / "quantkit.json").read_text())["created"]

    r = run_cli("quantize", str(recipe))  # a re-run keeps what is up to date
    assert r.returncode == 0 and "tiny-fp8-fp8-dynamic: up to date (inputs unchanged), kept" in r.stderr, r.stderr
    assert json.loads((tmp_path / "out" / "tiny-fp8-fp8-dynamic" / "quantkit.json").read_text())["created"] == first

    time.sleep(1.1)
    r = run_cli("quantize", str(recipe), "--force", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["name"] == "tiny-fp8-fp8-dynamic" and rows[0]["compression_ratio"] > 1
    assert json.loads((tmp_path / "out" / "tiny-fp8-fp8-dynamic" / "quantkit.json").read_text())["created"] != first

    r = run_cli("inspect", str(tmp_path / "out" / "tiny-fp8-fp8-dynamic"))
    assert r.returncode == 0 and "files match" in r.stdout


def test_cli_calibrated_methods_and_progress(tiny_model, write_recipe, tmp_path):
    recipe = write_recipe(tiny_model, METHOD_OUTPUTS["gptq"][0] + METHOD_OUTPUTS["int8"][0])
    r = run_cli("quantize", str(recipe), "--json")
    assert r.returncode == 0, r.stderr
    assert [row["method"] for row in json.loads(r.stdout)] == ["gptq", "int8"]
    for step in ("tokenizing calibration set", "calibrating layers", "saving compressed-tensors checkpoint"):
        assert step in r.stderr


def test_cli_bad_recipe_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\noutputs:\n  - {method: gptq, scheme: W3A16}\n")
    r = run_cli("quantize", str(bad))
    assert r.returncode == 2
    assert "outputs[0].scheme (line 4)" in r.stderr and "'W4A16_ASYM'" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_recipes_validate_and_schema(tiny_model, write_recipe):
    recipe = write_recipe(tiny_model, METHOD_OUTPUTS["gptq"][0] + METHOD_OUTPUTS["fp8"][0])
    r = run_cli("recipes", "validate", str(recipe))
    assert r.returncode == 0, r.stderr
    assert "well-formed" in r.stdout and "int4 asym per-group 64" in r.stdout and "no calibration" in r.stdout
    r = run_cli("recipes", "schema")
    assert json.loads(r.stdout)["title"] == "Recipe"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_killed_run_leaves_no_artifact(sig, tiny_model, tmp_path):
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    # enough calibration work that the run is still going when we kill it
    recipe.write_text(
        tiny_recipe_text(
            tiny_model, out, "  - {method: awq, name: victim, group_size: 64, n_grid: 50}\n", num_samples=64, seq_len=256
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and any(p.name.startswith(".") for p in out.iterdir())):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    assert out.exists(), "the run never created its staging folder"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig)
    if sig != signal.SIGKILL:
        err = proc.stderr.read()
        assert f"interrupted ({signal.Signals(sig).name}); no partial artifact was left behind" in err and "Traceback" not in err
    assert not (out / "victim").exists()
    leftovers = [p.name for p in out.iterdir()]
    if sig == signal.SIGKILL:
        # nothing can clean up after SIGKILL; the hidden staging folder is removed by the next run
        assert all(n.startswith(".victim.partial-") for n in leftovers)
        quantkit.quantize(quantkit.parse_recipe(recipe.read_text(), overrides=["outputs.0={method: rtn, name: victim}"]))
        assert [p.name for p in out.iterdir()] == ["victim"]
    else:
        assert leftovers == []


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.5])
def test_sigterm_at_any_point_of_start_up_exits_143_with_one_line(delay, tmp_path):
    """From the first instruction of the CLI on, SIGTERM ends with exit 143 and one line, never a traceback
    or a bare death by signal (−15), whether it lands during imports or in the command."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: a\nmodel: smollm2-135m\noutputs: [{method: fp8}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe), "-o", str(tmp_path / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 143, (proc.returncode, err)
    assert "error: interrupted (SIGTERM)" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any(p.name.startswith("smollm2") for p in (tmp_path / "out").iterdir())
