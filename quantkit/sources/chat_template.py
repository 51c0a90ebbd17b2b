"""A model's chat template rendered at a bounded cost.

A chat template comes from the model folder (tokenizer_config.json, chat_template.jinja): untrusted
input. transformers renders it in jinja2's sandbox, which keeps it from reaching Python objects but
not from running forever (`{% for a in range(99999) %}{% for b in range(99999) %}...`) or building a
string of gigabytes. Here the same template is compiled in the same kind of environment as transformers'
(trim_blocks, lstrip_blocks, loop controls, `tojson`, `raise_exception`, `strftime_now`, the
`generation` tag) and rendered with the same variables, so the text is what `apply_chat_template`
gives; but every render has a budget of Python line events (every loop turn and every filter's own
loop count), and no operator, call or filter may make or be asked for more than `limit` characters.
Over budget is a TemplateBudgetExceeded, which calibration reports as one line.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Sized
from datetime import datetime

MAX_STEPS = 200_000  # Python line events per render; a real template takes a few thousand
MIN_LIMIT_CHARS = 100_000  # characters any one value may reach, at the least (more for a long text)
_BIG_NUMBER = re.compile(r"\d{7,}")  # a width or precision in a format string that would make a huge string


class TemplateBudgetExceeded(BaseException):
    """The template took more steps, or made a larger value, than a chat template needs. A BaseException:
    no `except Exception` in a filter or in jinja2 can swallow it and let the render go on untraced."""


def char_limit(text: str) -> int:
    """The size any one value of a render may reach: room for the text a few times over, and markup."""
    return MIN_LIMIT_CHARS + 8 * len(text)


def _size(value) -> int:
    return len(value) if isinstance(value, Sized) and not isinstance(value, range) else 0


def _check_number(value, limit: int, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
        raise TemplateBudgetExceeded(f"{what} is given the number {value}, over the limit of {limit}")


def _check_format(value, what: str) -> None:
    if isinstance(value, str) and _BIG_NUMBER.search(value):
        raise TemplateBudgetExceeded(f"{what}: the format {value[:40]!r} asks for a width or precision over 999999")


def _check_result(value, limit: int, what: str):
    if _size(value) > limit:
        raise TemplateBudgetExceeded(f"{what} made a value of {_size(value)} items, over the limit of {limit}")
    return value


def _environment(bound: "Limit"):
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """transformers' `{% generation %}...{% endgeneration %}` (it marks assistant text): its body, as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Bounded(ImmutableSandboxedEnvironment):
        # these operators go through call_binop (and are not folded at compile time): each is checked first
        intercepted_binops = frozenset({"*", "**", "+", "%"})

        def call_binop(self, context, operator, left, right):
            limit = bound.chars
            if operator == "*":
                count = next((v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)), 0)
                if max(_size(left), _size(right)) * abs(count) > limit:
                    raise TemplateBudgetExceeded(f"'*' would make a value of {max(_size(left), _size(right)) * abs(count)} "
                                                 f"items, over the limit of {limit}")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
                if right * math.log10(abs(left)) > limit:
                    raise TemplateBudgetExceeded(f"'**' would make a number of about {right * math.log10(abs(left)):.0f} "
                                                 f"digits, over the limit of {limit}")
            elif operator == "+" and _size(left) + _size(right) > limit:
                raise TemplateBudgetExceeded(f"'+' would make a value of {_size(left) + _size(right)} items, over the "
                                             f"limit of {limit}")
            elif operator == "%":
                _check_format(left, "'%'")
                for v in right if isinstance(right, tuple) else (right,):
                    _check_number(v, limit, "'%'")
            return _check_result(super().call_binop(context, operator, left, right), limit, f"'{operator}'")

        def getattr(self, obj, attribute):
            if isinstance(obj, str) and attribute in ("format", "format_map"):  # the sandbox wraps these: check here
                _check_format(obj, f"{attribute}()")
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):  # `'...'['format']` reaches the method too
            if isinstance(obj, str) and argument in ("format", "format_map"):
                _check_format(obj, f"{argument}()")
            return super().getitem(obj, argument)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's own signature
            limit = bound.chars
            name = getattr(__obj, "__name__", type(__obj).__name__)
            for v in (*args, *kwargs.values()):
                _check_number(v, limit, f"{name}()")
            return _check_result(super().call(__context, __obj, *args, **kwargs), limit, f"{name}()")

    def guarded(name, fn):
        @functools.wraps(fn)  # keeps jinja2's pass_context / pass_eval_context marks
        def run(*args, **kwargs):
            limit = bound.chars
            for v in (*args, *kwargs.values()):
                _check_number(v, limit, f"the filter '{name}'")
            if name == "format":
                _check_format(next((a for a in args if isinstance(a, str)), None), "the filter 'format'")
            return _check_result(fn(*args, **kwargs), limit, f"the filter '{name}'")

        return run

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: guarded(name, fn) for name, fn in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class _StepBudget:
    """A sys.settrace tracer that counts line events of every frame and stops the render past `steps`."""

    def __init__(self, steps: int):
        self.left = steps

    def __call__(self, frame, event, arg):
        return self._line

    def _line(self, frame, event, arg):
        if event == "line":
            self.left -= 1
            if self.left < 0:
                raise TemplateBudgetExceeded(f"the render took more than {MAX_STEPS} steps (a loop too long, or nested)")
        return self._line

    def __enter__(self):
        self._before = sys.gettrace()  # a debugger's or coverage's tracer, put back afterwards
        sys.settrace(self)
        return self

    def __exit__(self, *exc):
        sys.settrace(self._before)
        return False


class ChatTemplate:
    """A chat template compiled once, rendered for one user turn at a time as transformers'
    apply_chat_template renders it (add_generation_prompt false), with `variables` (the tokenizer's
    special tokens). Compiling is not budgeted: its cost grows with the template's length only."""

    def __init__(self, template: str, variables: dict):
        self.limit = Limit(MIN_LIMIT_CHARS)
        self.variables = variables
        self.compiled = _environment(self.limit).from_string(template)
        # `~` joins strings outside the operators: its helpers are checked in this template's own namespace
        namespace = self.compiled.root_render_func.__globals__
        for helper in ("str_join", "markup_join"):
            if helper in namespace:
                namespace[helper] = _bounded_join(namespace[helper], self.limit)

    def render_user_turn(self, text: str) -> str:
        """Raises TemplateBudgetExceeded past the budget, jinja2's TemplateError for a template that fails."""
        self.limit.chars = char_limit(text)
        with _StepBudget(MAX_STEPS):
            rendered = self.compiled.render(messages=[{"role": "user", "content": text}], tools=None, documents=None,
                                            add_generation_prompt=False, **self.variables)
        return _check_result(rendered, self.limit.chars, "the render")


class Limit:
    """The size limit of the render in progress (set per text; read by the environment's checks)."""

    def __init__(self, chars: int):
        self.chars = chars


def _bounded_join(join, limit: Limit):
    def run(seq):
        parts = list(seq)
        if sum(len(str(p)) for p in parts) > limit.chars:
            raise TemplateBudgetExceeded(f"'~' would make a string over the limit of {limit.chars} characters")
        return join(parts)

    return run
