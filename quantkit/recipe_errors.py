"""A recipe's pydantic validation error as one message per problem: the field path as the YAML writes it, its
line, and what is allowed (unknown fields with a close match, literal values, methods)."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel

from quantkit.recipe import METHODS, OUTPUT_CLASSES, CalibrationSpec, ModelSpec, Recipe

MAX_SHOWN = 80  # characters of a bad value quoted in a message


def shortened(value, limit: int = MAX_SHOWN) -> str:
    """`value` as quoted in a message: cut at `limit` characters, with its length said."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def describe_error(err: dict, data: Any, root_node: yaml.Node | None) -> str:
    """One pydantic error as the message a recipe author reads: the YAML path, its line, what is allowed."""
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
        return f"{where}: got {shortened(repr(err['input']))}; allowed values: {ctx.get('expected', '')}"
    if kind == "union_tag_invalid":
        return f"{where}: unknown method {shortened(repr(ctx.get('tag')))}; allowed methods: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{where}: missing `method`; allowed methods: {', '.join(METHODS)}"
    if kind == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"]
    if kind == "value_error":
        return f"{where}: {shortened(msg.removeprefix('Value error, '), 300)}"
    value = err.get("input")
    if isinstance(value, (bool, int, float, str)) or value is None:  # strict types: say what was there
        return f"{where}: {msg}; got {shortened(repr(value))}"
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
    for part in (p if isinstance(p, int) else shortened(str(p), 40) for p in loc):
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
