"""Errors a user can act on. The CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class QuantkitError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""

    exit_code = 2


class JobsFailed(QuantkitError):
    """Some jobs of a matrix failed; the others finished. Exit code 1 (a run failure, not bad input)."""

    exit_code = 1


class RecipeError(QuantkitError):
    """A recipe that does not validate; carries one message per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}\n{lines}")


class SchemeConstraintError(QuantkitError):
    """A quantization scheme the model's layer shapes cannot take (found before calibration)."""


class ArtifactError(QuantkitError):
    """An artifact folder that is missing, incomplete or does not match its manifest."""


class ModelSourceError(QuantkitError):
    """A model that cannot be found or read."""


class CalibrationError(QuantkitError):
    """Calibration data that cannot be found, read or tokenized."""
