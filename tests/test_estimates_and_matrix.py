"""Artifact sizes estimated from config.json alone (quantkit.estimates) against real artifacts; the disk
preflight refusing on that estimate; a data-free output made once per model in a matrix of calibration
sets; `--only` taking what quantize and plan print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from quantkit.errors import ArtifactError, QuantkitError, RecipeError
from quantkit.estimates import artifact_bytes, shape_from_config
from quantkit.recipe_loader import load_recipe, parse_recipe

pytestmark = pytest.mark.integration

# one output per method family and per kind of scale: per channel (rtn W8A16 on 128-wide rows, int8,
# fp8) and per group of 64 (gptq)
METHOD_OUTPUTS = (
    "  - {name: rtn-w8a16, method: rtn, scheme: W8A16}\n"
    "  - {name: gptq-w4a16-g64, method: gptq, scheme: W4A16, group_size: 64}\n"
    "  - {name: fp8-dynamic, method: fp8, scheme: FP8_DYNAMIC}\n"
    "  - {name: int8-w8a8, method: int8, scheme: W8A8}\n"
)


@pytest.fixture(scope="module")
def made(tiny_model, tmp_path_factory):
    """The tiny Llama quantized by every method (small calibration): the recipe and its artifacts."""
    from conftest import tiny_recipe_text

    from quantkit.quantize import quantize

    tmp = tmp_path_factory.mktemp("sizes")
    path = tmp / "r.yaml"
    path.write_text(tiny_recipe_text(tiny_model, tmp / "out", METHOD_OUTPUTS, num_samples=4, seq_len=32))
    recipe = load_recipe(path, [])
    return recipe, {a.name: a for a in quantize(recipe)}


def test_the_plan_and_the_preflight_estimate_each_artifact_within_15_percent(made, tiny_model):
    from quantkit.matrix import describe_plan
    from quantkit.preflight import estimated_bytes
    from quantkit.sources.models import resolve_model

    recipe, artifacts = made
    planned = {row["output"]: row["disk_bytes"] for row in describe_plan(recipe)}
    model = resolve_model(recipe.model)
    for out in recipe.outputs:
        real = artifacts[out.name].manifest.size_bytes
        assert abs(planned[out.name] / real - 1) < 0.15, (out.name, planned[out.name], real)
        assert estimated_bytes(out, model, recipe.model.dtype) == (planned[out.name], "config.json and the schemes")


@pytest.mark.unit
def test_the_estimate_follows_the_load_dtype_of_the_unquantized_tensors(tiny_model):
    """Embeddings, the ignored lm_head, norms and scales are written in model.dtype: bfloat16 halves them."""
    config = json.loads((tiny_model / "config.json").read_text())
    shape = shape_from_config(config)
    out = parse_recipe("name: t\nmodel: x\noutputs: [{method: fp8}]\n").outputs[0]
    float_part = artifact_bytes(shape, out, "float32") - artifact_bytes(shape, out, "bfloat16")
    untargeted = 2 * shape.vocab * shape.hidden + shape.norm_params  # embed_tokens and lm_head (untied), norms
    scales = sum(lin.out_features for lin in shape.linears if lin.name != "lm_head")  # FP8_DYNAMIC: one per channel
    assert float_part == 2 * (untargeted + scales)


# README.md's sample run of recipes/smollm2-135m.yaml (`quantkit quantize`, the size column)
SMOLLM2_CONFIG = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}
README_SIZES = {"smollm2-135m-awq-w4a16": 177.6e6, "smollm2-135m-gptq-w4a16": 177.6e6, "smollm2-135m-int8-w8a8": 223.8e6,
                "smollm2-135m-fp8-dynamic": 223.8e6, "smollm2-135m-gguf": 592.3e6}
README_GGUF_RATIOS = (3.72, 5.92)  # float32 weights (538,090,408 bytes) / each .gguf file, smallest and largest


def test_the_shipped_recipes_plan_matches_the_readmes_smollm2_sizes(tmp_path):
    """`quantkit plan` on a folder holding only SmolLM2's config.json: every output within 3% of its real size."""
    from quantkit.estimates import gguf_file_bytes

    (tmp_path / "smollm2").mkdir()
    (tmp_path / "smollm2" / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    recipe = REPO / "recipes" / "smollm2-135m.yaml"
    r = run_cli("plan", str(recipe), "--set", f"model.source={tmp_path / 'smollm2'}", "--json")
    assert r.returncode == 0, r.stderr
    planned = {row["output"]: row["disk_bytes"] for row in json.loads(r.stdout)}
    for name, real in README_SIZES.items():
        assert abs(planned[name] / real - 1) < 0.03, (name, planned[name], real)
    recipe = load_recipe(recipe, [])
    shape = shape_from_config(SMOLLM2_CONFIG)
    gguf = next(o for o in recipe.outputs if o.method == "gguf")
    ratios = [538_090_408 / gguf_file_bytes(shape, gguf, t) for t in gguf.types]
    assert round(max(ratios), 1) == round(README_GGUF_RATIOS[1], 1) and round(min(ratios), 1) == round(README_GGUF_RATIOS[0], 1)


def test_a_disk_that_cannot_hold_the_artifacts_is_refused_on_the_estimate(made, tmp_path, monkeypatch):
    """Free space at 80% of what the artifacts really take: refused before any work, naming the estimate."""
    import shutil
    from collections import namedtuple

    from quantkit.preflight import check_free_space
    from quantkit.sources.models import resolve_model

    recipe, artifacts = made
    real = sum(a.manifest.size_bytes for a in artifacts.values())
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * real, 0, int(0.8 * real)))
    jobs = [(o, tmp_path / "new" / o.name) for o in recipe.outputs]
    with pytest.raises(QuantkitError, match=r"the artifacts need about 0\.00 GB \(estimated from config.json and the schemes\)"):
        check_free_space(jobs, resolve_model(recipe.model), recipe.model.dtype, tmp_path / "new")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 * real, 0, int(1.2 * real)))
    check_free_space(jobs, resolve_model(recipe.model), recipe.model.dtype, tmp_path / "new")


# ------------------------------------------------------------------ a matrix of calibration sets

def matrix_recipe(tmp_path: Path, model: Path, outputs: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(f"name: mx\nmodels: [{{source: {model}, name: tiny}}]\noutput_dir: {tmp_path / 'out'}\n"
                    "calibrations: [{source: 'builtin:prose', num_samples: 4, seq_len: 32},"
                    " {source: 'builtin:code', num_samples: 4, seq_len: 32}]\n" + "outputs:\n" + outputs)
    return path


@pytest.mark.unit
def test_outputs_that_need_no_calibration_are_one_job_per_model():
    from quantkit.jobs import plan as jobs

    r = parse_recipe("name: mx\nmodels: [a, b]\ncalibrations: [{source: 'builtin:prose'}, {source: 'builtin:code'}]\n"
                     "outputs:\n  - {method: fp8, name: f8}\n  - {method: rtn, name: r8, scheme: W8A16}\n"
                     "  - {method: gguf, name: plain, types: [Q8_0], imatrix: false}\n"
                     "  - {method: fp8, name: f8s, scheme: FP8}\n  - {method: gguf, name: imx, types: [Q8_0]}\n")
    ids = [j.id for j in jobs(r, "/o")]
    # FP8_DYNAMIC, RTN and GGUF without an importance matrix are data-free (their engines say so): once per model;
    # static FP8 and an imatrix GGUF observe the calibration set: once per set
    assert ids == ["a/f8", "a/r8", "a/plain", "a/prose/f8s", "a/prose/imx", "a/code/f8s", "a/code/imx",
                   "b/f8", "b/r8", "b/plain", "b/prose/f8s", "b/prose/imx", "b/code/f8s", "b/code/imx"]
    # with `calibrations` and one `model`, they go straight into the output root
    one = parse_recipe("name: mx\nmodel: a\ncalibrations: [{source: 'builtin:prose'}, {source: 'builtin:code'}]\n"
                       "outputs:\n  - {method: fp8, name: f8}\n  - {method: gptq, name: g}\n")
    assert [str(j.dest) for j in jobs(one, "/o")] == ["/o/f8", "/o/prose/g", "/o/code/g"]


@pytest.mark.unit
def test_a_data_free_output_named_like_a_calibration_set_is_refused():
    clash = r"outputs\[0\] 'code' needs no calibration data, so its artifact is written once per model.*calibrations\[1\]"
    with pytest.raises(RecipeError, match=clash):
        parse_recipe("name: mx\nmodels: [a]\ncalibrations: [{source: 'builtin:prose'}, {source: 'builtin:code'}]\n"
                     "outputs:\n  - {method: fp8, name: code}\n")
    # a calibrated output of that name lives inside each set's folder: no clash
    parse_recipe("name: mx\nmodels: [a]\ncalibrations: [{source: 'builtin:prose'}, {source: 'builtin:code'}]\n"
                 "outputs:\n  - {method: gptq, name: code}\n")


def test_a_matrix_makes_the_fp8_artifact_once_and_status_resume_and_validate_find_it(tiny_model, tmp_path):
    from quantkit.quantize import quantize
    from quantkit.resume import status
    from quantkit.validate import validate_run

    path = matrix_recipe(tmp_path, tiny_model, "  - {method: fp8, name: f8}\n"
                                               "  - {method: rtn, name: r4, scheme: W4A16, group_size: 64}\n"
                                               "  - {method: gptq, name: g4, scheme: W4A16, group_size: 64}\n")
    recipe = load_recipe(path, [])
    out = tmp_path / "out"
    made = quantize(recipe)
    assert sorted(str(a.path.relative_to(out)) for a in made) == ["tiny/code/g4", "tiny/f8", "tiny/prose/g4", "tiny/r4"]
    assert not (out / "tiny" / "prose" / "f8").exists() and not (out / "tiny" / "code" / "f8").exists()
    assert made[0].manifest.calibration is None  # made from no calibration set
    rows = status(recipe)
    assert {r["output"]: r["state"] for r in rows} == {"tiny/f8": "up to date", "tiny/r4": "up to date",
                                                       "tiny/prose/g4": "up to date", "tiny/code/g4": "up to date"}
    again = quantize(recipe)  # a resume keeps all four
    assert [a.manifest.created for a in again] == [a.manifest.created for a in made]
    # validate --recipe looks where quantize wrote: an empty folder lacks exactly those four
    with pytest.raises(ArtifactError) as e:
        validate_run(tmp_path / "empty", recipe=path)
    missing = str(e.value).rsplit(": ", 1)[1].split(", ")
    assert sorted(missing) == sorted(str(tmp_path / "empty" / p) for p in ("tiny/f8", "tiny/r4", "tiny/prose/g4", "tiny/code/g4"))


# ------------------------------------------------------------------ --only


def test_only_takes_the_artifact_name_quantize_prints_as_well_as_the_job_id(tmp_path):
    from quantkit.jobs import plan as jobs

    r = parse_recipe("name: mx\nmodels: [a, b]\noutputs:\n  - {method: fp8}\n  - {method: rtn, name: r8, scheme: W8A16}\n")
    everything = jobs(r, "/o")
    assert [j.output.name for j in everything] == ["mx-a-fp8-fp8-dynamic", "r8", "mx-b-fp8-fp8-dynamic", "r8"]
    assert [j.id for j in jobs(r, "/o", only=["mx-b-fp8-fp8-dynamic"])] == ["b/mx-b-fp8-fp8-dynamic"]  # the artifact name
    assert [j.id for j in jobs(r, "/o", only=["a/mx-a-fp8-fp8-dynamic"])] == ["a/mx-a-fp8-fp8-dynamic"]  # the job id
    assert [j.id for j in jobs(r, "/o", only=["mx-fp8-fp8-dynamic"])] == ["a/mx-a-fp8-fp8-dynamic", "b/mx-b-fp8-fp8-dynamic"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: mx\nmodels: [a, b]\noutputs:\n  - {method: fp8}\n")
    r = run_cli("plan", str(recipe), "--only", "mx-b-fp8-fp8-dynamic", "--json")
    assert r.returncode == 0 and [row["job"] for row in json.loads(r.stdout)] == ["b/mx-b-fp8-fp8-dynamic"], r.stderr


def test_an_unknown_only_lists_the_outputs_and_a_few_job_ids(tmp_path):
    recipe = tmp_path / "r.yaml"
    models = ", ".join(f"org/m{i}" for i in range(20))
    recipe.write_text(f"name: mx\nmodels: [{models}]\noutputs:\n  - {{method: fp8}}\n"
                      "  - {method: rtn, name: r8, scheme: W8A16}\n")
    for command in ("plan", "quantize"):
        r = run_cli(command, str(recipe), "--only", "nope")
        said = " ".join(r.stderr.split())
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "--only nope: not an output, artifact or job of this recipe; outputs: mx-fp8-fp8-dynamic, r8;" in said, said
        assert "jobs (or their last part, the artifact name): m0/mx-m0-fp8-fp8-dynamic, m0/r8," in said
        assert "and 32 more (quantkit plan lists them)" in said  # 40 jobs, 8 named
        assert len(r.stderr.strip().splitlines()) == 1
