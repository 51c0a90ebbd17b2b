"""Held-out text for validation, read a piece at a time: validate reads and tokenizes only the text it scores.

A domain file can be far larger than what `--max-tokens` scores (a 50 MB file for 4096 tokens); reading
it whole and tokenizing all of it cost ~200 bytes of memory per byte of text (measured: 10 GB for 50 MB).
`DomainText.prefix` reads pieces until a prefix holds the tokens asked for plus a margin, then stops.

The text of a file is what `validate` has always scored: a .txt file as written (decoded as UTF-8,
universal newlines, as `Path.read_text`); the records of .jsonl/.json/.parquet joined with one blank
line between them, each record unchanged. Only the records before the cut are read (and checked).
"""

from __future__ import annotations

import codecs
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from quantkit.errors import CalibrationError, QuantkitError

DOMAIN_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
PIECE_CHARS = 16_384  # text tokenized at once while counting: a few MB of tokenizer memory at most
READ_BYTES = 1 << 16
# tokens beyond those asked for before the cut: a cut inside a word changes only the last tokens
# before it, so the first n tokens of the prefix are those of the whole text
MARGIN_TOKENS = 64
RECORD_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class DomainText:
    """One domain's held-out text: a file read on demand, or a text given whole (`text`)."""

    path: Path | None = None
    text_field: str = "text"
    text: str | None = None

    @classmethod
    def from_file(cls, path: Path, text_field: str = "text") -> "DomainText":
        return cls(path=Path(path), text_field=text_field)

    @classmethod
    def of(cls, text: "str | DomainText") -> "DomainText":
        return text if isinstance(text, DomainText) else cls(text=text)

    def pieces(self) -> Iterator[str]:
        """The text, in order, in pieces of at most PIECE_CHARS characters (their concatenation is the text)."""
        if self.text is not None:
            for i in range(0, len(self.text), PIECE_CHARS):
                yield self.text[i:i + PIECE_CHARS]
            return
        assert self.path is not None
        if self.path.suffix.lower() == ".txt":
            yield from _txt_pieces(self.path)
            return
        for i, record in enumerate(_records(self.path, self.text_field)):
            if i:
                yield RECORD_SEPARATOR
            for j in range(0, len(record), PIECE_CHARS):
                yield record[j:j + PIECE_CHARS]

    def read(self) -> str:
        """The whole text (small inputs and tests; validation reads `prefix`)."""
        return "".join(self.pieces())

    def prefix(self, count_tokens: Callable[[str], int], n_tokens: int) -> str:
        """The shortest prefix (in pieces) holding more than `n_tokens` + MARGIN_TOKENS tokens, or the whole
        text when it holds fewer. Pieces are counted a batch at a time; the prefix is counted once more
        before it is returned (a word cut between two pieces can count one token twice)."""
        want = n_tokens + MARGIN_TOKENS
        kept: list[str] = []
        batch: list[str] = []
        batch_chars = estimate = 0
        for piece in self.pieces():
            batch.append(piece)
            batch_chars += len(piece)
            if batch_chars < PIECE_CHARS:
                continue
            estimate += count_tokens("".join(batch))
            kept += batch
            batch, batch_chars = [], 0
            if estimate > want:
                text = "".join(kept)
                counted = count_tokens(text)
                if counted > want:
                    return text
                estimate = counted
        return "".join(kept + batch)


def check_domain_file(path: Path, text_field: str = "text") -> None:
    """Fail now, before any model loads, on a file validate could not read: its type, and its first record."""
    if path.suffix.lower() not in DOMAIN_SUFFIXES:
        raise CalibrationError(f"{path}: unsupported domain file type '{path.suffix}' (use .jsonl, .json, .txt or .parquet)")
    next(iter(DomainText.from_file(path, text_field).pieces()), None)


def _txt_pieces(path: Path) -> Iterator[str]:
    inner = codecs.getincrementaldecoder("utf-8")()
    decoder = io.IncrementalNewlineDecoder(inner, translate=True)  # what read_text does with line endings
    offset = 0
    with _open(path) as f:
        while True:
            chunk = f.read(READ_BYTES)
            pending = len(inner.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise CalibrationError(f"{path}: not UTF-8 text (byte offset {offset - pending + e.start})") from None
            offset += len(chunk)
            for i in range(0, len(text), PIECE_CHARS):
                yield text[i:i + PIECE_CHARS]
            if not chunk:
                return


def _records(path: Path, text_field: str) -> Iterator[str]:
    from quantkit.sources.calibration import _field

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_records(path, text_field)
    elif suffix == ".json":
        for i, row in enumerate(_json_list(path), 1):
            yield _field(row, text_field, f"{path}:{i}")
    elif suffix == ".jsonl":
        offset = 0
        with _open(path) as f:
            for i, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CalibrationError(f"{path}: not UTF-8 text (byte offset {offset + e.start})") from None
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as e:
                    raise CalibrationError(f"{path}:{i}: not valid JSON ({getattr(e, 'msg', 'nested too deep')})") from None
                yield _field(row, text_field, f"{path}:{i}")
    else:
        raise CalibrationError(f"{path}: unsupported domain file type '{path.suffix}' (use .jsonl, .json, .txt or .parquet)")


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise CalibrationError(f"{path}: cannot read it ({e.strerror or e})") from None


def _json_list(path: Path) -> Iterator[object]:
    """The values of a JSON list file, one at a time (a buffer of one value, not the file)."""
    decoder = json.JSONDecoder()
    inner = codecs.getincrementaldecoder("utf-8")()
    buf, pos, offset, eof, started, want_value = "", 0, 0, False, False, True
    read_size = READ_BYTES

    def invalid(msg: str):
        return CalibrationError(f"{path}: not valid JSON ({msg})")

    with _open(path) as f:
        def more() -> bool:
            nonlocal buf, pos, offset, eof, read_size
            if eof:
                return False
            chunk = f.read(read_size)
            read_size = min(read_size * 2, 1 << 24)  # a record larger than the buffer: fewer, larger reads
            try:
                text = inner.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise CalibrationError(f"{path}: not UTF-8 text (byte offset {offset + e.start})") from None
            offset += len(chunk)
            eof = not chunk
            buf, pos = buf[pos:] + text, 0
            return True

        def next_char() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return ""

        if next_char() != "[":
            if not buf.strip():
                raise invalid("Expecting value")
            raise CalibrationError(f"{path}: expected a JSON list of records")
        pos += 1
        while True:
            c = next_char()
            if c == "]" and (want_value is False or not started):
                pos += 1
                if next_char():
                    raise invalid("Extra data")
                return
            if not want_value:
                if c != ",":
                    raise invalid("Expecting ',' delimiter" if c else "Expecting ']'")
                pos += 1
                want_value = True
                continue
            if not c:
                raise invalid("Expecting value")
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except RecursionError:
                    raise invalid("nested too deep") from None
                except json.JSONDecodeError as e:
                    if more():
                        continue
                    raise invalid(e.msg) from None
                if end == len(buf) and not eof and isinstance(value, (int, float)):
                    more()  # a number may go on in the next read
                    continue
                break
            pos = end
            started, want_value = True, False
            yield value


def _parquet_records(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise CalibrationError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:200]})") from None
    if text_field not in pf.schema_arrow.names:
        raise CalibrationError(f"{path} has no column '{text_field}'; columns: {', '.join(pf.schema_arrow.names)}")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=256, columns=[text_field]):
            for t in batch.column(0).to_pylist():
                row += 1
                if not isinstance(t, str):
                    raise CalibrationError(
                        f"{path}: row {row}: '{text_field}' is {'null' if t is None else type(t).__name__}, not text")
                if t:
                    yield t
    except (pa.ArrowException, OSError) as e:
        raise CalibrationError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:200]})") from None


DEFAULT_DOMAINS = ("prose", "code")  # the built-in held-out domains validate scores by default


def load_domains(specs: list[str] | None, text_field: str = "text") -> dict[str, DomainText] | None:
    """`NAME=FILE` (JSONL/JSON/TXT/parquet, records joined by blank lines) or `NAME=builtin:prose|code`.
    A file is checked now (its type, its first record) and read later only as far as validation scores."""
    from quantkit.sources.calibration import builtin_domain_text

    if not specs:
        return None
    domains = {}
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name or not source:
            raise QuantkitError(f"--domain {spec!r}: expected NAME=FILE or NAME=builtin:prose|code")
        if name in domains:
            raise QuantkitError(f"--domain {name} given twice")
        if source.startswith("builtin:"):
            builtin = source.removeprefix("builtin:")
            if builtin not in DEFAULT_DOMAINS:
                raise QuantkitError(f"--domain {spec!r}: built-in held-out domains are prose and code")
            domains[name] = DomainText.of(builtin_domain_text(builtin, 200_000))
            continue
        path = Path(source).expanduser()
        if not path.is_file():
            raise QuantkitError(f"--domain {name}: file not found: {path.resolve()}")
        check_domain_file(path, text_field)
        domains[name] = DomainText.from_file(path, text_field)
    return domains


def domain_text(path: Path, text_field: str = "text") -> str:
    """The whole text of a domain file, as the user wrote it: a .txt file byte for byte (decoded
    as UTF-8); the records of .jsonl/.json/.parquet joined with one blank line between them,
    each record unchanged (no stripping). Validation reads only its scored prefix (DomainText.prefix)."""
    check_domain_file(path, text_field)
    return DomainText.from_file(path, text_field).read()


def evaluation_texts(domains: dict[str, str | DomainText] | None, max_tokens: int) -> dict[str, str | DomainText]:
    from quantkit.sources.calibration import builtin_domain_text

    if domains:
        return domains
    # ~3-4 characters per token; llama.cpp needs twice the scored tokens (it scores half of each
    # chunk); the runtimes cut at max_tokens scored tokens
    return {d: builtin_domain_text(d, max_tokens * 10) for d in DEFAULT_DOMAINS}
