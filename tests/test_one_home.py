"""One home per idea: no module branches on a format, method, check or destination name except the
module that owns it (quantkit.formats, the engine, the check, the destination) and the registries that
map names to owners. A new format, method or check then lands in its own module, never as one more
`if fmt == "..."` somewhere else (docs/architecture.md)."""

import ast

import pytest
from conftest import REPO

pytestmark = pytest.mark.unit


def _owned_names() -> dict[str, tuple[str, ...]]:
    """name -> the modules allowed to compare against it (paths relative to quantkit/)."""
    from quantkit.checks import CHECKS
    from quantkit.formats import FORMATS
    from quantkit.publish.destinations import DESTINATIONS
    from quantkit.recipe import METHODS

    owners: dict[str, tuple[str, ...]] = {}
    for name in FORMATS:
        owners[name] = ("formats/",)
    for method in METHODS:  # an engine names the methods it makes (engines/<engine>.py); the recipe defines them
        owners.setdefault(method, ())
        owners[method] = (*owners[method], "engines/", "recipe.py")
    for check in CHECKS:
        owners[check] = (f"checks/{CHECKS[check].split(':')[0].rsplit('.', 1)[-1]}.py",)
    for kind in DESTINATIONS:
        owners[kind] = (f"publish/destinations/{DESTINATIONS[kind].split(':')[0].rsplit('.', 1)[-1]}.py",
                        "publish/destinations/__init__.py")
    return owners


def _compared_strings(node: ast.AST) -> set[str]:
    """String constants a comparison tests against (`x == "gguf"`, `x in ("fp8", "int8")`)."""
    found = set()
    if isinstance(node, ast.Compare):
        for side in (node.left, *node.comparators):
            if isinstance(side, ast.Constant) and isinstance(side.value, str):
                found.add(side.value)
            elif isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                found |= {e.value for e in side.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return found


def branches_outside_owners() -> list[str]:
    owners = _owned_names()
    wrong = []
    for path in sorted((REPO / "quantkit").rglob("*.py")):
        rel = path.relative_to(REPO / "quantkit").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _compared_strings(node) & set(owners):
                if not any(rel == o or (o.endswith("/") and rel.startswith(o)) for o in owners[name]):
                    wrong.append(f"quantkit/{rel}:{node.lineno} compares with {name!r} (its home: {', '.join(owners[name])})")
    return wrong


def test_no_module_branches_on_a_name_it_does_not_own():
    wrong = branches_outside_owners()
    assert not wrong, "\n".join(wrong)


def test_the_scan_finds_a_planted_branch(tmp_path, monkeypatch):
    planted = REPO / "quantkit" / "_planted_branch_probe.py"
    planted.write_text('def f(fmt):\n    return fmt == "gguf" or fmt in ("kld", "x")\n')
    try:
        found = [w for w in branches_outside_owners() if "_planted_branch_probe" in w]
    finally:
        planted.unlink()
    assert any("'gguf'" in w for w in found) and any("'kld'" in w for w in found), found
