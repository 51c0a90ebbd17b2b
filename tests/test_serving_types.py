"""Serving results as models (quantkit.serving.results): what validate stores as the serving check's details is
the model's JSON, key for key as the dict it replaced, and the reports read it back typed; earlier reports load.
And the lm-eval check's own table in every report, only where tasks ran."""

import copy
import json
from pathlib import Path

import pytest
from conftest import REPO
from rich.console import Console

from quantkit.checks.base import Check
from quantkit.checks.lm_eval_tasks import LMEvalCheck
from quantkit.report.model import CheckResult, ValidationReport
from quantkit.serving.results import ServeResult, SpeculativeResult, summary_line

pytestmark = pytest.mark.unit

FIXTURES = REPO / "tests" / "fixtures"
CURRENT = FIXTURES / "validation-v1.json"  # serving and lm-eval measured
FIRST = FIXTURES / "validation-v1-first.json"  # no tasks, no serving


def _summary(c: int, tps: float) -> dict:
    return {"concurrency": c, "requests": 2, "failed": 0, "output_tokens": 12, "wall_s": 0.2, "output_tokens_per_s": tps,
            "ttft_p50_s": 0.01, "ttft_p95_s": 0.02, "tpot_p50_s": 0.005, "tpot_p95_s": None}


def _acceptance(drafts: int) -> dict:
    return {"available": True, "drafts": drafts, "draft_tokens": 4 * drafts, "accepted_tokens": drafts,
            "acceptance_rate": 0.25, "mean_acceptance_length": 2.0}


# as ServeResult.to_dict() wrote it before it was a model (the fake server's run, its keys in their order)
TODAY = {
    "status": "measured", "model": "/tmp/m", "expected_quantization": "compressed-tensors", "reason": None,
    "vllm": {"distribution": "fake-vllm", "vllm": "0.0.0", "device": "cpu"},
    "options": {"speculative": "ngram", "draft_model": None, "num_speculative_tokens": 4, "concurrency": [1, 2],
                "max_tokens": 6, "prompts": 2, "smoke_max_tokens": 32, "greedy_tokens": 16, "ready_timeout": 600.0,
                "max_model_len": 2048, "dtype": None, "timeout": None},
    "ready_s": 0.71, "dtype": "bfloat16", "quantization": "compressed-tensors",
    "kernels": ["Using FakeLinearKernel for FakeScheme"],
    "smoke": {"requests": 2, "failed": 0, "max_tokens": 6, "served_models": ["quantkit-smoke"], "max_model_len": 2048,
              "errors": [], "samples": {"smoke-0": "Paris", "smoke-1": " there was"}},
    "greedy": {"prompt": "The capital of France is", "tokens": 6, "vllm_ids": [100, 101, 102, 103, 104, 105],
               "reference": "transformers (cpu, float32)", "agreeing_tokens": 2},
    "performance": {"1": _summary(1, 60.0), "2": _summary(2, 100.0)},
    "speculative": {
        "method": "ngram", "config": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
                                      "prompt_lookup_min": 2},
        "performance": {"1": _summary(1, 90.0), "2": _summary(2, 120.0)}, "speedup": {"1": 1.5, "2": 1.2},
        "acceptance": {"1": _acceptance(18), "2": _acceptance(9)}, "ready_s": 0.52, "compared_outputs": 4, "mismatches": 1,
        "diverged": [{"request": "copy-0", "concurrency": 2, "first_difference_at_char": 3, "plain": "abcd",
                      "speculative": "abcX"}],
        "acceptance_rate": 0.25, "mean_acceptance_length": 2.0,
    },
    "workload": "copy/edit/quote prompts (the text to reproduce is in the prompt), where n-gram speculation can help; "
                "speedups on free-form text are lower",
    "log_tail": "ready\n", "spec_log_tail": "", "serving_class": "float", "kernel_probe": None,
    "plan": {"smoke_requests": 2, "smoke_max_tokens": 6, "greedy_tokens": 6, "workload_requests": 2, "max_tokens": 6,
             "concurrency": [1, 2], "short_because": None},
    "not_measured": {}, "timed_out": False, "request_errors": 0,
    "quantization_matches": True,
    "metrics": {"serve_loaded": 1.0, "serve_ready_s": 0.71, "serve_quantization_match": 1.0, "serve_failed_requests": 0.0,
                "spec_mismatches": 1.0},
    "unmeasured_metrics": {},
}


def test_a_result_as_written_before_reads_typed_and_writes_the_same_json():
    r = ServeResult.model_validate(TODAY)
    assert json.dumps(r.model_dump(mode="json")) == json.dumps(TODAY)  # keys, order and values
    assert r.to_dict() == TODAY and ServeResult.from_details(r.to_dict()) == r
    assert r.smoke.served_models == ["quantkit-smoke"] and r.greedy.agreeing_tokens == 2
    assert r.performance["2"].output_tokens_per_s == 100.0 and r.speculative.acceptance["1"].drafts == 18
    assert r.speculative.diverged[0].request == "copy-0" and r.plan.workload_requests == 2
    assert r.smoke["requests"] == 2 and r.speculative["acceptance"]["1"]["drafts"] == 18  # by key, as callers read the dict
    assert r.vllm_label == "fake-vllm 0.0.0 (cpu)" and r.kernel_library is None
    # the derived keys are recomputed from the figures, not taken from the input
    assert r.metrics() == TODAY["metrics"]
    edited = {**copy.deepcopy(TODAY), "metrics": {"serve_loaded": 0.0}}
    assert ServeResult.model_validate(edited).to_dict() == TODAY


def test_phases_keep_the_keys_they_got():
    """A phase with no record is {} in the JSON and None in the model; the speculative phase writes only the keys
    it reached (the budget ran out before it: status and reason alone)."""
    cut = {**copy.deepcopy(TODAY), "smoke": {}, "greedy": {}, "performance": {}, "plan": {}, "ready_s": None,
           "speculative": {"status": "not measured", "reason": "not measured: serve timeout of 2 s reached"},
           "not_measured": {"server start": "not measured: serve timeout of 2 s reached"}, "timed_out": True,
           "quantization_matches": None, "metrics": {},
           "unmeasured_metrics": {"serve_loaded": "not measured: serve timeout of 2 s reached",
                                  "serve_ready_s": "not measured: serve timeout of 2 s reached",
                                  "serve_quantization_match": "not measured: serve timeout of 2 s reached",
                                  "serve_failed_requests": "not measured: serve timeout of 2 s reached",
                                  "spec_mismatches": "not measured: serve timeout of 2 s reached"}}
    r = ServeResult.model_validate(cut)
    assert r.smoke is None and r.greedy is None and r.plan is None and r.speculative.mismatches is None
    assert json.dumps(r.to_dict()) == json.dumps(cut)
    # the budget ran out between two concurrencies of the speculative phase: its speedup so far, nothing compared
    between = copy.deepcopy(TODAY)
    for key in ("compared_outputs", "mismatches", "diverged", "acceptance_rate", "mean_acceptance_length"):
        del between["speculative"][key]
    line = summary_line({"status": "measured", "reason": None, "details": between})
    assert "ngram speedup c1 1.50x, c2 1.20x" in line and "outputs identical" not in line
    started = SpeculativeResult(method="ngram", performance={}, speedup={}, acceptance={})
    started.ready_s = 1.5
    assert started.model_dump(mode="json") == {"method": "ngram", "performance": {}, "speedup": {}, "acceptance": {},
                                               "ready_s": 1.5}


def test_a_newer_result_keeps_what_this_quantkit_does_not_know():
    newer = copy.deepcopy(TODAY)
    newer["energy_j"] = 3.5
    newer["smoke"]["p99_s"] = 0.4
    newer["performance"]["1"]["queue_s"] = 0.0
    r = ServeResult.model_validate(newer)
    assert r.energy_j == 3.5 and r.smoke.p99_s == 0.4
    dumped = r.to_dict()
    assert dumped["smoke"] == newer["smoke"] and dumped["performance"] == newer["performance"]
    assert dumped["energy_j"] == 3.5


def test_an_earlier_reports_serving_details_load_typed():
    report = ValidationReport.model_validate_json(CURRENT.read_text())
    measured, failed, skipped = (t.result("serve") for t in report.targets)
    r = ServeResult.from_details(measured.details)
    assert r.status == "measured" and r.ready_s == 12.3 and r.quantization == "compressed-tensors"
    assert r.smoke.requests == 4 and r.smoke.max_tokens is None  # that report kept fewer smoke keys
    assert r.performance["8"].output_tokens_per_s == 180.7 and r.speculative.speedup == {"1": 1.494, "8": 1.107}
    assert r.speculative.acceptance_rate == 0.61 and r.plan.max_tokens == 96 and r.plan.smoke_requests is None
    assert r.speculative.model_dump(mode="json") == measured.details["speculative"]  # its own keys, no more
    f = ServeResult.from_details(failed.details)
    assert f.status == "failed" and f.ready_s is None and f.model is None and f.smoke is None
    assert ServeResult.from_details(skipped.details) is None  # a skipped check has no details
    # the reports read the typed record; its JSON form (as tests and older callers pass it) reads the same
    assert summary_line(measured) == summary_line(measured.model_dump(mode="json"))
    assert summary_line(measured).startswith("ready 12 s; quantization compressed-tensors; 4/4 smoke ok")
    assert summary_line(failed) == "did not serve: server exited"


def test_the_serve_test_report_reads_back_from_its_json():
    from quantkit.checks.serve import serving_gates
    from quantkit.cli.serving import serve_table
    from quantkit.gates import evaluate_gates
    from quantkit.serving.results import ServeOptions
    from quantkit.serving.verb import ServeReport

    r = ServeResult.model_validate(TODAY)
    report = ServeReport(Path("/tmp/m"), r, evaluate_gates(serving_gates(ServeOptions()), r.metrics()))
    again = ServeReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.result == r and again.gates == report.gates and not again.passed  # one speculative mismatch

    def text(doc) -> str:
        console = Console(width=240, record=True, file=open("/dev/null", "w"))
        console.print(serve_table(doc))
        return console.export_text()

    table = text(report)
    assert table == text(report.to_dict())
    assert "90.0 tok/s, speedup 1.50x, acceptance 25%, mean acceptance length 2.00" in table and "3 / 4" in table


def _rendered(report: ValidationReport) -> tuple[str, str, str]:
    from quantkit.cli.validate import validation_output
    from quantkit.report.html import render_html
    from quantkit.report.markdown import validation_markdown

    console = Console(record=True, width=240, file=open("/dev/null", "w"))
    validation_output([report]).emit(False, target=console)
    return validation_markdown(report), render_html([report], "t"), console.export_text()


def test_lm_eval_results_reach_every_report():
    md, page, terminal = _rendered(ValidationReport.model_validate_json(CURRENT.read_text()))
    assert ("\nlm-eval tasks (accuracy of the base and of the target on each task, and recovery: target over base).\n\n"
            "| target | task | base accuracy | accuracy | recovery |\n|---|---|---:|---:|---:|\n"
            "| tiny-fp8-fp8-dynamic | quantkit_docstring_mc | 0.5000 | 0.4850 | 0.9700 |\n") in md
    assert md.index("lm-eval tasks") < md.index("vLLM serving smoke test")  # registry order
    assert "<h2>lm-eval tasks</h2>" in page and "<td>0.9700</td>" in page
    assert "lm-eval tasks" in terminal and "quantkit_docstring_mc" in terminal and "0.9700" in terminal


def test_no_lm_eval_table_where_no_task_ran(monkeypatch):
    """Without --task the check is skipped: every report is what it was before the check had a table."""
    doc = json.loads(CURRENT.read_text())
    for t in doc["targets"]:
        for c in t["checks"]:
            if c["check"] == LMEvalCheck.name:
                c.update(status="skipped", metrics={}, per_domain={}, sample={}, reason="no tasks requested (--task)")
    doc["settings"]["tasks"] = []
    reports = [ValidationReport.model_validate(doc), ValidationReport.model_validate_json(FIRST.read_text())]
    with_table = [_rendered(r) for r in reports]
    assert not any("lm-eval" in text for rendered in with_table for text in rendered)
    assert LMEvalCheck.run_section(reports[0]).rows == ()
    monkeypatch.setattr(LMEvalCheck, "run_section", Check.run_section)  # the check as it was: no table at all
    assert [_rendered(r) for r in reports] == with_table  # byte for byte


def test_a_report_without_serving_details_still_renders():
    report = ValidationReport.model_validate_json(CURRENT.read_text())
    report.targets[0].checks[-1] = CheckResult("serve", "failed", reason="crashed")  # no details at all
    assert summary_line(report.targets[0].result("serve")) == "did not serve: crashed"
