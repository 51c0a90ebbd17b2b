"""Calibration sets: texts from a built-in set, a local file or a hub dataset, tokenized once.

Texts are shuffled (seeded), tokenized, joined with the EOS token and cut into
`num_samples` sequences of exactly `seq_len` tokens, so every sample is full length.
The sha256 of the token ids is the set's fingerprint: two runs that calibrate on the same
tokens have the same fingerprint, whatever file they came from.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from quantkit.calibration_sets import (
    BUILTIN_SPLITS,
    _holdout_files,
    builtin_dir,
    builtin_problem,
    builtin_sets,
)
from quantkit.errors import CalibrationError
from quantkit.recipe import CalibrationSpec
from quantkit.sources.chat_template import ChatTemplate, TemplateBudgetExceeded


@dataclass
class CalibrationSet:
    spec: CalibrationSpec
    input_ids: list[list[int]]
    fingerprint: str
    num_texts: int
    available_tokens: int

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.input_ids)

    def manifest_entry(self) -> dict:
        return {
            **self.spec.model_dump(),
            "fingerprint": self.fingerprint,
            "num_tokens": self.num_tokens,
            "num_texts_used": self.num_texts,
        }

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict(
            {"input_ids": self.input_ids, "attention_mask": [[1] * len(x) for x in self.input_ids]}
        )


def fingerprint_token_ids(input_ids: list[list[int]]) -> str:
    h = hashlib.sha256()
    for seq in input_ids:
        h.update(len(seq).to_bytes(4, "little"))
        h.update(b"".join(int(t).to_bytes(4, "little") for t in seq))
    return h.hexdigest()


def load_texts(spec: CalibrationSpec) -> list[str]:
    """The records calibration reads. Refuses (CalibrationError) what builtin_problem names, and a file
    whose bytes are those of a built-in holdout file (a copy of it)."""
    src = spec.source
    if problem := builtin_problem(src, spec.split):
        raise CalibrationError(problem)
    if src.startswith("builtin:"):
        return builtin_texts(src.removeprefix("builtin:"), spec.split)
    if src.startswith("hf:"):
        return _hub_texts(spec)
    path = Path(src).expanduser()
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path.resolve()}")
    size = path.stat().st_size
    for holdout in _holdout_files():
        if holdout.stat().st_size == size and holdout.read_bytes() == path.read_bytes():
            raise CalibrationError(f"calibration.source: {path.resolve()} holds the same bytes as {holdout}, the built-in "
                                   "holdout text `quantkit validate` scores; calibrating on it makes the quality figures "
                                   "dishonest; use builtin:NAME (its train split) or other text")
    return file_texts(path, spec.text_field)


def builtin_texts(name: str, split: str) -> list[str]:
    """The records of a built-in set's split (validate reads the holdout split through here too)."""
    if split not in BUILTIN_SPLITS:
        raise CalibrationError(f"built-in calibration sets have splits {', '.join(BUILTIN_SPLITS)}; got '{split}'")
    if name not in builtin_sets():  # a name, never a path: `../x` would reach outside the sets' folder
        raise CalibrationError(f"unknown built-in calibration set '{name}'; available: {', '.join(builtin_sets())}")
    if name == "mixed":
        prose, code = builtin_texts("prose", split), builtin_texts("code", split)
        mixed = []
        for i in range(max(len(prose), len(code))):
            mixed += ([prose[i]] if i < len(prose) else []) + ([code[i]] if i < len(code) else [])
        return mixed
    return file_texts(builtin_dir() / name / f"{split}.jsonl", "text")


def builtin_domain_text(domain: str, n_chars: int) -> str:
    """Held-out text of one built-in domain (`prose` or `code`), at least `n_chars` long if available."""
    text = ""
    for t in builtin_texts(domain, "holdout"):
        text += t + "\n\n"
        if len(text) >= n_chars:
            break
    return text


def builtin_holdout_text(n_chars: int) -> str:
    """Held-out prose and code (never calibrated on), alternating, at least `n_chars` long if available."""
    text = ""
    for prose, code in zip(builtin_texts("prose", "holdout"), builtin_texts("code", "holdout")):
        text += prose + "\n\n" + code + "\n\n"
        if len(text) >= n_chars:
            break
    return text


def file_texts(path: Path, text_field: str) -> list[str]:
    """The records of a file: JSON/parquet records as written; a .txt file's paragraphs, stripped.
    Anything unreadable (not UTF-8, not JSON, not parquet, a record whose text is not a string) is one
    CalibrationError naming the file and the record."""
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".json", ".parquet"):
        raise CalibrationError(f"{path}: unsupported calibration file type '{suffix}' (use .jsonl, .json, .txt or .parquet)")
    if suffix == ".parquet":
        return _parquet_texts(path, text_field)
    try:
        raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise CalibrationError(f"{path}: cannot read it ({e.strerror or e})") from None
    if suffix == ".txt":
        # paragraphs separated by blank lines are the records of a text file
        return [p.strip() for p in raw.split("\n\n") if p.strip()]
    if suffix == ".json":
        try:
            rows = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as e:
            raise CalibrationError(f"{path}: not valid JSON ({getattr(e, 'msg', 'nested too deep')})") from None
        if not isinstance(rows, list):
            raise CalibrationError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
        return [_field(row, text_field, f"{path}:{i}") for i, row in enumerate(rows, 1)]
    texts = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise CalibrationError(f"{path}:{i}: not valid JSON ({getattr(e, 'msg', 'nested too deep')})") from None
        texts.append(_field(row, text_field, f"{path}:{i}"))
    return texts


def _parquet_texts(path: Path, text_field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise CalibrationError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:200]})") from None
    if text_field not in table.column_names:
        raise CalibrationError(f"{path} has no column '{text_field}'; columns: {', '.join(table.column_names)}")
    texts = table.column(text_field).to_pylist()
    for i, t in enumerate(texts, 1):
        if not isinstance(t, str):
            raise CalibrationError(f"{path}: row {i}: '{text_field}' is {'null' if t is None else type(t).__name__}, not text")
    return texts


def _field(row, text_field: str, where: str) -> str:
    if not isinstance(row, dict) or text_field not in row:
        keys = ", ".join(map(str, row))[:200] if isinstance(row, dict) else type(row).__name__
        raise CalibrationError(f"{where}: no field '{text_field}' (found: {keys}); set `calibration.text_field`")
    text = row[text_field]
    if not isinstance(text, str):  # a null or a number is not text: "None" must not become calibration data
        raise CalibrationError(f"{where}: '{text_field}' is {'null' if text is None else type(text).__name__}, not text")
    return text


def _hub_texts(spec: CalibrationSpec) -> list[str]:
    import datasets

    name = spec.source.removeprefix("hf:")
    try:
        ds = datasets.load_dataset(name, spec.subset, split=spec.split)
    except Exception as e:  # datasets raises many types for "not found / offline"
        raise CalibrationError(
            f"could not load dataset '{name}' (subset={spec.subset}, split={spec.split}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if spec.text_field not in ds.column_names:
        raise CalibrationError(f"dataset '{name}' has no column '{spec.text_field}'; columns: {', '.join(ds.column_names)}")
    texts = ["" if t is None else t for t in ds[spec.text_field]]  # a missing text is an empty record
    if (bad := next((t for t in texts if not isinstance(t, str)), None)) is not None:
        raise CalibrationError(f"dataset '{name}': '{spec.text_field}' holds {type(bad).__name__} values, not text")
    return texts


def build_calibration(spec: CalibrationSpec, tokenizer) -> CalibrationSet:
    """Empty records are left out (each would add only an end-of-sequence token); a source with no text
    left is refused with the count. A chat template renders at a bounded cost (sources.chat_template)."""
    records = load_texts(spec)
    texts = [t for t in records if t.strip()]
    if not records:
        raise CalibrationError(f"calibration source '{spec.source}' holds no text")
    if not texts:
        raise CalibrationError(f"calibration source '{spec.source}': {len(records)} of {len(records)} records are empty; "
                               "no text remains to calibrate on")
    if spec.shuffle_seed is not None:
        texts = texts[:]
        random.Random(spec.shuffle_seed).shuffle(texts)
    needed = spec.num_samples * spec.seq_len
    if spec.chat_template and not getattr(tokenizer, "chat_template", None):
        raise CalibrationError("calibration.chat_template is true, but the model's tokenizer has no chat template; "
                               "set it to false (plain text) or use a model that ships one")
    template = _chat_template(tokenizer) if spec.chat_template else None
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    used = 0
    for text in texts:
        if template is not None:
            try:
                rendered = template.render_user_turn(text)
            except TemplateBudgetExceeded as e:
                raise CalibrationError(f"the tokenizer's chat template is refused: {e}; a chat template that needs "
                                       "more is not rendered (it comes from the model folder)") from None
            except Exception as e:  # jinja2's TemplateError and whatever the template raises
                raise CalibrationError(f"the tokenizer's chat template fails on a calibration text "
                                       f"({type(e).__name__}: {str(e)[:200]})") from None
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]  # as apply_chat_template tokenizes
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        stream += list(ids) + sep
        used += 1
        if len(stream) >= needed:
            break
    if len(stream) < needed:
        raise CalibrationError(
            f"calibration source '{spec.source}' has {len(stream)} tokens; num_samples × seq_len = "
            f"{spec.num_samples} × {spec.seq_len} = {needed} are needed. Lower one of them or add text."
        )
    input_ids = [stream[i * spec.seq_len : (i + 1) * spec.seq_len] for i in range(spec.num_samples)]
    return CalibrationSet(spec, input_ids, fingerprint_token_ids(input_ids), used, len(stream))


def _chat_template(tokenizer) -> ChatTemplate:
    """The tokenizer's chat template, compiled in the bounded environment (one line when it is refused)."""
    try:
        return ChatTemplate(tokenizer.get_chat_template(), dict(tokenizer.special_tokens_map))
    except TemplateBudgetExceeded as e:  # jinja2 folds constant expressions while it compiles
        raise CalibrationError(f"the tokenizer's chat template is refused: {e}") from None
    except Exception as e:  # a template that does not parse
        raise CalibrationError(f"the tokenizer's chat template does not compile ({type(e).__name__}: {str(e)[:200]})") from None
