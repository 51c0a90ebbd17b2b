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

MAX_RECIPE_BYTES = 256 << 10
MAX_KEYS = 1000  # per mapping
# libyaml when PyYAML was built with it (the wheels are): parsing a large hostile file takes milliseconds
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 32  # recipes nest 4 deep; a deeper document is an attack or an accident
MAX_PROBLEMS = 20  # reported per recipe; the rest are counted
MAX_SHOWN = 80  # characters of a bad value quoted in a message


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    p = Path(path)
    try:
        if not p.is_file():
            raise RecipeError(str(path), [f"recipe file not found: {p.resolve()}"])
        raw = p.read_bytes()
    except OSError as e:  # a symlink loop, a permission, a name too long
        raise RecipeError(str(path), [f"cannot read the recipe: {e.strerror or e}"]) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(str(path), [f"the recipe is {len(raw)} bytes; recipes are at most {MAX_RECIPE_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RecipeError(str(path), [f"line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"]) from None
    return parse_recipe(text, source=str(path), overrides=overrides)


def parse_recipe(text: str, source: str = "<recipe>", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    problems = structure_problems(text)
    if problems:
        raise RecipeError(source, problems)
    try:
        root_node = yaml.compose(text, Loader=SafeLoader)
        data = yaml.load(text, Loader=SafeLoader)
    except yaml.YAMLError as e:
        raise RecipeError(source, [_yaml_error(e)]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["the recipe must be a YAML mapping with keys name, model, calibration, outputs"])
    if overrides and isinstance(data.get("model"), str):
        data["model"] = {"source": data["model"]}
    for ov in overrides:
        try:
            _apply_override(data, ov)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise RecipeError(source, _capped(problems))
    # `model` is optional only in favour of `models`: say it is missing like any required field, beside the others
    no_model = [] if "model" in data or "models" in data else [
        "model: Field required (the model to quantize; or several under `models` for a matrix)"]
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        errors = [err for err in e.errors(include_url=False) if not (no_model and "not neither" in str(err.get("msg")))]
        described = [_describe_error(err, data, root_node) for err in errors[:MAX_PROBLEMS]]
        raise RecipeError(source, _capped(no_model + described, len(errors) + len(no_model))) from None
    return recipe


def structure_problems(text: str) -> list[str]:
    """What a recipe's YAML may not hold, found from the event stream before anything is built
    (iterative: no recursion, no alias expansion): aliases (a "billion laughs" of anchors expands
    exponentially), nesting deeper than MAX_DEPTH, duplicate keys (YAML would keep the last one
    silently), keys that are not plain scalars."""
    stack: list[list] = []  # per open collection: [kind, {key: line}, expecting a key]
    try:
        for ev in yaml.parse(text, Loader=SafeLoader):
            line = ev.start_mark.line + 1 if ev.start_mark else None
            if isinstance(ev, yaml.AliasEvent):
                return [f"line {line}: YAML aliases (*{ev.anchor}) are not allowed in recipes; write the value out"]
            top = stack[-1] if stack else None
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if top and top[0] == "map":
                    if top[2]:
                        return [f"line {line}: a mapping key must be a plain value, not a list or mapping"]
                    top[2] = True  # this collection is the value; the parent expects a key after it
                stack.append(["map" if isinstance(ev, yaml.MappingStartEvent) else "seq", {}, True])
                if len(stack) > MAX_DEPTH:
                    return [f"line {line}: nested more than {MAX_DEPTH} levels deep"]
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
            elif isinstance(ev, yaml.ScalarEvent) and top and top[0] == "map":
                if top[2]:
                    if ev.value in top[1]:
                        return [f"line {line}: key '{_short(ev.value)}' appears twice in one mapping "
                                f"(first on line {top[1][ev.value]}); YAML would silently keep only the last"]
                    top[1][ev.value] = line
                    if len(top[1]) > MAX_KEYS:
                        return [f"line {line}: more than {MAX_KEYS} keys in one mapping"]
                top[2] = not top[2]
    except yaml.YAMLError as e:
        return [_yaml_error(e)]
    return []


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        what = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {_short(what, 200)}"
    return f"not readable as YAML: {_short(str(e).splitlines()[0] if str(e) else type(e).__name__, 200)}"


def _short(value, limit: int = MAX_SHOWN) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _capped(problems: list[str], total: int | None = None) -> list[str]:
    total = len(problems) if total is None else total
    shown = problems[:MAX_PROBLEMS]
    return shown + ([f"... and {total - len(shown)} more problems"] if total > len(shown) else [])


def _apply_override(data: dict, override: str) -> None:
    """`a.b.0.c=VALUE`: VALUE is parsed as YAML (so `16`, `true`, `[a, b]` have their types)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override '{_short(override)}' must look like KEY=VALUE, e.g. calibration.num_samples=16")
    problems = structure_problems(raw)
    if problems:
        raise ValueError(f"override '{_short(override)}': {problems[0]}")
    try:
        value = yaml.load(raw, Loader=SafeLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"override '{_short(override)}': {_yaml_error(e)}") from None
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part, ".".join(parts[: i + 1]))
        if nxt is None:
            nxt = {}
            node[part] = nxt
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ValueError(f"override '{_short(override)}': '{'.'.join(parts[:-1])}' is not a mapping or list")


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
        return f"{where}: got {_short(repr(err['input']))}; allowed values: {ctx.get('expected', '')}"
    if kind == "union_tag_invalid":
        return f"{where}: unknown method {_short(repr(ctx.get('tag')))}; allowed methods: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{where}: missing `method`; allowed methods: {', '.join(METHODS)}"
    if kind == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"]
    if kind == "value_error":
        return f"{where}: {_short(msg.removeprefix('Value error, '), 300)}"
    value = err.get("input")
    if isinstance(value, (bool, int, float, str)) or value is None:  # strict types: say what was there
        return f"{where}: {msg}; got {_short(repr(value))}"
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
    for part in (p if isinstance(p, int) else _short(str(p), 40) for p in loc):
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
