"""The source model is checked before any heavy work: every weight the config's architecture needs is
there, with the shape the config implies, in a float dtype and finite; files that would hang a read
(FIFOs, devices, links out of the folder) and configs or matrices of absurd size are refused in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe_text

from quantkit.errors import ModelSourceError, RecipeError
from quantkit.recipe import MAX_JOBS, ModelSpec
from quantkit.recipe_loader import parse_recipe
from quantkit.sources import checkpoint
from quantkit.sources.model_folder import CONFIG_SIZE_LIMITS
from quantkit.sources.models import resolve_model
from quantkit.testing import edit_weights

pytestmark = pytest.mark.unit

OUTPUTS = "  - {method: rtn, scheme: W8A16}\n"
LAYER = "model.layers.1.mlp.up_proj.weight"


def copy_model(tiny_model: Path, where: Path) -> Path:
    shutil.copytree(tiny_model, where)
    return where


def set_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def quantize_refuses(model: Path, tmp_path: Path, message: str, timeout: int = 60) -> None:
    """`quantkit quantize` on `model`: exit 2, one `error:` line naming the problem, nothing written."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(model, tmp_path / "out", OUTPUTS))
    r = run_cli("quantize", str(recipe), timeout=timeout)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and message in said and "Traceback" not in said and said.count("error:") == 1, r.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def _without(name):
    def edit(tensors):
        del tensors[name]
    return edit


def _nan(tensors):
    tensors[LAYER][3, 5] = float("nan")


def _int8(tensors):
    tensors[LAYER] = tensors[LAYER].to(__import__("torch").int8)


def _narrow(tensors):
    tensors[LAYER] = tensors[LAYER][:, :64].contiguous()


def _extra(tensors):
    tensors["model.layers.1.mlp.surprise.weight"] = tensors[LAYER].clone()


BROKEN_WEIGHTS = {  # through the CLI
    "missing": (_without(LAYER),
                f"missing 1 weight(s) LlamaForCausalLM needs (transformers would initialise them at random): {LAYER}"),
    "nan": (_nan, f"1 weight tensor(s) hold NaN or infinite values (a broken checkpoint; quantizing it would give a "
                  f"broken model): {LAYER}"),
    "int8": (_int8, f"1 tensor(s) in I8, not a float dtype (F64/F32/F16/BF16): {LAYER}"),
}
MISMATCHED_WEIGHTS = {  # the same path, in this process
    "untied-head-missing": (_without("lm_head.weight"), "missing 1 weight(s) LlamaForCausalLM needs (transformers would "
                                                        "initialise them at random): lm_head.weight"),
    "wrong-shape": (_narrow, f"1 tensor(s) of another shape than config.json implies: {LAYER} [256, 64] "
                             "(config.json implies [256, 128])"),
    "unexpected": (_extra, "1 tensor(s) LlamaForCausalLM has no place for: model.layers.1.mlp.surprise.weight"),
}


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(BROKEN_WEIGHTS))
def test_broken_weights_are_refused_by_name_before_loading(case, tiny_model, tmp_path):
    edit, message = BROKEN_WEIGHTS[case]
    model = copy_model(tiny_model, tmp_path / "model")
    edit_weights(model, edit)
    quantize_refuses(model, tmp_path, message, timeout=240)


@pytest.mark.parametrize("case", list(MISMATCHED_WEIGHTS))
def test_weights_that_do_not_match_the_config_are_refused_by_name(case, tiny_model, tmp_path):
    edit, message = MISMATCHED_WEIGHTS[case]
    model = copy_model(tiny_model, tmp_path / "model")
    edit_weights(model, edit)
    with pytest.raises(ModelSourceError) as refused:
        resolve_model(ModelSpec(source=str(model)))
    assert str(refused.value) == f"{model}: the weights do not match config.json: {message}"


def _fifo(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")


def _dev_zero(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to("/dev/zero")


def _config_fifo(folder: Path) -> None:
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")


def _million_layers(folder: Path) -> None:
    set_config(folder, num_hidden_layers=1_000_000)


HANGS = {
    "weights-fifo": (_fifo, "model.safetensors is a FIFO (named pipe); a model file must be a regular file"),
    "weights-dev-zero": (_dev_zero, "model.safetensors is a device (a link to /dev/zero); a model file must be a regular file"),
    "config-fifo": (_config_fifo, "config.json is a FIFO (named pipe)"),
    "million-layers": (_million_layers, "num_hidden_layers is 1000000; quantkit accepts 1 to 1,024"),
}


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(HANGS))
def test_what_would_hang_is_refused_in_one_line(case, tiny_model, tmp_path):
    plant, message = HANGS[case]
    model = copy_model(tiny_model, tmp_path / "model")
    plant(model)
    quantize_refuses(model, tmp_path, message, timeout=100)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_million_job_matrix_is_refused_before_it_expands(tmp_path):
    models_list = ", ".join(f"x/m{i}" for i in range(1000))
    sets = ", ".join(f"{{source: 'builtin:mixed', name: c{i}}}" for i in range(1000))
    recipe = tmp_path / "big.yaml"
    recipe.write_text(f"name: big\nmodels: [{models_list}]\ncalibrations: [{sets}]\noutputs:\n{OUTPUTS}")
    r = run_cli("quantize", str(recipe), "-o", str(tmp_path / "out"), timeout=100)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and f"1,000,000 jobs; a recipe may have at most {MAX_JOBS:,}" in said, r.stderr[-2000:]
    assert "Traceback" not in said and not (tmp_path / "out").exists()


def test_the_job_bound_counts_outputs_and_accepts_the_limit():
    def text(n_models: int, n_outputs: int) -> str:
        return (f"name: m\nmodels: [{', '.join(f'x/m{i}' for i in range(n_models))}]\noutputs:\n"
                + "".join(f"  - {{method: rtn, scheme: W8A16, name: o{i}}}\n" for i in range(n_outputs)))

    assert len(parse_recipe(text(100, 100)).outputs) == 100  # exactly MAX_JOBS (10,000): accepted, not expanded
    with pytest.raises(RecipeError, match="100 models × 1 calibration sets × 101 outputs is 10,100 jobs"):
        parse_recipe(text(100, 101))


def test_a_link_out_of_the_folder_is_refused_but_a_hub_cache_snapshot_links_into_its_blobs(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "model")
    outside = tmp_path / "elsewhere.safetensors"
    (model / "model.safetensors").rename(outside)
    (model / "model.safetensors").symlink_to(outside)
    with pytest.raises(ModelSourceError, match="model.safetensors is a link to .*elsewhere.safetensors, outside the model"):
        resolve_model(ModelSpec(source=str(model)))
    (model / "model.safetensors").unlink()
    (model / "tokenizer.json").unlink()
    (model / "tokenizer.json").symlink_to(model / "gone.json")
    with pytest.raises(ModelSourceError, match="tokenizer.json is a link to .*gone.json.*which does not resolve"):
        resolve_model(ModelSpec(source=str(model)))

    # the Hugging Face cache layout: snapshots/REV/FILE -> ../../blobs/HASH
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot, blobs = repo / "snapshots" / ("0" * 40), repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in tiny_model.iterdir():
        shutil.copy(f, blobs / f.name)
        (snapshot / f.name).symlink_to(Path("../../blobs") / f.name)
    assert resolve_model(ModelSpec(source=str(snapshot))).path == snapshot.resolve()


def _moe_and_tied_checkpoints(root: Path) -> dict[str, Path]:
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=256)
    kinds = {
        "llama-tied": ("llama", dict(tie_word_embeddings=True)),
        "mixtral": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),  # experts fused on load
        "qwen3_moe": ("qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
        "gpt2": ("gpt2", dict(n_embd=64, n_layer=2, n_head=4)),
    }
    made = {}
    for name, (model_type, extra) in kinds.items():
        config = AutoConfig.for_model(model_type, **{**common, **extra})
        AutoModelForCausalLM.from_config(config).save_pretrained(root / name, max_shard_size="200KB")
        made[name] = root / name
    return made


def test_sound_checkpoints_of_other_layouts_pass(tmp_path):
    """No false refusal: tied embeddings, fused MoE experts (renamed by transformers on load), GPT-2 names,
    sharded files with an index."""
    for name, folder in _moe_and_tied_checkpoints(tmp_path).items():
        assert (folder / "model.safetensors.index.json").is_file(), name
        assert resolve_model(ModelSpec(source=str(folder))).kind == "local", name


def test_nonfinite_values_are_found_in_any_chunk_and_a_clean_verdict_is_not_reused_for_a_changed_file(
        tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(checkpoint, "FINITE_CHUNK_BYTES", 1000)  # the 128 KB layer is read in 132 pieces
    model = copy_model(tiny_model, tmp_path / "model")
    resolve_model(ModelSpec(source=str(model)))  # clean: its verdict is cached
    assert list((tmp_path / "cache" / "fingerprints" / "finite").glob("*.json"))

    def last_row_inf(tensors):
        tensors[LAYER][-1, -1] = float("-inf")

    edit_weights(model, last_row_inf)
    with pytest.raises(ModelSourceError, match=f"1 weight tensor\\(s\\) hold NaN or infinite values.*{LAYER}"):
        resolve_model(ModelSpec(source=str(model)))


def test_a_safetensors_file_transformers_would_not_load_is_named(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "model")
    (model / "model.safetensors").rename(model / "weights.safetensors")
    with pytest.raises(ModelSourceError, match="has weights.safetensors but neither model.safetensors nor model.safetensors"):
        resolve_model(ModelSpec(source=str(model)))
    (model / "weights.safetensors").rename(model / "model.safetensors")
    with open(model / "model.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(model / "model.safetensors") // 2)
    with pytest.raises(ModelSourceError, match="model.safetensors is not a readable safetensors file"):
        resolve_model(ModelSpec(source=str(model)))


@pytest.mark.parametrize("field, value", [("hidden_size", 10**6), ("vocab_size", 2**23), ("num_attention_heads", 0),
                                          ("num_hidden_layers", 1e6), ("max_position_embeddings", 2**30)])
def test_config_sizes_beyond_the_documented_limits_are_refused(field, value, tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "model")
    set_config(model, **{field: value})
    low, high = CONFIG_SIZE_LIMITS[field]
    with pytest.raises(ModelSourceError, match=f"{field} is {value}; quantkit accepts {low} to {high:,}"):
        resolve_model(ModelSpec(source=str(model)))


def test_a_nested_text_config_is_bounded_too(tiny_model, tmp_path):
    model = copy_model(tiny_model, tmp_path / "model")
    set_config(model, text_config={"num_hidden_layers": 5000})
    with pytest.raises(ModelSourceError, match="text_config.num_hidden_layers is 5000"):
        resolve_model(ModelSpec(source=str(model)))


def test_an_architecture_auto_causal_lm_cannot_build_keeps_the_finiteness_check(tiny_model, tmp_path):
    """A vision-language config (no AutoModelForCausalLM class: a GGUF output reads it with llama.cpp's converter)
    is not refused for its layout, but its NaN is."""
    model = copy_model(tiny_model, tmp_path / "model")
    set_config(model, model_type="qwen2_5_vl")
    assert resolve_model(ModelSpec(source=str(model))).kind == "local"
    edit_weights(model, _nan)
    with pytest.raises(ModelSourceError, match=f"hold NaN or infinite values.*{LAYER}"):
        resolve_model(ModelSpec(source=str(model)))
