from pathlib import Path

import pytest
from conftest import REPO

from quantkit.errors import RecipeError
from quantkit.recipe import recipe_json_schema_text
from quantkit.recipe_loader import load_recipe, parse_recipe

pytestmark = pytest.mark.unit

GOOD = """
name: demo
model: smollm2-135m
outputs:
  - method: gptq
    group_size: 64
  - method: fp8
"""


def problems(text: str, overrides=()) -> list[str]:
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, overrides=overrides)
    return e.value.problems


def test_good_recipe_defaults_and_names():
    r = parse_recipe(GOOD)
    assert r.model.source == "smollm2-135m" and r.model.trust_remote_code is False and r.model.allow_pickle is False
    assert r.calibration.num_samples == 64 and r.calibration.seq_len == 256
    assert [o.name for o in r.outputs] == ["demo-gptq-w4a16-g64", "demo-fp8-fp8-dynamic"]
    assert r.outputs[0].scheme == "W4A16" and r.outputs[0].group_size == 64


def test_typo_names_field_line_and_suggestion():
    [msg] = problems(GOOD.replace("group_size: 64", "group_szie: 64"))
    assert msg.startswith("outputs[0].group_szie (line 6)")
    assert "Did you mean 'group_size'?" in msg and "Allowed fields:" in msg


def test_bad_scheme_lists_allowed_values():
    [msg] = problems(GOOD.replace("method: fp8", "method: fp8\n    scheme: FP4"))
    assert "outputs[1].scheme (line 8)" in msg and "'FP8_DYNAMIC'" in msg and "'FP8_BLOCK'" in msg


def test_unknown_and_missing_method():
    msgs = problems(GOOD.replace("method: fp8", "method: fp9").replace("- method: gptq", "- scheme: W4A16"))
    assert any("outputs[1]" in m and "unknown method 'fp9'" in m and "'awq'" in m for m in msgs)
    assert any("outputs[0]" in m and "missing `method`" in m for m in msgs)


def test_one_message_per_problem():
    msgs = problems(
        "name: demo\nmodel: m\ncalibration: {num_samples: 0, seq_len: 4}\n"
        "outputs:\n  - {method: gptq, group_size: -1}\n  - {method: fp8, group_size: 64}\n"
    )
    joined = "\n".join(msgs)
    assert len(msgs) == 4, joined
    assert "calibration.num_samples" in joined and "calibration.seq_len" in joined
    assert "outputs[0].group_size" in joined and "outputs[1].group_size" in joined


def test_missing_required_fields():
    msgs = problems("name: demo\n")
    assert any(m.startswith("model") and "required" in m for m in msgs)
    assert any(m.startswith("outputs") and "required" in m for m in msgs)


def test_yaml_syntax_error_has_line_and_column():
    [msg] = problems("name: demo\nmodel: [smollm2\noutputs: []\n")
    assert msg.startswith("YAML syntax error at line 3, column")


def test_duplicate_output_names():
    msgs = problems(GOOD.replace("- method: fp8", "- method: gptq\n    group_size: 64"))
    assert any("both write 'demo-gptq-w4a16-g64'" in m for m in msgs)


def test_overrides_are_typed_and_checked():
    r = parse_recipe(GOOD, overrides=["calibration.num_samples=16", "outputs.1.scheme=FP8", "model.trust_remote_code=true"])
    assert r.calibration.num_samples == 16 and r.outputs[1].scheme == "FP8" and r.model.trust_remote_code is True
    assert "KEY=VALUE" in problems(GOOD, overrides=["calibration.num_samples"])[0]
    assert "not an index" in problems(GOOD, overrides=["outputs.5.scheme=W4A16"])[0]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(e.value)


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path):
    r = load_recipe(path)
    assert r.outputs


def test_published_schema_is_current():
    published = (REPO / "docs" / "recipe.schema.json").read_text()
    assert published == recipe_json_schema_text(), "run: quantkit recipes schema --output docs/recipe.schema.json"
