"""Output roots only on storage, checked without a connection; calibration inputs that would mislead
(empty records, a path posing as a built-in set, the holdout split) refused; a chat template rendered at
a bounded cost; a GGUF artifact that never carries the calibration text."""

from __future__ import annotations

import copy
import fnmatch
import json
import select
import shutil
import socket

import pytest
from conftest import REPO, run_cli

import quantkit
from quantkit.errors import CalibrationError, QuantkitError, RecipeError
from quantkit.recipe import CalibrationSpec
from quantkit.sources.calibration import build_calibration, builtin_dir, builtin_domain_text, load_texts
from quantkit.sources.chat_template import ChatTemplate

pytestmark = pytest.mark.unit

ALLOWED = "use a local path or one of file://, s3://, gs://, gcs://, az://, abfs://"


@pytest.fixture
def recipe_file(tiny_model, tmp_path):
    def write(output_dir: str = "out"):
        p = tmp_path / "r.yaml"
        p.write_text(f"name: tiny\nmodel: {tiny_model}\noutput_dir: '{output_dir}'\noutputs:\n  - {{method: fp8, name: f8}}\n")
        return p

    return write


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr[-2000:])
    return lines[0]


# ------------------------------------------------------------------ output roots


@pytest.mark.integration
def test_an_ftp_root_is_refused_by_validate_plan_and_quantize_without_a_connection(recipe_file):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel would complete a client's handshake here: a pending connection is seen below
    port = listener.getsockname()[1]
    url = f"ftp://127.0.0.1:{port}/x"
    try:
        runs = [run_cli("recipes", "validate", str(recipe_file()), "-o", url, timeout=120),
                run_cli("plan", str(recipe_file()), "-o", url, timeout=120),
                run_cli("recipes", "validate", str(recipe_file(url)), timeout=120),  # the recipe's own output_dir
                run_cli("quantize", str(recipe_file()), "-o", url, timeout=120)]
        for r in runs:
            assert one_error_line(r) == f"error: output_dir {url}: 'ftp://' is not a storage protocol quantkit writes " \
                                        f"artifacts to; {ALLOWED}"
        assert select.select([listener], [], [], 0.5)[0] == [], "quantkit connected to the ftp:// root"
    finally:
        listener.close()


@pytest.mark.integration
@pytest.mark.parametrize("url", ["zip://inner::file:///tmp/a.zip", "reference://x", "github://o:r@main/x",
                                 "arrow_hdfs://namenode/x"])
def test_a_root_on_a_protocol_that_is_not_storage_is_one_error_line(recipe_file, url):
    for command in (["recipes", "validate"], ["plan"]):
        line = one_error_line(run_cli(*command, str(recipe_file()), "-o", url, timeout=120))
        assert line == f"error: output_dir {url}: '{url.split('://')[0]}://' is not a storage protocol quantkit " \
                       f"writes artifacts to; {ALLOWED}"


@pytest.mark.integration
def test_a_memory_root_is_refused_by_a_command_and_taken_by_the_library(recipe_file, tmp_path):
    r = run_cli("quantize", str(recipe_file()), "-o", "memory://qk/out", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "output_dir memory://qk/out: 'memory://' lives in this process only; what a quantkit command writes there " \
           "is gone when it exits" in r.stderr and "made" not in r.stdout

    from quantkit.jobs import plan
    from quantkit.output_roots import file_system, root_problems

    recipe = quantkit.load_recipe(recipe_file())
    [job] = plan(recipe, "memory://qk/out")  # the library's caller outlives what it publishes (tests/test_matrix.py)
    assert job.dest == "memory://qk/out/f8" and file_system("memory://qk/out")[1] == "/qk/out"
    assert root_problems("file:///tmp/x", "local") == []
    with pytest.raises(QuantkitError, match="'ftp://' is not a storage protocol"):
        file_system("ftp://127.0.0.1:9/x")  # the executors' read and publish never make such a file system


# ------------------------------------------------------------------ calibration inputs


def test_records_that_are_all_empty_are_refused_with_their_count(tmp_path, tiny_tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", "  ", "\n", "", ""]))
    with pytest.raises(CalibrationError, match="5 of 5 records are empty; no text remains to calibrate on"):
        build_calibration(CalibrationSpec(source=str(empty), num_samples=1, seq_len=8), tiny_tokenizer)
    # empty records among texts add nothing: the same tokens as the file without them
    texts = [f"record {i}: " + "some words " * 20 for i in range(6)]
    mixed, plain = tmp_path / "mixed.jsonl", tmp_path / "plain.jsonl"
    mixed.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["", *texts[:3], " ", *texts[3:], ""]))
    plain.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    spec = dict(num_samples=2, seq_len=64, shuffle_seed=None)
    assert build_calibration(CalibrationSpec(source=str(mixed), **spec), tiny_tokenizer).fingerprint == \
        build_calibration(CalibrationSpec(source=str(plain), **spec), tiny_tokenizer).fingerprint


@pytest.mark.parametrize("source", ["builtin:../calibration/prose", "builtin:prose/../code", f"builtin:{REPO}/calibration/prose"])
def test_a_builtin_name_is_one_of_the_sets_never_a_path(source):
    assert (builtin_dir() / "../calibration/prose" / "train.jsonl").is_file()  # what the first name would reach
    with pytest.raises(CalibrationError, match="unknown built-in calibration set .*; available: builtin:code, builtin:prose, "
                                               "builtin:mixed"):
        load_texts(CalibrationSpec(source=source))
    with pytest.raises(RecipeError, match="unknown built-in calibration set"):
        quantkit.parse_recipe(f"name: t\nmodel: m\ncalibration: {{source: '{source}'}}\noutputs: [{{method: rtn}}]\n")


def test_the_holdout_text_is_never_calibrated_on(tmp_path):
    holdout = builtin_dir() / "prose" / "holdout.jsonl"
    with pytest.raises(CalibrationError, match=f"'holdout' of builtin:prose \\({holdout}\\) is the text `quantkit validate`"):
        load_texts(CalibrationSpec(source="builtin:prose", split="holdout"))
    with pytest.raises(CalibrationError, match="code/holdout.jsonl"):  # mixed names both its files
        load_texts(CalibrationSpec(source="builtin:mixed", split="holdout"))
    with pytest.raises(CalibrationError, match=f"{holdout.resolve()} is a built-in holdout file"):
        load_texts(CalibrationSpec(source=str(holdout)))
    copied = tmp_path / "mine.jsonl"
    shutil.copy(holdout, copied)
    with pytest.raises(CalibrationError, match=f"{copied} holds the same bytes as {holdout.resolve()}"):
        load_texts(CalibrationSpec(source=str(copied)))
    with pytest.raises(RecipeError, match="calibrations .*\\[1\\].split: 'holdout' of builtin:code"):
        quantkit.parse_recipe("name: t\nmodel: m\ncalibrations: [{source: 'builtin:prose'}, {source: 'builtin:code', "
                              "split: holdout}]\noutputs: [{method: rtn}]\n")
    assert len(builtin_domain_text("prose", 1000)) >= 1000  # validate still scores on it
    assert load_texts(CalibrationSpec(source="builtin:prose"))  # and calibration reads the train split


# ------------------------------------------------------------------ chat templates


@pytest.mark.timeout(120)  # without a bound the first one runs for hours: a timeout is the failure
@pytest.mark.parametrize("template, why", [  # sizes a few megabytes: over the bound, harmless unbounded
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "more than 200000 steps"),
    ("{% for m in messages %}{{ m.content * 20000 }}{% endfor %}", "'\\*' would make a value of"),
    ("{% set ns = namespace(s=messages[0].content) %}{% for i in range(12) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
     "{{ ns.s }}", "'~' would make a string over the limit"),
    ("{{ '{:>5000000}'.format(messages[0].content) }}", "asks for a width or precision over 999999"),
    ("{{ messages[0].content|center(5000000) }}", "the filter 'center' is given the number 5000000"),
])
def test_a_chat_template_over_its_budget_is_one_error(tiny_tokenizer, template, why):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = template
    with pytest.raises(CalibrationError, match=f"the tokenizer's chat template is refused: .*{why}") as e:
        build_calibration(CalibrationSpec(num_samples=2, seq_len=32, chat_template=True), tok)
    assert "\n" not in str(e.value)


def test_a_chat_template_renders_as_transformers_renders_it(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}<|im_start|>{{ m.role }}\n"
                         "{{ m.content | trim }}{% generation %}<|im_end|>{% endgeneration %}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{{ {'n': 1} | tojson }}")
    text = "def f(x):\n    return x  # a calibration text "
    expected = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    assert ChatTemplate(tok.chat_template, dict(tok.special_tokens_map)).render_user_turn(text) == expected
    spec = CalibrationSpec(num_samples=2, seq_len=32, chat_template=True, shuffle_seed=None)
    ids = build_calibration(spec, tok).input_ids
    first = load_texts(spec)[0]
    rendered = tok.apply_chat_template([{"role": "user", "content": first}], tokenize=True, return_dict=False)
    assert ids[0][: len(rendered)] == list(rendered)[:32]


# ------------------------------------------------------------------ GGUF artifacts and the calibration text


def test_no_gguf_artifact_pattern_admits_a_calibration_text():
    from quantkit.engines.gguf import GGUFEngine

    out = quantkit.parse_recipe("name: t\nmodel: m\noutputs: [{method: gguf, name: g, types: [Q8_0]}]\n").outputs[0]
    patterns = GGUFEngine().artifact_patterns(out)
    for name in ("imatrix-calibration.txt", "calibration.txt", "g-calibration.txt"):
        assert not any(fnmatch.fnmatchcase(name, p) for p in patterns), (name, patterns)


@pytest.fixture(scope="session")
def smol_tokenizer_llama(tmp_path_factory, llamacpp):
    """As in tests/test_gguf.py: a random Llama with SmolLM2's tokenizer (one llama.cpp's converter knows)."""
    from quantkit.recipe import ModelSpec
    from quantkit.sources.models import load_tokenizer, resolve_model
    from quantkit.testing import build_tiny_llama

    smol = resolve_model(ModelSpec(source="smollm2-135m"))
    return build_tiny_llama(tmp_path_factory.mktemp("k") / "model", hidden_size=256, intermediate_size=512,
                            tokenizer=load_tokenizer(smol))


@pytest.mark.integration
def test_a_gguf_artifact_never_holds_the_calibration_text(llamacpp, smol_tokenizer_llama, tmp_path):
    marker = "Quokka-7f3a private calibration note"
    private = tmp_path / "private.jsonl"
    private.write_text("".join(json.dumps({"text": f"{marker} {i}: the ledger for this quarter was closed."}) + "\n"
                               for i in range(80)))
    recipe = quantkit.parse_recipe(
        f"name: t\nmodel: {smol_tokenizer_llama}\noutput_dir: {tmp_path / 'out'}\n"
        f"calibration: {{source: {private}, num_samples: 4, seq_len: 64}}\n"
        "outputs: [{method: gguf, name: g, types: [Q8_0]}]\n")
    [art] = quantkit.quantize(recipe)
    assert art.manifest.engine["imatrix"]["chunks"] == 4  # the importance matrix was computed from the text
    assert {"g-Q8_0.gguf", "imatrix.gguf"} <= set(art.manifest.files)
    assert not [f for f in art.manifest.files if f.endswith(".txt")]
    for f in art.path.rglob("*"):
        if f.is_file():
            assert marker.encode() not in f.read_bytes(), f"{f.name} holds the calibration text"
