"""User values are printed as written, and recipes are read as written.

Markup: a model path, calibration file, `-o` folder, recipe path, `--domain` name or manifest name holding
rich markup (`[/bold]`, `[red]x[/]`) is printed literally by every command, never parsed (it crashed them
with a MarkupError). YAML: the YAML 1.1 readings that change a value silently (a leading zero is octal,
`1:04` is base 60, a `<<` merge key overrides keys) are refused with one line, in a recipe and in `--set`.
"""

from __future__ import annotations

import io
import json
import shutil
import string
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from quantkit.errors import RecipeError
from quantkit.recipe_loader import MAX_NUMBER_CHARS, load_recipe, parse_recipe
from quantkit.reporters import PlainReporter, RichReporter

pytestmark = pytest.mark.unit

MARK = "[/bold]-[red]x[/]"  # a closing tag with nothing open (MarkupError) and a style that would eat the brackets
LOOSE_GATES = ["--gate", "kld_mean_max=100", "--gate", "ppl_increase_max=100", "--gate", "top1_agreement_min=0"]
SMALL_EVAL = ["--max-tokens", "64", "--context", "32", "--no-serve"]


def _with_mark(base: Path, stem: str, suffix: str = "") -> Path:
    """`base/stem-[/bold]-[red]x[/]suffix`: the `/` of the markup makes it three nested folders, which is fine."""
    p = Path(f"{base}/{stem}-{MARK}{suffix}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _ok(r, *literals: str, code: int = 0) -> None:
    said = r.stdout + r.stderr
    assert r.returncode == code and "Traceback" not in said and "MarkupError" not in said, r.stderr[-3000:]
    for literal in literals:
        assert literal in said, (literal, said[-3000:])


@pytest.fixture(scope="module")
def marked(tiny_model, tmp_path_factory):
    """A recipe whose path, model folder, calibration file and output folder all hold markup, quantized once."""
    d = tmp_path_factory.mktemp("markup")
    model = _with_mark(d, "model")
    shutil.copytree(tiny_model, model)
    cal = _with_mark(d, "cal", ".jsonl")
    cal.write_text("".join(json.dumps({"text": f"calibration text number {i}, a few words long."}) + "\n" for i in range(16)))
    out = _with_mark(d, "out")
    recipe = _with_mark(d, "recipe", ".yaml")
    recipe.write_text(f"name: tiny\nmodel: {json.dumps(str(model))}\n"
                      f"calibration: {{source: {json.dumps(str(cal))}, num_samples: 4, seq_len: 32}}\n"
                      "outputs:\n  - {method: fp8, name: tiny-fp8}\n")
    r = run_cli("quantize", str(recipe), "-o", str(out), "--progress", "plain")
    _ok(r, str(out))  # the table's caption: "written to OUT"
    return {"model": model, "cal": cal, "out": out, "recipe": recipe, "artifact": out / "tiny-fp8", "dir": d}


@pytest.mark.integration
def test_recipes_validate_prints_marked_paths_as_written(marked):
    r = run_cli("recipes", "validate", str(marked["recipe"]), "-o", str(marked["out"]))
    _ok(r, str(marked["recipe"]), str(marked["model"]), str(marked["cal"]), str(marked["out"] / "tiny-fp8"))


@pytest.mark.integration
def test_plan_prints_marked_paths_as_written(marked):
    recipe = _with_mark(marked["dir"], "plan", ".yaml")  # a calibrated output too, so the calibration column names the file
    recipe.write_text(marked["recipe"].read_text().replace("name: tiny-fp8}", "name: tiny-fp8}\n  - {method: gptq}"))
    r = run_cli("plan", str(recipe), "-o", str(marked["out"]))
    _ok(r, str(recipe), str(marked["model"]), str(marked["cal"]))


@pytest.mark.integration
def test_status_prints_marked_paths_as_written(marked):
    r = run_cli("status", str(marked["recipe"]), "-o", str(marked["out"]))
    _ok(r, str(marked["recipe"]), "up to date")
    r = run_cli("status", str(marked["recipe"]), "-o", str(marked["dir"] / f"empty-{MARK}"))
    _ok(r, str(marked["recipe"]), "not made")


@pytest.mark.integration
def test_errors_name_marked_values_as_written(marked, tmp_path):
    missing = _with_mark(tmp_path, "no-model")
    recipe = _with_mark(tmp_path, "r", ".yaml")
    recipe.write_text(f"name: a\nmodel: {json.dumps(str(missing))}\noutputs: [{{method: fp8}}]\n")
    _ok(run_cli("recipes", "validate", str(recipe)), str(missing), str(recipe), code=2)
    _ok(run_cli("validate", str(marked["artifact"]), "--domain", f"{MARK}=nofile.txt"), MARK, code=2)


@pytest.mark.integration
@pytest.mark.parametrize("progress", ["plain", "rich"])
def test_validate_prints_a_marked_domain_name_as_written(marked, progress):
    text = _with_mark(marked["dir"], f"domain-{progress}", ".txt")
    text.write_text("held-out words for scoring the tiny model. " * 40)
    r = run_cli("validate", str(marked["artifact"]), "--domain", f"{MARK}={text}", *SMALL_EVAL, *LOOSE_GATES,
                "--progress", progress)
    _ok(r, f"{MARK} ")  # the domain column of the results table
    assert f"perplexity and KLD on {MARK}" in r.stderr  # the progress lines (bars in rich mode)


@pytest.mark.integration
def test_inspect_and_validate_print_a_marked_manifest_as_written(marked):
    # the base is named relative to the artifact
    _ok(run_cli("inspect", str(marked["artifact"])), str(marked["artifact"]), f"model-{MARK}")
    hostile = marked["dir"] / "hostile"
    if not hostile.exists():
        shutil.copytree(marked["artifact"], hostile)
        mf = hostile / "quantkit.json"
        doc = json.loads(mf.read_text())
        doc["name"] = doc["output"]["name"] = f"name{MARK}"
        doc["description"] = f"description {MARK}"
        if doc.get("inputs", {}).get("output"):  # what a forger does: the digest of the edited output too
            from quantkit.artifact import json_digest

            doc["inputs"]["output"] = json_digest(doc["output"])
        mf.write_text(json.dumps(doc))
    _ok(run_cli("inspect", str(hostile)), f"description {MARK}", f"model-{MARK}")
    _ok(run_cli("validate", str(hostile), *SMALL_EVAL, *LOOSE_GATES, "--domain", "prose=builtin:prose"), f"name{MARK}")


def test_reporters_print_marked_steps_and_messages_as_written():
    buf = io.StringIO()
    with RichReporter(Console(file=buf, force_terminal=False, width=200)) as rep:
        with rep.task(f"loading {MARK}"):
            pass
        rep.log(f"cell 1/1: {MARK}")
        rep.log(f"{MARK} failed", style="red")
        with pytest.raises(RuntimeError), rep.task(f"saving {MARK}"):
            raise RuntimeError
    out = buf.getvalue()
    assert f"loading {MARK}" in out and f"cell 1/1: {MARK}" in out and f"{MARK} failed" in out
    assert f"saving {MARK} (failed)" in out
    plain = io.StringIO()
    rep = PlainReporter(plain, heartbeat=0)
    with rep.task(f"loading {MARK}"):
        rep.log(f"{MARK} failed", style="red")
    assert [line.split(" ", 1)[1] for line in plain.getvalue().splitlines()] == [
        f"start loading {MARK}", f"{MARK} failed", f"done  loading {MARK} (0.0 s)"]


def test_the_matrix_board_prints_marked_values_as_written():
    from quantkit.cli.matrix_view import board_table
    from quantkit.executors import Board

    board = Board.of([f"job{MARK}"])
    state = board.jobs[f"job{MARK}"]
    state.stage, state.host = f"stage{MARK}", f"host{MARK}"
    buf = io.StringIO()
    Console(file=buf, force_terminal=False, width=300).print(board_table(board, f"title{MARK}"))
    for literal in ("job", "stage", "host", "title"):
        assert literal + MARK in buf.getvalue()


# ------------------------------------------------------------------ YAML as written


def _recipe(field_line: str) -> str:
    return f"name: a\nmodel: m\ncalibration:\n  {field_line}\noutputs: [{{method: fp8}}]\n"


def _refusal(text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, overrides=overrides)
    assert len(e.value.problems) == 1, e.value.problems
    problem = e.value.problems[0]
    assert "\n" not in problem
    return problem


@pytest.mark.parametrize("written, read_as, write", [
    ("0256", "174", "256"), ("010", "8", "10"), ("-010", "-8", "-10"), ("08", "'08'", "8"), ("00", "0", "0"),
])
def test_a_leading_zero_is_refused_with_the_decimal_to_write(written, read_as, write):
    problem = _refusal(_recipe(f"seq_len: {written}"))
    assert problem.startswith(f"calibration.seq_len (line 4): {written} has a leading zero"), problem
    assert f"reads as {read_as}" in problem and f"write {write}, or quote it as a string ('{written}')" in problem


@pytest.mark.parametrize("written, read_as", [("1:04", "64"), ("1:00:00", "3600"), ("-2:30", "-150"), ("1:30.5", "90.5")])
def test_a_base_60_number_is_refused(written, read_as):
    problem = _refusal(_recipe(f"num_samples: {written}"))
    assert problem.startswith(f"calibration.num_samples (line 4): {written} is a YAML 1.1 base-60 number"), problem
    assert f"reads as {read_as}" in problem and f"write {read_as}, or quote it as a string ('{written}')" in problem


def test_numbers_in_lists_and_sequences_name_their_index():
    problem = _refusal("name: a\nmodel: m\noutputs:\n  - method: gguf\n    types: [Q8_0, 010]\n")
    assert problem.startswith("outputs[0].types[1] (line 5): 010 has a leading zero"), problem


def test_quoted_and_plain_decimal_numbers_are_read_as_written():
    r = parse_recipe("name: a\nmodel: m\ncalibration: {seq_len: 256, num_samples: 10}\noutputs: [{method: fp8}]\n")
    assert (r.calibration.seq_len, r.calibration.num_samples) == (256, 10)
    r = parse_recipe("name: '0256'\nmodel: '1:04'\noutputs: [{method: fp8}]\n")
    assert (r.name, r.model.source) == ("0256", "1:04")
    assert parse_recipe(_recipe("shuffle_seed: 0")).calibration.shuffle_seed == 0  # 0 alone has no leading zero


def test_merge_keys_are_refused():
    problem = _refusal("name: a\nmodel: m\noutputs:\n  - {method: gptq, <<: {method: rtn, scheme: W8A16}}\n")
    assert problem.startswith("outputs[0] (line 4): '<<' is a YAML merge key"), problem
    problem = _refusal("name: a\nmodel: m\n<<: {name: b}\noutputs: [{method: fp8}]\n")
    assert problem.startswith("(recipe) (line 3): '<<' is a YAML merge key"), problem
    assert "unknown field" in _refusal("name: a\nmodel: m\n'<<': {name: b}\noutputs: [{method: fp8}]\n")  # a quoted key is a key
    assert parse_recipe("name: a\nmodel: '<<'\noutputs: [{method: fp8}]\n").model.source == "<<"


def test_set_overrides_are_read_as_written():
    base = "name: a\nmodel: m\noutputs: [{method: fp8}]\n"
    problem = _refusal(base, ("calibration.seq_len=0256",))
    assert problem == ("override 'calibration.seq_len=0256': calibration.seq_len: 0256 has a leading zero, which YAML 1.1 "
                       "reads as 174 (octal); write 256, or quote it as a string ('0256')"), problem
    assert "base-60" in _refusal(base, ("calibration.num_samples=1:04",))
    assert "merge key" in _refusal(base, ("outputs.0={method: gptq, <<: {method: rtn}}",))
    assert parse_recipe(base, overrides=("calibration.seq_len=256",)).calibration.seq_len == 256


@pytest.mark.integration
@pytest.mark.parametrize("digits", [MAX_NUMBER_CHARS + 1, 5000, 100_000])
def test_an_integer_too_long_is_one_line(digits, tmp_path):
    problem = _refusal(_recipe(f"seq_len: {'9' * digits}"))
    assert problem.startswith(f"calibration.seq_len (line 4): a number of {digits} characters"), problem
    assert f"at most {MAX_NUMBER_CHARS}" in problem and len(problem) < 300
    assert "number of" in _refusal("name: a\nmodel: m\noutputs: [{method: fp8}]\n", (f"calibration.seq_len={'1' * digits}",))
    hexed = _refusal(_recipe(f"seq_len: 0x{'f' * digits}"))  # exempt from Python's limit, but not printable in decimal
    assert "number of" in hexed
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe(f"seq_len: {'9' * digits}"))
    r = run_cli("recipes", "validate", str(recipe), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("error:") == 1, r.stderr[-2000:]


def test_a_value_yaml_cannot_build_is_one_line():
    problem = _refusal(_recipe("seq_len: 2024-13-45"))  # a timestamp with month 13: ValueError from the constructor
    assert problem.startswith("YAML syntax error at line 4") or "line 4" in problem, problem
    assert "2024-13-45" in problem


FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=300)
digits = st.text(alphabet=string.digits + "_", min_size=1, max_size=12).filter(lambda s: s[0] != "_")


@FUZZ
@given(sign=st.sampled_from(["", "-", "+"]), rest=digits)
def test_any_leading_zero_number_is_refused(sign, rest):
    written = f"{sign}0{rest}"
    problem = _refusal(_recipe(f"seq_len: {written}"))
    assert problem.startswith(f"calibration.seq_len (line 4): {written} has a leading zero") and f"('{written}')" in problem


@FUZZ
@given(head=st.integers(0, 10**6), tail=st.lists(st.integers(0, 59), min_size=1, max_size=3), pad=st.booleans())
def test_any_base_60_number_is_refused(head, tail, pad):
    written = str(head) + "".join(f":{t:02d}" if pad else f":{t}" for t in tail)
    problem = _refusal(_recipe(f"num_samples: {written}"))
    assert f"{written} is a YAML 1.1 base-60 number" in problem


@FUZZ
@given(st.integers(1, 10**12))
def test_any_decimal_is_read_as_written(n):
    try:
        r = parse_recipe(_recipe(f"seq_len: {n}"))
    except RecipeError as e:  # out of the field's range: said with the value as written
        assert str(n) in e.problems[0] and "leading zero" not in e.problems[0] and "base-60" not in e.problems[0]
    else:
        assert r.calibration.seq_len == n


@FUZZ
@given(st.dictionaries(st.sampled_from(["method", "scheme", "name", "bits"]), st.sampled_from(["rtn", "W8A16", "x", "4"]),
                       min_size=1, max_size=3))
def test_any_merge_key_is_refused(merged):
    inner = ", ".join(f"{k}: {v}" for k, v in merged.items())
    problem = _refusal(f"name: a\nmodel: m\noutputs:\n  - {{method: fp8, <<: {{{inner}}}}}\n")
    assert "merge key" in problem


def test_load_recipe_reads_a_file_the_same_way(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe("seq_len: 0256"))
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    assert e.value.problems[0].startswith("calibration.seq_len (line 4): 0256 has a leading zero")
    assert sys.get_int_max_str_digits() > MAX_NUMBER_CHARS
