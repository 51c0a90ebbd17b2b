"""The job as the only unit: a plain recipe is a matrix of one cell, every executor forwards the run's
options (force flags, validation) into its child, and `quantize --json` has one shape on every path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, tiny_recipe_text

from quantkit.jobs import JobResult, JobSpec, RunOptions

RTN = "  - {method: rtn, name: r4, scheme: W4A16, group_size: 32}\n"
pytestmark = pytest.mark.integration
ROW_KEYS = {"path", "name", "method", "scheme", "size_bytes", "compression_ratio", "time_s", "peak_rss_bytes",
            "job", "status", "attempts", "seconds", "error"}


def manifest_mtime(folder: Path) -> int:
    return (folder / "quantkit.json").stat().st_mtime_ns


def test_force_reaches_the_jobs_of_an_executor(tiny_model, tmp_path):
    """`--force --jobs 1` used to report the artifact as kept and exit 0: the driver marked it up to date
    before submitting, and the child quantize never saw --force."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, tmp_path / "out", RTN))
    here = run_cli("quantize", str(recipe), "--json")
    assert here.returncode == 0, here.stderr[-3000:]
    made = manifest_mtime(tmp_path / "out" / "r4")

    kept = run_cli("quantize", str(recipe), "--jobs", "1", "--json")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert [row["status"] for row in json.loads(kept.stdout)] == ["kept"] and manifest_mtime(tmp_path / "out" / "r4") == made

    forced = run_cli("quantize", str(recipe), "--force", "--jobs", "1", "--json")
    assert forced.returncode == 0, forced.stderr[-3000:]
    rows = json.loads(forced.stdout)
    assert [(row["job"], row["status"]) for row in rows] == [("r4", "made")]
    assert manifest_mtime(tmp_path / "out" / "r4") != made
    # one JSON shape, in this process or through an executor: the artifact's row plus the job's fields
    [in_process] = json.loads(here.stdout)
    assert set(in_process) == set(rows[0]) and ROW_KEYS <= set(rows[0])
    assert in_process["status"] == "made" and rows[0]["path"] == in_process["path"] == str(tmp_path / "out" / "r4")
    assert rows[0]["method"] == "rtn" and rows[0]["size_bytes"] > 0


def test_validate_recipe_finds_every_artifact_of_a_matrix(tiny_model, tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(f"name: mx\nmodels: [{{source: {tiny_model}, name: a}}, {{source: {tiny_model}, name: b}}]\n"
                      f"output_dir: {tmp_path / 'out'}\ncalibration: {{num_samples: 4, seq_len: 16}}\noutputs:\n{RTN}")
    r = run_cli("quantize", str(recipe), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(row["job"] for row in json.loads(r.stdout)) == ["a/r4", "b/r4"]
    r = run_cli("validate", str(tmp_path / "out"), "--recipe", str(recipe), "--max-tokens", "64", "--context", "32",
                "--no-serve", "--no-write", "--json")
    assert r.returncode in (0, 1), r.stderr[-3000:]  # a gate of the random model may fail; both were found
    assert sorted(report["artifact"] for report in json.loads(r.stdout)) == [str(tmp_path / "out" / "a" / "r4"),
                                                                         str(tmp_path / "out" / "b" / "r4")]


@pytest.mark.unit
def test_a_job_spec_carries_the_run_options_through_json_and_the_child_applies_them(tmp_path):
    from quantkit.executors import job_spec
    from quantkit.executors.worker import child_commands
    from quantkit.jobs import plan
    from quantkit.recipe_loader import parse_recipe

    options = RunOptions(force=True, force_space=True, force_memory=True, validate=True, retries=3)
    [job] = plan(parse_recipe(f"name: t\nmodel: org/tiny\noutput_dir: {tmp_path / 'out'}\noutputs:\n{RTN}"))
    spec = job_spec(job, options)
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and again.options == options
    quantize, validate = child_commands(again, Path(again.dest), Path("/tmp/recipe.json"))
    assert {"--force", "--force-space", "--force-memory"} <= set(quantize) and quantize[quantize.index("--only") + 1] == "r4"
    assert validate[3:5] == ["validate", again.dest]
    plain = child_commands(JobSpec.from_json(job_spec(job, RunOptions()).to_json()), Path(again.dest), Path("/r.json"))
    assert len(plain) == 1 and not {"--force", "--force-space", "--force-memory"} & set(plain[0])
    result = JobResult(id="r4", name="r4", status="failed", dest=again.dest, attempts=2, error="boom", retryable=True)
    assert JobResult.from_json(result.to_json()) == result


def test_force_is_not_answered_from_the_output_root(tiny_model, tmp_path):
    """The driver keeps an up-to-date artifact without submitting its job, unless the run is forced."""
    from quantkit.executors import Board, run_jobs
    from quantkit.jobs import plan
    from quantkit.quantize import quantize
    from quantkit.recipe_loader import parse_recipe

    recipe = parse_recipe(tiny_recipe_text(tiny_model, tmp_path / "out", RTN))
    quantize(recipe)
    submitted: list[JobSpec] = []

    class Recording:
        name = "recording"

        def run(self, specs, board: Board, retries: int) -> list[JobResult]:
            submitted.extend(specs)
            return [JobResult(id=s.id, name=s.output, status="made", dest=s.dest) for s in specs]

    run = run_jobs(plan(recipe), Recording())
    assert submitted == [] and [r.status for r in run.results] == ["kept"]
    assert run.rows()[0]["method"] == "rtn"  # a kept job's row is its artifact's
    run = run_jobs(plan(recipe), Recording(), options=RunOptions(force=True))
    assert [s.options.force for s in submitted] == [True] and [r.status for r in run.results] == ["made"]
