"""Every test is exactly one tier (tests/tiers.py), `-m <tier>` selects exactly that tier, and the unit
tier's promise (no quantization, no CLI subprocess, no heavy fixture) is enforced while it runs."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tiers
from conftest import REPO

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent


def test_every_test_in_the_suite_has_exactly_one_tier(request):
    problems = [str(p) for p in request.config.stash[tiers.PROBLEMS]]
    assert problems == [], "\n".join(problems)
    missing = sorted(str(p) for p in TESTS.glob("test_*.py") if p not in request.config.stash[tiers.COLLECTED])
    if missing:  # this session collected only part of the suite: collect the rest to check it as well
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                            "-m", "not (unit or integration or e2e)", *missing], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 5, r.stdout[-3000:]  # 5: nothing selected, so every test there has a tier


def test_each_selected_test_carries_its_one_tier_and_e2e_is_slow(request):
    for item in request.session.items:
        names = {m.name for m in item.iter_markers()}
        assert len(names & set(tiers.TIERS)) == 1, (item.nodeid, names)
        assert ("e2e" in names) == ("slow" in names), item.nodeid


@dataclass(eq=False)  # hashable, as pytest's nodes are
class Node:
    nodeid: str
    own_markers: list = field(default_factory=list)
    parent: Node | None = None
    path: str = "m.py"

    def listchain(self):
        return ([*self.parent.listchain()] if self.parent else []) + [self]

    def add_marker(self, name: str):
        self.own_markers.append(getattr(pytest.mark, name).mark)


def marks(*names: str) -> list:
    return [getattr(pytest.mark, n).mark for n in names]


def test_the_closest_declaration_wins_and_becomes_the_only_tier_marker():
    module = Node("m.py", marks("integration"))
    plain, own, aliased = (Node("m.py::a", parent=module), Node("m.py::b", marks("unit", "parametrize"), module),
                           Node("m.py::c", marks("slow"), module))
    items = [plain, own, aliased]
    assert tiers.resolve(items) == ({"m.py::a": "integration", "m.py::b": "unit", "m.py::c": "e2e"}, [])

    tiers.apply_tiers(type("Config", (), {"stash": {}})(), items)
    assert module.own_markers == []  # moved onto the items, where a test's own declaration overrides it
    assert [[m.name for m in n.own_markers] for n in items] == [["integration"], ["parametrize", "unit"], ["e2e", "slow"]]


def test_no_tier_or_two_at_one_level_is_a_problem():
    module = Node("m.py")
    none, two = Node("m.py::a", parent=module), Node("m.py::b", marks("unit", "integration"), module)
    tiers_of, problems = tiers.resolve([none, two])
    assert tiers_of == {}
    assert [str(p) for p in problems] == [
        "m.py::a: no tier (add `pytestmark = pytest.mark.<unit|integration|e2e>` to its module)",
        "m.py::b: two tiers at one level (unit, integration)"]


def test_a_unit_test_cannot_start_the_cli_or_quantize():
    with pytest.raises(pytest.fail.Exception, match="is marked unit but uses the quantkit CLI: mark it integration"):
        subprocess.Popen([sys.executable, "-m", "quantkit.cli.main", "--help"])
    from quantkit.engines import ENGINES

    for engine in ENGINES.values():
        with pytest.raises(pytest.fail.Exception, match=r"is marked unit but uses a quantization run \("):
            engine.run(None)
    # anything else still runs
    assert subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True).stdout == "ok\n"


@pytest.mark.parametrize(("tier", "fixture", "needed"), [("unit", "llamacpp", "integration"), ("unit", "vllm_env", "e2e"),
                                                     ("integration", "artifacts", "e2e")])
def test_a_test_cannot_ask_for_a_fixture_of_a_higher_tier(tier, fixture, needed):
    item = Node("m.py::t", marks(tier))
    item.fixturenames = ["tmp_path", fixture]
    item.get_closest_marker = lambda name: next((m for m in item.own_markers if m.name == name), None)
    before = dict(tiers.CURRENT)
    try:
        refused = f"m.py::t is marked {tier} but uses the fixture '{fixture}': mark it {needed}"
        with pytest.raises(pytest.fail.Exception, match=refused):
            tiers.enter(item)
        item.own_markers = marks(needed)
        tiers.enter(item)  # at its own tier it may
    finally:
        tiers.CURRENT.update(before)
