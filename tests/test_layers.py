"""The floors of the house: no module imports one from a higher floor, and no import cycle exists, not
even through imports inside functions or under TYPE_CHECKING (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.unit

# lowest first; a module may import its own floor and the ones below
LAYERS: list[tuple[str, ...]] = [
    ("quantkit.errors", "quantkit.files", "quantkit.cache_store", "quantkit.device", "quantkit.progress", "quantkit.reporters",
     "quantkit.memory", "quantkit.background", "quantkit.threads", "quantkit.library_logs"),
    ("quantkit.gates", "quantkit.calibration_sets", "quantkit.formats"),
    ("quantkit.recipe", "quantkit.artifact", "quantkit.artifact_files", "quantkit.output_roots", "quantkit.report.model",
     "quantkit.report.plots"),
    ("quantkit.recipe_loader", "quantkit.recipe_errors", "quantkit.sources", "quantkit.toolchains",
     "quantkit.jobs", "quantkit.coverage"),
    ("quantkit.engines", "quantkit.runtimes", "quantkit.tasks", "quantkit.serving"),
    ("quantkit.checks", "quantkit.publish", "quantkit.estimates", "quantkit.resume", "quantkit.report"),
    ("quantkit.quantize", "quantkit.preflight", "quantkit.matrix", "quantkit.validate", "quantkit.serving.verb",
     "quantkit.testing", "quantkit.publish.verbs"),
    ("quantkit.executors",),
    ("quantkit.cli",),
    ("quantkit",),  # the package facade
]


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, floor = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), i
    assert floor is not None, f"{module} is on no floor: add it to LAYERS"
    return floor


def quantkit_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (REPO / "quantkit").rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every quantkit module `path` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("quantkit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantkit"):
            for a in node.names:  # `from quantkit.cli import env` imports the module quantkit.cli.env
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known}


def test_no_module_imports_a_higher_floor():
    mods = quantkit_modules()
    wrong = []
    for name, path in mods.items():
        for dep in imports_of(path, set(mods)):
            if layer_of(dep) > layer_of(name):
                wrong.append(f"{name} (floor {layer_of(name)}) imports {dep} (floor {layer_of(dep)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    mods = quantkit_modules()
    # a package's __init__ is entered before any of its modules: an edge from the package to its module is not a cycle
    graph = {name: {d for d in imports_of(path, set(mods)) if d != name} for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
