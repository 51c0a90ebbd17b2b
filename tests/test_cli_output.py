"""What quantkit prints where stdout is not a terminal (CI logs of release pipelines): timestamped
step lines with durations, tables at full width, --json everywhere, a README that shows real output."""

import io
import json
import re

import pytest
from conftest import REPO, run_cli, tiny_recipe_text

from quantkit.reporters import PlainReporter

pytestmark = pytest.mark.unit

LOG = {"COLUMNS": "80"}  # what a CI log gets: no terminal, rich's default width
LONG = "tiny-llama-for-the-release-pipeline-fp8-dynamic-with-a-long-name"
STEP = re.compile(r"^\d\d:\d\d:\d\d +(start|done |FAILED|…) (.*)$")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_reporter_lines_durations_rates_and_heartbeat():
    buf, clock = io.StringIO(), FakeClock()
    rep = PlainReporter(buf, heartbeat=0, clock=clock)
    rep.log("a message without markup", style="red")
    with rep.task("scoring prose", tokens=4096):
        with rep.task("calibrating layers", total=30) as t:
            t.update(completed=12, description="calibrating layers (calibrating 13/30)")
            with rep.task("  (13/30): Calibrating", total=64, transient=True):
                clock.t = 95.0
                rep.beat()  # what the timer thread prints every 30 s: the innermost step that is not transient
            clock.t = 100.0
        clock.t = 128.0
    with pytest.raises(RuntimeError):
        with rep.task("saving"):
            raise RuntimeError("disk full")
    lines = [line.split(" ", 1)[1] for line in buf.getvalue().splitlines()]
    assert lines == [
        "a message without markup",
        "start scoring prose",
        "  start calibrating layers",
        "  … calibrating layers (calibrating 13/30) (1 min 35 s so far, 12/30)",
        "  done  calibrating layers (1 min 40 s)",
        "done  scoring prose (2 min 08 s, 32 tokens/s)",
        "start saving",
        "FAILED saving (0.0 s)",
    ]
    assert all(re.match(r"^\d\d:\d\d:\d\d ", line) for line in buf.getvalue().splitlines())


def test_plain_reporter_heartbeat_thread_prints_while_a_step_runs():
    import time

    buf = io.StringIO()
    with PlainReporter(buf, heartbeat=0.05) as rep:
        with rep.task("a long step"):
            time.sleep(0.3)
    assert "… a long step (" in buf.getvalue()


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory):
    """`quantize` through the CLI with stdout piped: a calibrated and an uncalibrated output, one with a long name."""
    d = tmp_path_factory.mktemp("cli-output")
    recipe = d / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, d / "out", f"  - {{method: fp8, name: {LONG}}}\n  - {{method: int8}}\n"))
    r = run_cli("quantize", str(recipe), env=LOG)
    assert r.returncode == 0, r.stderr
    return d / "out", r


@pytest.mark.integration
def test_quantize_in_a_log_prints_full_names_and_timed_steps(quantized):
    _, r = quantized
    assert LONG in r.stdout and "…" not in r.stdout  # the table is not cut to 80 columns
    steps = [STEP.match(line).groups() for line in r.stderr.splitlines() if STEP.match(line)]
    names = [f"{kind.strip()} {what}" for kind, what in steps]
    tok = names.index("start tokenizing calibration set builtin:mixed")
    assert names[tok + 1].startswith("done tokenizing calibration set builtin:mixed (")
    calib = next(i for i, n in enumerate(names) if n.startswith("start int8: "))
    done = next(n for n in names[calib:] if n.startswith("done int8: "))
    assert re.search(r"\(\d+\.\d s, [\d,]+ tokens/s\)$", done)  # duration and calibration throughput
    inner = next(i for i, n in enumerate(names) if i > calib and n.startswith("done calibrating layers"))
    assert inner < names.index(done)  # nested steps end before the step that holds them
    assert "[1/2] " + LONG in r.stderr and r.stderr.index("[1/2] ") < r.stderr.index("[2/2] ")
    assert "\x1b[" not in r.stderr  # no terminal control codes in a log


@pytest.mark.integration
def test_validate_in_a_log_prints_full_names_and_timed_steps(quantized):
    out, _ = quantized
    r = run_cli("validate", str(out), "--max-tokens", "64", "--context", "32", "--no-serve", env=LOG)
    assert r.returncode in (0, 1), r.stderr
    for table in ("quantkit validate", "gates"):
        assert table in r.stdout
    assert r.stdout.count(LONG) >= 2  # results and gates tables, never cut
    lines = r.stderr.splitlines()
    scored = [line for line in lines if re.search(r"done +" + re.escape(LONG) + r": perplexity and KLD on \w+", line)]
    assert len(scored) == 2 and all(re.search(r"tokens/s\)$", line) for line in scored)
    starts = [i for i, line in enumerate(lines) if " start " in line and "perplexity and KLD on prose" in line]
    ends = [i for i, line in enumerate(lines) if " done " in line and "perplexity and KLD on prose" in line]
    assert len(starts) == len(ends) == 2 and all(s < e for s, e in zip(starts, ends))


@pytest.mark.integration
def test_progress_modes(quantized, tmp_path):
    out, _ = quantized
    art = out / LONG
    r = run_cli("validate", str(art), "--max-tokens", "64", "--context", "32", "--no-serve", "--progress", "none",
                "--gate", "kld_mean_max=100", "--gate", "ppl_increase_max=100", "--gate", "top1_agreement_min=0")
    assert r.returncode == 0, r.stderr
    assert not any(STEP.match(line) for line in r.stderr.splitlines())
    r = run_cli("validate", str(art), "--progress", "fancy")
    assert r.returncode == 2 and "'fancy' is not one of 'auto', 'rich', 'plain', 'none'" in r.stderr
    r = run_cli("inspect", str(art), "--json")
    assert json.loads(r.stdout)["name"] == LONG


@pytest.mark.integration
def test_every_command_has_json(tmp_path):
    r = run_cli("recipes", "validate", str(REPO / "recipes" / "smollm2-135m.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid"] and [o["method"] for o in doc["outputs"]][:2] == ["awq", "gptq"]
    (tmp_path / "bad.yaml").write_text("name: x\n")
    r = run_cli("recipes", "list", "--folder", str(tmp_path), "--json")
    [row] = json.loads(r.stdout)
    assert row["valid"] is False and row["recipe"].endswith("bad.yaml")
    r = run_cli("env", "--json", env={"QUANTKIT_CACHE": str(tmp_path / "cache"), "QUANTKIT_VLLM_PYTHON": ""})
    doc = json.loads(r.stdout)
    assert doc["cache"] == str(tmp_path / "cache") and doc["vllm"] is None and "torch" in doc["libraries"]


@pytest.mark.slow
def test_readme_sample_output_is_todays_output():
    """The README shows a real run of its first command: its calibration fingerprint is what the shipped
    recipe's calibration set gives today."""
    from quantkit.recipe_loader import load_recipe
    from quantkit.sources.calibration import build_calibration
    from quantkit.sources.models import load_tokenizer, resolve_model

    readme = (REPO / "README.md").read_text()
    shown = re.search(r"fingerprint ([0-9a-f]{12})", readme)
    assert shown, "the README's sample output shows no calibration fingerprint"
    recipe = load_recipe(REPO / "recipes" / "smollm2-135m.yaml")
    cal = build_calibration(recipe.calibration, load_tokenizer(resolve_model(recipe.model)))
    assert shown.group(1) == cal.fingerprint[:12]
    assert f"{len(cal.input_ids)} × {recipe.calibration.seq_len} tokens from {recipe.calibration.source}" in readme
    for output in recipe.outputs:
        assert output.name in readme  # the results table lists every artifact by its full name


def test_scoring_steps_show_tokens_per_second_and_an_eta():
    buf, clock = io.StringIO(), FakeClock()
    rep = PlainReporter(buf, heartbeat=0, clock=clock)
    with rep.task("gptq: perplexity and KLD on prose (4096 tokens)", total=4096, tokens=4096) as bar:
        clock.t = 10.0
        bar.advance(1024)
        rep.beat()
        clock.t = 40.0
        bar.advance(3072)
    lines = [line.split(" ", 1)[1] for line in buf.getvalue().splitlines()]
    assert lines[1] == ("… gptq: perplexity and KLD on prose (4096 tokens) (10.0 s so far, 1,024/4,096 tokens, "
                        "102 tokens/s, ETA 30.0 s)")
    assert lines[2] == "done  gptq: perplexity and KLD on prose (4096 tokens) (40.0 s, 102 tokens/s)"


def test_rich_scoring_bar_shows_tokens_per_second():
    from rich.console import Console

    from quantkit.reporters import RichReporter

    out = io.StringIO()
    with RichReporter(Console(file=out, force_terminal=True, width=160)) as rep:
        with rep.task("scoring", total=300, tokens=300) as bar:
            for _ in range(3):
                bar.advance(100)
    assert re.search(r"[\d,]+ tokens/s", out.getvalue())
