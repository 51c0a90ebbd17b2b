"""The validation report as a model (quantkit.report.model) and its renderings: validation.json round-trips
byte for byte, every earlier report still loads, and a check's tables reach every report through the check."""

import ast
import copy
import json
import sys
import types

import pytest
from conftest import REPO
from rich.console import Console

from quantkit.checks import CHECKS, Check, CheckResult
from quantkit.report.model import CardResult, Column, Section, ValidationReport, report_json

pytestmark = pytest.mark.unit

FIXTURES = REPO / "tests" / "fixtures"
CURRENT = FIXTURES / "validation-v1.json"  # as validate writes it today: serving and lm-eval measured, a GGUF-like target
FIRST = FIXTURES / "validation-v1-first.json"  # as the first quantkit wrote it: no base, resources, device or details


def load(path) -> ValidationReport:
    return ValidationReport.model_validate_json(path.read_text())


def test_a_report_written_and_read_is_the_same_report_and_the_same_bytes(tmp_path):
    text = CURRENT.read_text()
    report = load(CURRENT)
    assert report_json(report) == text  # validate writes exactly this
    (tmp_path / "validation.json").write_text(report_json(report))
    again = load(tmp_path / "validation.json")
    assert again == report and report_json(again) == text
    t = report.targets[0]
    assert report.settings["context"] == report.settings.context == 64 and report.base.matches is False
    assert t.result("serve").details["ready_s"] == 12.3 and t.measured("kld_mean") == t.result("kld").metrics["kld_mean"]
    assert report.mean_kld(t.scheme) == t.measured("kld_mean") and report.mean_kld("Q4_K") is None  # unscored target


def test_the_first_report_format_still_loads_renders_and_keeps_its_keys():
    from quantkit.report.card import evaluation_section
    from quantkit.report.markdown import validation_markdown

    report = load(FIRST)
    assert report.base is None and report.resources is None and report.manifest_sha256 is None
    assert (report.settings.device, report.settings.dtype, report.settings.serve) == ("cpu", "float32", None)
    assert report.targets[0].device is None and report.targets[0].domains[0].kld_by_position is None
    assert report_json(report) == FIRST.read_text()  # read and written again: none of today's defaults added
    assert "| tiny-fp8-fp8-dynamic | prose | 128 |" in validation_markdown(report)
    assert "cpu, float32). Verdict: **PASS**" in "\n".join(evaluation_section(report))


def test_a_newer_report_loads_and_keeps_what_it_does_not_know():
    doc = json.loads(CURRENT.read_text())
    doc["report_version"] = 2
    doc["energy_j"] = 12.5
    doc["targets"][0]["checks"][0]["confidence"] = {"low": 1.0, "high": 2.0}
    doc["targets"][0]["gates"][0]["note"] = "new"
    report = ValidationReport.model_validate(doc)
    assert report.report_version == 2 and report.energy_j == 12.5
    assert json.loads(report_json(report)) == doc


def test_a_pushed_report_is_the_report_read_without_local_paths():
    from quantkit.publish.bundle import pushed_validation, verdict_problems, without_local_paths

    prefixes = ["/home/user/quantkit"]
    raw = json.loads(CURRENT.read_text())
    expected = {**without_local_paths(raw, prefixes), "artifact": "tiny-fp8-fp8-dynamic"}
    assert pushed_validation(load(CURRENT), prefixes) == (json.dumps(expected, indent=2) + "\n").encode()
    assert verdict_problems(load(CURRENT)) == []
    edited = copy.deepcopy(raw)
    edited["targets"][0]["gates"][0]["threshold"] = 1e-9  # the figure fails its gate, the verdict still says pass
    assert "gate kld_mean_max says pass" in verdict_problems(ValidationReport.model_validate(edited))[0]


class FakeCheck(Check):
    """A check added by a test: its module and registry line only."""

    name = "fake"

    def run(self, ctx):
        return CheckResult(self.name, "measured", metrics={"fake_score": 0.5})

    @classmethod
    def run_section(cls, report):
        return Section("Fake check", (Column("score", numeric=True),),
                       tuple((t.target, f"{r.metrics['fake_score']:.4f}") for t, r in cls.results(report)),
                       note="Scored by the fake")

    @classmethod
    def card_section(cls, report):
        return Section("Fake (card)", (Column("score", numeric=True),),
                       tuple((t.target, f"{r.metrics['fake_score']:.2f}") for t, r in cls.results(report)))

    @classmethod
    def card_results(cls, target, result):
        return [CardResult("fake/data", "fake data", "fake_score", result.metrics["fake_score"], "fake score")]


@pytest.fixture
def fake_check(monkeypatch):
    module = types.ModuleType("quantkit_test_fake_check")
    module.FakeCheck = FakeCheck
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(CHECKS, "fake", f"{module.__name__}:FakeCheck")
    report = load(CURRENT)
    report.targets[0].checks.append(FakeCheck().run(None))
    return report


def test_a_new_check_reaches_every_report_through_its_own_module(fake_check):
    from quantkit.cli.validate import validation_output
    from quantkit.report.card import eval_results, evaluation_section
    from quantkit.report.html import render_html
    from quantkit.report.markdown import validation_markdown

    report = fake_check
    md = validation_markdown(report)
    assert "\nFake check (scored by the fake).\n\n| target | score |\n|---|---:|\n| tiny-fp8-fp8-dynamic | 0.5000 |\n" in md
    assert md.index("vLLM serving smoke test") < md.index("Fake check")  # registry order
    page = render_html([report], "t")
    assert "<h2>Fake check</h2><p>Scored by the fake.</p>" in page
    assert "<tr><td class=l>tiny-fp8-fp8-dynamic</td><td>0.5000</td></tr>" in page
    card = "\n".join(evaluation_section(report))
    assert "### Fake (card)\n\n| target | score |\n|---|---:|\n| tiny-fp8-fp8-dynamic | 0.50 |" in card
    [fake] = [r for r in eval_results(report) if r.metric_type == "fake_score"]
    assert (fake.dataset_type, fake.metric_value, fake.metric_name) == ("fake/data", 0.5, "fake score")
    console = Console(record=True, width=200)
    validation_output([report]).emit(False, target=console)
    text = console.export_text()
    assert "Fake check" in text and "0.5000" in text
    without = load(CURRENT)  # the fake's result is only in the report it was added to
    assert "Fake check" not in validation_markdown(without)


def test_no_renderer_names_a_check():
    """Renderers ask each check (quantkit.checks.base.Check) for its part: no string in them is a check's name."""
    renderers = [*sorted((REPO / "quantkit" / "report").glob("*.py")), REPO / "quantkit" / "cli" / "validate.py",
                 REPO / "quantkit" / "publish" / "card.py", REPO / "quantkit" / "publish" / "bundle.py"]
    named = [f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}" for path in renderers
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in CHECKS]
    assert not named, named


def test_the_gpu_peak_is_written_only_where_it_was_measured():
    from quantkit.report.model import Resources

    cpu = Resources(wall_s=1.0, peak_rss_bytes=2)
    gpu = Resources(wall_s=1.0, peak_rss_bytes=2)
    gpu.peak_gpu_bytes = 3  # as validate sets it after a GPU run
    assert "peak_gpu_bytes" not in cpu.to_dict() and gpu.to_dict()["peak_gpu_bytes"] == 3 == gpu["peak_gpu_bytes"]
