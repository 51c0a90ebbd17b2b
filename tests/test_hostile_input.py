"""Bad input is refused with one clear error, never a traceback, a hang or a silent acceptance.

Property-based (hypothesis) over the four readers of user input: the recipe loader, `--set`, the
calibration file readers and the manifest loader; over 10,000 generated cases per run (see COUNTS).
pytest-timeout bounds each test, so a hang fails the run instead of stalling it."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from hostile_counts import counted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantkit.artifact import Artifact
from quantkit.errors import ArtifactError, CalibrationError, RecipeError
from quantkit.recipe import Recipe
from quantkit.recipe_loader import load_recipe, parse_recipe
from quantkit.sources.calibration import file_texts

pytestmark = pytest.mark.unit

COUNTS = {"recipe_text": 2500, "recipe_tree": 3000, "override": 1500, "recipe_bytes": 1000, "manifest": 1500,
          "calibration": 1000}
VALID = {"name": "fuzz", "model": "smollm2-135m", "calibration": {"num_samples": 8, "seq_len": 64},
         "outputs": [{"method": "gptq", "group_size": 64, "gates": {"kld_mean_max": 0.1}},
                     {"method": "gguf", "types": ["Q4_K_M"]}]}
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40), st.sampled_from(["W4A16", "Q4_K_M", "re:(", "re:.*", "channel", "gptq", "fp8", "\x00", "🙂" * 5, ""]),
)
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids,
                                                                                                    max_size=4)), max_leaves=12)


def accepted_is_sane(recipe: Recipe) -> None:
    """What the loader accepted is what the schema promises: no boolean passed as a number, thresholds
    finite and not negative, names that fit a folder."""
    for out in recipe.outputs:
        assert len(out.name) <= 200
        for key, v in out.gates.items():
            assert not isinstance(v, bool) and math.isfinite(v) and v >= 0, (key, v)
        for field in ("bits", "group_size", "n_grid", "block_size"):
            assert not isinstance(getattr(out, field, None), bool), field
    assert not isinstance(recipe.calibration.num_samples, bool) and not isinstance(recipe.calibration.seq_len, bool)


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["recipe_text"])
@given(st.one_of(st.text(max_size=300), st.text(alphabet=string.printable + "&*!|>{}[]-:#'\"\t\x00\x07\x1b", max_size=300)))
def test_any_recipe_text_is_a_recipe_or_one_recipe_error(text):
    counted("recipe_text")
    try:
        accepted_is_sane(parse_recipe(text))
    except RecipeError as e:
        assert e.problems and all(len(p) < 1200 for p in e.problems) and len(e.problems) <= 21


def _mutate(data, path, value):
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


PATHS = [("name",), ("model",), ("output_dir",), ("calibration", "num_samples"), ("calibration", "seq_len"),
         ("calibration", "shuffle_seed"), ("calibration", "chat_template"), ("outputs", 0, "group_size"),
         ("outputs", 0, "bits"), ("outputs", 0, "method"), ("outputs", 0, "scheme"), ("outputs", 0, "targets"),
         ("outputs", 0, "gates"), ("outputs", 0, "gates", "kld_mean_max"), ("outputs", 0, "dampening_frac"),
         ("outputs", 0, "name"), ("outputs", 1, "types"), ("outputs", 1, "imatrix"), ("outputs",), ("outputs", 0, "extra")]


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["recipe_tree"])
@given(st.lists(st.tuples(st.sampled_from(PATHS), values), min_size=1, max_size=3))
def test_any_value_in_any_field_is_accepted_sanely_or_refused(edits):
    counted("recipe_tree")
    data = json.loads(json.dumps(VALID))
    for path, value in edits:
        try:
            data = _mutate(data, path, value)
        except (KeyError, IndexError, TypeError):
            pass
    text = yaml.safe_dump(data, allow_unicode=True)
    try:
        accepted_is_sane(parse_recipe(text))
    except RecipeError as e:
        assert e.problems and all(len(p) < 1200 for p in e.problems)


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["override"])
@given(st.lists(st.text(max_size=60), min_size=1, max_size=3))
def test_any_set_override_is_applied_or_refused(overrides):
    counted("override")
    try:
        accepted_is_sane(parse_recipe(yaml.safe_dump(VALID), overrides=overrides))
    except RecipeError as e:
        assert e.problems


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["recipe_bytes"])
@given(st.binary(max_size=400))
def test_any_recipe_file_bytes_are_a_recipe_or_one_recipe_error(tmp_path_factory, data):
    counted("recipe_bytes")
    path = tmp_path_factory.getbasetemp() / "fuzz-recipe.yaml"
    path.write_bytes(data)
    try:
        accepted_is_sane(load_recipe(path))
    except RecipeError as e:
        assert e.problems


MANIFEST_KEYS = ["name", "created", "format", "scheme", "output", "base_model", "files", "size_bytes", "manifest_version"]


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["manifest"])
@given(st.one_of(values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200),
                 st.dictionaries(st.sampled_from(MANIFEST_KEYS), values).map(lambda d: json.dumps(d).encode())))
def test_any_manifest_bytes_load_or_give_one_artifact_error(tmp_path_factory, data):
    counted("manifest")
    folder = tmp_path_factory.getbasetemp() / "fuzz-artifact"
    folder.mkdir(exist_ok=True)
    (folder / "quantkit.json").write_bytes(data)
    try:
        Artifact.load(folder)
    except ArtifactError as e:
        assert str(e)


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=COUNTS["calibration"])
@given(st.sampled_from([".jsonl", ".json", ".txt", ".parquet"]),
       st.one_of(st.binary(max_size=300), values.map(lambda v: json.dumps(v).encode()),
                 st.lists(values, max_size=5).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())))
def test_any_calibration_file_gives_texts_or_one_calibration_error(tmp_path_factory, suffix, data):
    counted("calibration")
    path = tmp_path_factory.getbasetemp() / f"fuzz-calibration{suffix}"
    path.write_bytes(data)
    try:
        texts = file_texts(path, "text")
    except CalibrationError as e:
        assert str(e)
    else:
        assert all(isinstance(t, str) for t in texts)  # never None, a number or a row as text


def test_generated_case_count_is_at_least_ten_thousand():
    assert sum(COUNTS.values()) >= 10_000


# ------------------------------------------------------------------ the CLI: one `error:` line, exit 2


@pytest.mark.integration
@pytest.mark.parametrize("case", ["non-utf8", "control", "deep", "set", "dup", "bool", "laughs"])
def test_bad_recipes_exit_2_with_one_error_line(case, tmp_path):
    body = {"non-utf8": b"name: caf\xe9\n", "control": b"name: a\x07\n", "deep": b"name: " + b"[" * 600 + b"]" * 600,
            "set": b"name: a\nmodel: m\noutputs: [{method: fp8}]\n",
            "dup": b"name: a\nmodel: m\noutputs: [{method: fp8}]\noutputs: [{method: rtn}]\n",
            "bool": b"name: a\nmodel: m\ncalibration: {num_samples: true}\noutputs: [{method: fp8}]\n",
            "laughs": b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nname: a\nmodel: m\n"
                      b"outputs: [{method: gguf, types: *b}]\n"}[case]
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(body)
    args = ["recipes", "validate", str(recipe)] + (["--set", "name=["] if case == "set" else [])
    r = run_cli(*args, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("error:") == 1 and len(r.stderr) < 2000, r.stderr


@pytest.mark.integration
def test_cli_inputs_out_of_range_exit_2(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"name: \xff\n")
    (tmp_path / "good.yaml").write_text("name: a\nmodel: m\noutputs: [{method: fp8}]\n")
    cases = [
        (["recipes", "schema", "--output", str(tmp_path / "missing" / "x.json")], "cannot write"),
        (["validate", str(tmp_path), "--max-tokens", "-5"], "--max-tokens"),
        (["validate", str(tmp_path), "--stride", "0"], "--stride"),
        (["validate", str(tmp_path), "--gate", "kld_mean_max=nan"], "finite"),
        (["validate", str(tmp_path), "--gate", "top1_agreement_min=2"], "between 0 and 1"),
    ]
    for args, message in cases:
        r = run_cli(*args, timeout=60)
        said = " ".join(r.stderr.split())
        assert r.returncode == 2 and message in said and "Traceback" not in said, (args, r.stderr)
    r = run_cli("recipes", "list", "--folder", str(tmp_path), timeout=60)  # one unreadable recipe does not end the listing
    assert "Traceback" not in r.stderr and "good.yaml" in r.stdout + r.stderr and "bad.yaml" in r.stdout + r.stderr, r.stderr


@pytest.mark.integration
def test_recipes_validate_refuses_a_missing_local_model_and_calibration_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: a\nmodel: {tmp_path / 'no-model'}\ncalibration: {{source: {tmp_path / 'no.jsonl'}}}\n"
                      "outputs: [{method: gptq}]\n")
    r = run_cli("recipes", "validate", str(recipe), timeout=60)
    assert r.returncode == 2 and "no-model" in r.stderr and "no.jsonl" in r.stderr, r.stderr
    assert Path(recipe).is_file()


@pytest.mark.integration
def test_broken_model_sources_are_one_line_errors(tiny_model, tmp_path):
    import shutil

    cases = {}
    bad_json = tmp_path / "bad-json"
    shutil.copytree(tiny_model, bad_json)
    (bad_json / "config.json").write_text("{bad json")
    cases[str(bad_json)] = "config.json is not valid JSON"
    unknown = tmp_path / "unknown-type"
    shutil.copytree(tiny_model, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    cases[str(unknown)] = "model_type 'nosuchmodel' is not one transformers"
    random_gguf = tmp_path / "random.gguf"
    random_gguf.write_bytes(bytes(range(256)) * 8)
    cases[str(random_gguf)] = "not a GGUF model quantkit can read"
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x05" * 40)
    cases[str(truncated)] = "not a GGUF model quantkit can read"
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "a").symlink_to(loop / "b")
    (loop / "b").symlink_to(loop / "a")
    cases[str(loop / "a")] = "does not exist"
    for source, message in cases.items():
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"name: a\nmodel: {source}\noutputs: [{{method: rtn, scheme: W8A16}}]\n")
        r = run_cli("quantize", str(recipe), "-o", str(tmp_path / "out"), timeout=120)
        said = " ".join(r.stderr.split())
        assert r.returncode == 2 and message in said and "Traceback" not in said and said.count("error:") == 1, (source, r.stderr)
        assert not (tmp_path / "out").exists()
