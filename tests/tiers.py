"""Test tiers: every test is exactly one of `unit`, `integration`, `e2e` (conftest.py wires these hooks in).

- unit: seconds; no quantization run (llm-compressor or llama.cpp), no quantkit CLI in a subprocess,
  no llama.cpp toolchain, no Ray, no OCI registry, no vLLM. `python -m pytest -m unit` is a contributor's fast run.
- integration: tiny models through the real libraries: quantization, the CLI in a subprocess,
  torchrun, Ray, the loopback OCI registry, the llama.cpp toolchain; and a test that takes tens of
  seconds by design (rebuilding the committed calibration sets, waiting out a serve timeout).
- e2e: the embedded SmolLM2 model (`slow`, which stays an alias) and the real vLLM server.

A module declares its tier with `pytestmark = pytest.mark.<tier>`; a test whose tier differs says so
with its own marker, and the closest declaration wins (test over class over module). The resolved tier
is then the only tier marker the test carries, so `-m unit` selects exactly the unit tests. Two different
tiers declared at the same level, or none at all, is a problem that test_tiers.py reports.
The tiers' promises are enforced while they run: a unit test that quantizes or starts the CLI or the
registry, or any test that asks for a fixture of a higher tier (SmolLM2's artifacts in integration), fails
naming the tier it belongs to.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e")
ALIASES = {"slow": "e2e"}  # the marker the SmolLM2 tests had before the tiers; existing decorators keep working

# fixtures and the lowest tier that may use them (a new heavy fixture gets a line here)
HEAVY_FIXTURES = {
    "llamacpp": "integration", "ray_cluster": "integration", "registry": "integration",
    "artifacts": "e2e", "vllm_env": "e2e",
}
# arguments of a subprocess that make it integration: the CLI, the loopback registry
HEAVY_COMMANDS = {"quantkit.cli": "the quantkit CLI", "docker-registry": "the OCI registry"}


@dataclass(frozen=True)
class TierProblem:
    nodeid: str
    declared: tuple[str, ...]  # the tiers declared at the closest level that declares any (empty: none)

    def __str__(self) -> str:
        if not self.declared:
            return f"{self.nodeid}: no tier (add `pytestmark = pytest.mark.<{'|'.join(TIERS)}>` to its module)"
        return f"{self.nodeid}: two tiers at one level ({', '.join(self.declared)})"


def declared_tiers(node) -> tuple[str, ...]:
    names = {ALIASES.get(m.name, m.name) for m in node.own_markers}
    return tuple(t for t in TIERS if t in names)


def resolve(items) -> tuple[dict[str, str], list[TierProblem]]:
    """Each item's tier (nodeid -> tier) from its closest declaring node, and the items with none or two."""
    tiers, problems = {}, []
    for item in items:
        declared: tuple[str, ...] = ()
        for node in reversed(item.listchain()):
            declared = declared_tiers(node)
            if declared:
                break
        if len(declared) == 1:
            tiers[item.nodeid] = declared[0]
        else:
            problems.append(TierProblem(item.nodeid, declared))
    return tiers, problems


def apply_tiers(config, items) -> None:
    """Give each item its resolved tier as its only tier marker (what `-m` sees), `slow` with `e2e`."""
    tiers, problems = resolve(items)
    config.stash[PROBLEMS] = problems
    config.stash[COLLECTED] = {Path(item.path) for item in items}
    parents = {node for item in items for node in item.listchain()[:-1]}
    for node in parents:  # a module's declaration now lives on its items, where a test's own one can override it
        node.own_markers[:] = [m for m in node.own_markers if ALIASES.get(m.name, m.name) not in TIERS]
    for item in items:
        tier = tiers.get(item.nodeid)
        item.own_markers[:] = [m for m in item.own_markers if ALIASES.get(m.name, m.name) not in TIERS]
        if tier:
            item.add_marker(tier)
            if tier == "e2e":
                item.add_marker("slow")


PROBLEMS = pytest.StashKey[list]()  # this session's TierProblems, all collected items (before `-m` deselects)
COLLECTED = pytest.StashKey[set]()  # the files they came from
CURRENT: dict[str, str | None] = {"tier": None, "nodeid": None}


def tier_of(item) -> str | None:
    return next((t for t in TIERS if item.get_closest_marker(t)), None)


def refuse_below(tier: str, what: str) -> None:
    """Fail the running test if its tier is lower than `tier`, the one `what` needs."""
    current = CURRENT["tier"]
    if current in TIERS and TIERS.index(current) < TIERS.index(tier):
        pytest.fail(f"{CURRENT['nodeid']} is marked {current} but uses {what}: mark it {tier} (tests/tiers.py)", pytrace=False)


def refuse_in_unit(what: str) -> None:
    refuse_below("integration", what)


def enter(item) -> None:
    """Called before an item's fixtures are set up: the guards below read whose they are."""
    CURRENT.update(tier=tier_of(item), nodeid=item.nodeid)
    for name in item.fixturenames:
        if name in HEAVY_FIXTURES:
            refuse_below(HEAVY_FIXTURES[name], f"the fixture {name!r}")


def install_guards() -> None:
    """Quantization in this process and the CLI or registry in a child fail a unit test (once per session)."""
    real_init = subprocess.Popen.__init__

    def guarded_init(self, args, *a, **kw):
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        for needle, what in HEAVY_COMMANDS.items():
            if needle in text:
                refuse_in_unit(what)
        real_init(self, args, *a, **kw)

    subprocess.Popen.__init__ = guarded_init

    from quantkit.engines import ENGINES

    # on the class, not the instance: a test that monkeypatches an engine class's `run` must still reach it
    for cls in {type(e) for e in ENGINES.values()}:
        cls.run = _guarded_run(cls.run, cls.__name__)


def _guarded_run(real_run, engine_name: str):
    def run(self, job):
        refuse_in_unit(f"a quantization run ({engine_name})")
        return real_run(self, job)

    return run
