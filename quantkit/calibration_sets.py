"""The built-in calibration sets by name (`builtin:prose|code|mixed`) and what a recipe may not calibrate on
(a name that is not a set, a holdout split, a built-in holdout file): facts the recipe's validation asks
without loading any text (quantkit.sources.calibration reads the texts)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUILTIN_SPLITS = ("train", "holdout")
# what calibration may read of a built-in set: its holdout split is the text `quantkit validate` scores
CALIBRATION_SPLIT = "train"


def builtin_dir() -> Path:
    return Path(str(resources.files("quantkit_calibration")))


def builtin_sets() -> list[str]:
    names = sorted(p.name for p in builtin_dir().iterdir() if (p / "train.jsonl").is_file())
    return names + ["mixed"]


def builtin_problem(source: str, split: str) -> str | None:
    """What is wrong with a calibration `source` and `split`, from the names and paths alone: a built-in
    set that does not exist (`builtin:../x` is not a set), its holdout split, or a local path that is a
    built-in holdout file. None when nothing is. The recipe's validation and load_texts both ask."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in builtin_sets():
            return f"calibration.source: unknown built-in calibration set '{name}'; available: " + ", ".join(
                f"builtin:{n}" for n in builtin_sets())
        if split != CALIBRATION_SPLIT:
            if split not in BUILTIN_SPLITS:
                return f"calibration.split: '{split}': built-in sets have splits {', '.join(BUILTIN_SPLITS)}; calibrate on train"
            files = ", ".join(str(builtin_dir() / n / f"{split}.jsonl") for n in _members(name))
            return (f"calibration.split: '{split}' of {source} ({files}) is the text `quantkit validate` scores; calibrating "
                    f"on it makes the quality figures dishonest; use split '{CALIBRATION_SPLIT}'")
        return None
    if source.startswith("hf:"):
        return None
    path = Path(source).expanduser()
    if path.is_file() and path.resolve() in _holdout_files():
        return (f"calibration.source: {path.resolve()} is a built-in holdout file, the text `quantkit validate` scores; "
                "calibrating on it makes the quality figures dishonest; use builtin:NAME (its train split) or other text")
    return None


def _members(name: str) -> list[str]:
    return ["prose", "code"] if name == "mixed" else [name]


def _holdout_files() -> list[Path]:
    return [(builtin_dir() / n / "holdout.jsonl").resolve() for n in builtin_sets() if n != "mixed"]
