"""Reading recipes: YAML (with line numbers for every error), `--set` overrides, then the pydantic models.

Each problem becomes one message naming the field path, its YAML line and what is allowed, e.g.
`outputs[0].scheme (line 8): got 'W4A61'; allowed values: 'W4A16', 'W4A16_ASYM' or 'W8A16'`
(quantkit.recipe_errors writes the messages for pydantic's errors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quantkit.errors import RecipeError
from quantkit.recipe import Recipe
from quantkit.recipe_errors import describe_error, shortened

MAX_RECIPE_BYTES = 256 << 10
MAX_KEYS = 1000  # per mapping
# libyaml when PyYAML was built with it (the wheels are): parsing a large hostile file takes milliseconds
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 32  # recipes nest 4 deep; a deeper document is an attack or an accident
MAX_PROBLEMS = 20  # reported per recipe; the rest are counted
# a number literal's length: far past any recipe value, far below Python's 4,300-digit int parsing limit
# (and a hex literal of 100 characters is about 120 decimal digits, still printable in a message)
MAX_NUMBER_CHARS = 100

# YAML 1.1 (PyYAML) reads these plain scalars as something other than what was written
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")  # octal when every digit is below 8 (010 is 8), else a string ('08')
_BASE_60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")  # 1:04 is 64
_NUMBER = re.compile(r"[-+]?(?:0b[0-1_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+][0-9]+)?"
                     r"|\.[0-9_]+(?:[eE][-+][0-9]+)?)")
_NUMBER_TAGS = (None, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _RecipeLoader(SafeLoader):
    """SafeLoader whose scalar constructors raise a YAML error at the value's line where they would raise
    a bare ValueError (`2024-13-45` is a timestamp of month 13)."""


def _at_its_line(construct):
    def construct_or_say_where(loader, node):
        try:
            return construct(loader, node)
        except ValueError as e:
            raise yaml.constructor.ConstructorError(
                None, None, f"{shortened(node.value)} cannot be read as a {node.tag.rsplit(':', 1)[-1]} ({e})", node.start_mark,
            ) from None

    return construct_or_say_where


for _tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"):
    _RecipeLoader.add_constructor(_tag, _at_its_line(SafeLoader.yaml_constructors[_tag]))


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
        data = yaml.load(text, Loader=_RecipeLoader)
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
        described = [describe_error(err, data, root_node) for err in errors[:MAX_PROBLEMS]]
        raise RecipeError(source, _capped(no_model + described, len(errors) + len(no_model))) from None
    return recipe


@dataclass
class _Open:
    """A mapping or sequence being read, with the path of the field it is."""

    kind: str  # "map" | "seq"
    path: str
    keys: dict[str, int] = field(default_factory=dict)  # key -> its line
    expecting_key: bool = True
    key: str = ""  # the key whose value comes next
    items: int = 0

    def value_path(self) -> str:
        """The path of the value that comes next; moves on past it."""
        if self.kind == "seq":
            self.items += 1
            return f"{self.path}[{self.items - 1}]"
        self.expecting_key = True
        key = shortened(self.key, 40)
        return f"{self.path}.{key}" if self.path else key


def structure_problems(text: str, root: str = "", lines: bool = True) -> list[str]:
    """What a recipe's YAML may not hold, found from the event stream before anything is built
    (iterative: no recursion, no alias expansion): aliases (a "billion laughs" of anchors expands
    exponentially), nesting deeper than MAX_DEPTH, duplicate keys (YAML would keep the last one
    silently), keys that are not plain scalars; and what YAML 1.1 would read as other than written
    (`_as_written_problem`). `root`: the field path of the document (an override's key); `lines`:
    whether messages give YAML line numbers (not for a one-line override)."""
    stack: list[_Open] = []
    problems: list[str] = []

    def where(path: str, line: int) -> str:
        path = path or "(recipe)"
        return f"{path} (line {line})" if lines else path

    try:
        for ev in yaml.parse(text, Loader=SafeLoader):
            line = ev.start_mark.line + 1 if ev.start_mark else 0
            if isinstance(ev, yaml.AliasEvent):
                return problems + [f"line {line}: YAML aliases (*{ev.anchor}) are not allowed in recipes; write the value out"]
            top = stack[-1] if stack else None
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if top and top.kind == "map" and top.expecting_key:
                    return problems + [f"line {line}: a mapping key must be a plain value, not a list or mapping"]
                path = top.value_path() if top else root
                stack.append(_Open("map" if isinstance(ev, yaml.MappingStartEvent) else "seq", path))
                if len(stack) > MAX_DEPTH:
                    return problems + [f"line {line}: nested more than {MAX_DEPTH} levels deep"]
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                stack.pop()
            elif isinstance(ev, yaml.ScalarEvent):
                plain = ev.style in (None, "")  # libyaml says "" for a plain scalar, PyYAML None
                if top and top.kind == "map" and top.expecting_key:
                    if ev.value in top.keys:
                        return problems + [f"line {line}: key '{shortened(ev.value)}' appears twice in one mapping "
                                           f"(first on line {top.keys[ev.value]}); YAML would silently keep only the last"]
                    if plain and ev.value == "<<":
                        problems.append(f"{where(top.path, line)}: '<<' is a YAML merge key, which would set the keys "
                                        "of the mapping after it silently (and past the duplicate-key check); "
                                        "write the keys out, or quote it ('<<') for a key of that name")
                    top.keys[ev.value] = line
                    if len(top.keys) > MAX_KEYS:
                        return problems + [f"line {line}: more than {MAX_KEYS} keys in one mapping"]
                    top.key, top.expecting_key = ev.value, False
                    continue
                path = top.value_path() if top else root
                if plain and ev.tag in _NUMBER_TAGS and (problem := _as_written_problem(ev.value, ev.tag)):
                    problems.append(f"{where(path, line)}: {problem}")
    except yaml.YAMLError as e:
        return problems + [_yaml_error(e)]
    return _capped(problems)


def _as_written_problem(value: str, tag: str | None = None) -> str | None:
    """Why a plain scalar (with its explicit tag, if any) would not be read as written (YAML 1.1), or None."""
    if len(value) > MAX_NUMBER_CHARS and (_NUMBER.fullmatch(value) or _BASE_60.fullmatch(value)):
        return (f"a number of {len(value)} characters ({value[:20]}…); numbers in a recipe are at most "
                f"{MAX_NUMBER_CHARS} characters")
    quote = f"or quote it as a string ('{value}')"
    tagged = f"!<{tag}> {value}" if tag else value
    if _LEADING_ZERO.fullmatch(value):
        read = yaml.load(tagged, Loader=SafeLoader)
        decimal = int(value.replace("_", ""), 10)
        if tag == "tag:yaml.org,2002:float":  # `!!float 010` is 10.0, as written
            return None
        read_as = f"{read} (octal)" if isinstance(read, int) else repr(read)
        return f"{value} has a leading zero, which YAML 1.1 reads as {read_as}; write {decimal}, {quote}"
    if _BASE_60.fullmatch(value):
        read = yaml.load(tagged, Loader=SafeLoader)
        return f"{value} is a YAML 1.1 base-60 number, which reads as {read}; write {read}, {quote}"
    return None


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        what = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {shortened(what, 200)}"
    return f"not readable as YAML: {shortened(str(e).splitlines()[0] if str(e) else type(e).__name__, 200)}"


def _capped(problems: list[str], total: int | None = None) -> list[str]:
    total = len(problems) if total is None else total
    shown = problems[:MAX_PROBLEMS]
    return shown + ([f"... and {total - len(shown)} more problems"] if total > len(shown) else [])


def _apply_override(data: dict, override: str) -> None:
    """`a.b.0.c=VALUE`: VALUE is parsed as YAML (so `16`, `true`, `[a, b]` have their types)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override '{shortened(override)}' must look like KEY=VALUE, e.g. calibration.num_samples=16")
    problems = structure_problems(raw, root=key, lines=False)
    if problems:
        raise ValueError(f"override '{shortened(override)}': {problems[0]}")
    try:
        value = yaml.load(raw, Loader=_RecipeLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"override '{shortened(override)}': {_yaml_error(e)}") from None
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
        raise ValueError(f"override '{shortened(override)}': '{'.'.join(parts[:-1])}' is not a mapping or list")


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if isinstance(node, dict):
        return node.get(part)
    raise ValueError(f"override path '{shortened(path)}' goes through a scalar")


def _index(node: list, part: str, path: str) -> int:
    if not (part.isascii() and part.isdigit()) or len(part) > 9 or int(part) >= len(node):
        raise ValueError(f"override path '{shortened(path)}': '{shortened(part, 20)}' is not an index of a list of "
                         f"{len(node)} items")
    return int(part)
