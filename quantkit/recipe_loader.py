"""Reading recipes: YAML (with line numbers for every error), `--set` overrides, then the pydantic models.

Each problem becomes one message naming the field path, its YAML line and what is allowed, e.g.
`outputs[0].scheme (line 8): got 'W4A61'; allowed values: 'W4A16', 'W4A16_ASYM' or 'W8A16'`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from quantkit.errors import RecipeError
from quantkit.recipe import METHODS, OUTPUT_CLASSES, CalibrationSpec, ModelSpec, Recipe


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(str(path), [f"recipe file not found: {p.resolve()}"])
    return parse_recipe(p.read_text(encoding="utf-8"), source=str(path), overrides=overrides)


def parse_recipe(text: str, source: str = "<recipe>", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise RecipeError(source, [f"YAML syntax error at {where}: {e.problem or e.context}"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["the recipe must be a YAML mapping with keys name, model, calibration, outputs"])
    problems = []
    if overrides and isinstance(data.get("model"), str):
        data["model"] = {"source": data["model"]}
    for ov in overrides:
        try:
            _apply_override(data, ov)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise RecipeError(source, problems)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(source, [_describe_error(err, data, root_node) for err in e.errors()]) from None


def _apply_override(data: dict, override: str) -> None:
    """`a.b.0.c=VALUE`: VALUE is parsed as YAML (so `16`, `true`, `[a, b]` have their types)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override '{override}' must look like KEY=VALUE, e.g. calibration.num_samples=16")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part, ".".join(parts[: i + 1]))
        if nxt is None:
            nxt = {}
            node[part] = nxt
        node = nxt
    value = yaml.safe_load(raw)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ValueError(f"override '{override}': '{'.'.join(parts[:-1])}' is not a mapping or list")


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if isinstance(node, dict):
        return node.get(part)
    raise ValueError(f"override path '{path}' goes through a scalar")


def _index(node: list, part: str, path: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"override path '{path}': '{part}' is not an index of a list of {len(node)} items")
    return int(part)


def _describe_error(err: dict, data: Any, root_node: yaml.Node | None) -> str:
    loc = _clean_loc(err["loc"], data)
    path = _format_loc(loc) or "(recipe)"
    line = _line_of(root_node, loc)
    where = f"{path} (line {line})" if line else path
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent_model = _model_at(loc[:-1], data)
        allowed = sorted(parent_model.model_fields) if parent_model else []
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        return f"{where}: unknown field.{hint} Allowed fields: {', '.join(allowed)}"
    if kind == "literal_error":
        return f"{where}: got {err['input']!r}; allowed values: {ctx.get('expected', '')}"
    if kind == "union_tag_invalid":
        return f"{where}: unknown method {ctx.get('tag')!r}; allowed methods: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{where}: missing `method`; allowed methods: {', '.join(METHODS)}"
    if kind == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}"


def _clean_loc(loc: tuple, data: Any) -> tuple:
    """Drop pydantic's union-tag and type segments so the path matches the YAML."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and isinstance(part, str) and (
            part in METHODS or part in ("str", "int")
        ):
            continue
        if isinstance(part, str) and "[" in part and "]" in part and not (isinstance(node, dict) and part in node):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _format_loc(loc: tuple) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at `loc` (for field suggestions)."""
    if loc == ():
        return Recipe
    if loc == ("model",):
        return ModelSpec
    if loc == ("calibration",):
        return CalibrationSpec
    if len(loc) == 2 and loc[0] == "outputs" and isinstance(loc[1], int):
        outputs = data.get("outputs") if isinstance(data, dict) else None
        if isinstance(outputs, list) and loc[1] < len(outputs) and isinstance(outputs[loc[1]], dict):
            return OUTPUT_CLASSES.get(outputs[loc[1]].get("method"))
    return None
