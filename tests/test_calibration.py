import json
import platform

import pytest
from conftest import REPO

from quantkit.errors import CalibrationError
from quantkit.recipe import CalibrationSpec
from quantkit.sources.calibration import build_calibration, builtin_dir, builtin_sets, builtin_texts, load_texts

pytestmark = pytest.mark.unit


def test_builtin_sets_have_two_domains():
    assert {"prose", "code", "mixed"} <= set(builtin_sets())
    assert builtin_dir().resolve() == (REPO / "calibration").resolve()


@pytest.mark.parametrize("domain", ["prose", "code"])
def test_holdout_never_overlaps_calibration(domain):
    def rows(split):
        return [json.loads(line) for line in (builtin_dir() / domain / f"{split}.jsonl").read_text().splitlines()]

    train, holdout = rows("train"), rows("holdout")
    assert len(train) > 100 and len(holdout) > 50
    # whole source files go to one split, so neither texts nor files are shared
    assert not {r["source"] for r in train} & {r["source"] for r in holdout}
    assert not {r["text"] for r in train} & {r["text"] for r in holdout}


@pytest.mark.integration  # tens of seconds by design: too slow for the unit tier
def test_committed_sets_match_their_generator(tmp_path):
    info = json.loads((REPO / "calibration" / "SOURCES.json").read_text())
    if info["python"] != platform.python_version():
        pytest.skip(f"sets were built with Python {info['python']}; this is {platform.python_version()}")
    import importlib.util

    spec = importlib.util.spec_from_file_location("calib_build", REPO / "calibration" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rebuilt = mod.build(tmp_path)
    assert rebuilt["files"] == info["files"]


def test_tokenized_fingerprint_is_deterministic_and_sensitive(tiny_tokenizer):
    spec = CalibrationSpec(num_samples=4, seq_len=32)
    a = build_calibration(spec, tiny_tokenizer)
    b = build_calibration(spec, tiny_tokenizer)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert [len(x) for x in a.input_ids] == [32] * 4
    c = build_calibration(spec.model_copy(update={"shuffle_seed": 1}), tiny_tokenizer)
    d = build_calibration(spec.model_copy(update={"source": "builtin:code"}), tiny_tokenizer)
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3


def test_mixed_interleaves_prose_and_code():
    mixed = builtin_texts("mixed", "train")
    assert mixed[0] == builtin_texts("prose", "train")[0] and mixed[1] == builtin_texts("code", "train")[0]


def test_user_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "first text"}\n\n{"body": "second"}\n')
    (tmp_path / "b.txt").write_text("para one\nstill one\n\npara two\n")
    (tmp_path / "c.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    assert load_texts(CalibrationSpec(source=str(tmp_path / "a.jsonl"), text_field="body")) == ["first text", "second"]
    assert load_texts(CalibrationSpec(source=str(tmp_path / "b.txt"))) == ["para one\nstill one", "para two"]
    assert load_texts(CalibrationSpec(source=str(tmp_path / "c.json"))) == ["x", "y"]


def test_parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["alpha", "beta"]}), tmp_path / "d.parquet")
    assert load_texts(CalibrationSpec(source=str(tmp_path / "d.parquet"), text_field="content")) == ["alpha", "beta"]
    with pytest.raises(CalibrationError, match="no column 'text'; columns: content"):
        load_texts(CalibrationSpec(source=str(tmp_path / "d.parquet")))


def test_hf_dataset_by_name_from_local_files(tmp_path):
    # `hf:` goes through datasets.load_dataset; a local data folder exercises the same code offline
    (tmp_path / "train.jsonl").write_text('{"text": "hello world"}\n{"text": "more"}\n')
    assert load_texts(CalibrationSpec(source=f"hf:{tmp_path}")) == ["hello world", "more"]


def test_errors_name_the_problem(tmp_path, tiny_tokenizer):
    with pytest.raises(CalibrationError, match=str(tmp_path / "missing.jsonl")):
        load_texts(CalibrationSpec(source=str(tmp_path / "missing.jsonl")))
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(CalibrationError, match=r"bad.jsonl:2: not valid JSON"):
        load_texts(CalibrationSpec(source=str(tmp_path / "bad.jsonl")))
    for row, kind in (('{"text": null}', "null"), ('{"text": 1}', "int"), ('{"text": true}', "bool")):
        (tmp_path / "null.jsonl").write_text('{"text": "a"}\n' + row + "\n")
        with pytest.raises(CalibrationError, match=rf"null.jsonl:2: 'text' is {kind}, not text"):
            load_texts(CalibrationSpec(source=str(tmp_path / "null.jsonl")))
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(CalibrationError, match=r"latin1.txt: not UTF-8 text \(byte offset 3\)"):
        load_texts(CalibrationSpec(source=str(tmp_path / "latin1.txt")))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CalibrationError, match=r"broken.parquet: not a readable parquet file"):
        load_texts(CalibrationSpec(source=str(tmp_path / "broken.parquet")))
    (tmp_path / "f.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(CalibrationError, match="no field 'text' \\(found: content\\)"):
        load_texts(CalibrationSpec(source=str(tmp_path / "f.jsonl")))
    with pytest.raises(CalibrationError, match="unknown built-in calibration set 'poetry'"):
        load_texts(CalibrationSpec(source="builtin:poetry"))
    with pytest.raises(CalibrationError, match="tokens; num_samples × seq_len"):
        build_calibration(
            CalibrationSpec(source=str(tmp_path / "f.jsonl"), text_field="content", num_samples=2, seq_len=64), tiny_tokenizer
        )


def test_chat_template_without_a_template_is_one_error(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(CalibrationError, match="chat_template is true, but the model's tokenizer has no chat template"):
        build_calibration(CalibrationSpec(num_samples=2, seq_len=32, chat_template=True), tok)
    tok.chat_template = "{{ raise_exception('no system role') }}"
    with pytest.raises(CalibrationError, match="chat template fails on a calibration text.*no system role"):
        build_calibration(CalibrationSpec(num_samples=2, seq_len=32, chat_template=True), tok)


def test_chat_template_changes_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    plain = build_calibration(CalibrationSpec(num_samples=2, seq_len=32), tok)
    chat = build_calibration(CalibrationSpec(num_samples=2, seq_len=32, chat_template=True), tok)
    assert chat.input_ids[0][0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert plain.fingerprint != chat.fingerprint
