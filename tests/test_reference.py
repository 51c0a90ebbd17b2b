"""The base reference of `quantkit validate`: computed once, stored, reused, invalidated, shared
safely between processes; and what it is checked against (an exact lockstep pass, an independent
per-token loop)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO, run_cli, tiny_recipe_text

import quantkit
from quantkit.cache_store import REFERENCES as STORE
from quantkit.cache_store import CacheStore
from quantkit.progress import NullReporter
from quantkit.runtimes.transformers import TransformersModel, score_lockstep
from quantkit.sources.heldout import domain_text, evaluation_texts
from quantkit.validate import validate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fp8(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    outputs = "  - {method: fp8}\n  - {method: rtn, bits: 4, group_size: 32}\n"
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, outputs))
    return {a.name: a.path for a in quantkit.quantize(recipe)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("QUANTKIT_CACHE", str(root))
    return root


def reference_entries(root):
    return CacheStore(STORE, root=root).entries()


def scores(report):
    return [(s.domain, s.n_tokens, s.base_ppl, s.ppl, s.kld_mean, s.kld_p99, s.top1_agreement)
            for t in report.targets for s in t.scores]


def test_cached_and_uncached_references_give_identical_scores(fp8, tiny_model, cache):
    art = fp8["tiny-fp8-fp8-dynamic"]
    first_rep, second_rep = NullReporter(), NullReporter()
    # on the CPU, whatever this machine has: compared below with the float32 CPU lockstep pass
    first = validate(art, context=64, max_tokens=200, device="cpu", reporter=first_rep, write=False)
    assert any(s.startswith("base reference on prose") for s in first_rep.steps)
    assert len(reference_entries(cache)) == 2  # prose and code
    second = validate(art, context=64, max_tokens=200, device="cpu", reporter=second_rep, write=False)
    assert not any("loading the base" in s or s.startswith("base reference") for s in second_rep.steps)
    assert any(m.startswith("base reference on prose: stored") for m in second_rep.messages)
    assert scores(first) == scores(second) and len(reference_entries(cache)) == 2
    # the stored reference agrees with the exact lockstep pass (16-bit rows: well within 0.1%)
    base, quant = TransformersModel(tiny_model), TransformersModel(art)
    s = first.targets[0].scores[0]
    ids = base.tokenize(evaluation_texts(None, 200)["prose"])[: 200 + 32]
    exact = score_lockstep(base, quant, ids, "prose", context=64, stride=32)
    assert s.n_tokens == exact.n_tokens == 200
    assert s.base_ppl == pytest.approx(exact.base_ppl, rel=1e-6) and s.ppl == pytest.approx(exact.ppl, rel=1e-6)
    assert s.kld_mean == pytest.approx(exact.kld_mean, rel=1e-3) and s.top1_agreement == exact.top1_agreement


@pytest.mark.parametrize("change", ["text", "context", "stride", "dtype", "base"])
def test_a_changed_input_gets_a_new_reference(fp8, tiny_model, cache, tmp_path, change):
    art = fp8["tiny-fp8-fp8-dynamic"]
    other = next(path for name, path in fp8.items() if "rtn" in name)
    prose = tmp_path / "prose.txt"
    prose.write_text(evaluation_texts(None, 300)["prose"])
    kwargs = dict(context=64, max_tokens=120, domains={"prose": prose.read_text()}, write=False)
    validate(art, **kwargs)
    assert len(reference_entries(cache)) == 1
    if change == "text":
        kwargs["domains"] = {"prose": "A changed first line.\n" + prose.read_text()}
    elif change == "context":
        kwargs["context"] = 48
    elif change == "stride":
        kwargs["stride"] = 16
    elif change == "dtype":
        kwargs["dtype"] = "bfloat16"
    else:
        # another base: a copy of the tiny model with one weight changed, and an artifact pointing at it
        import shutil

        from safetensors.torch import load_file, save_file

        base2 = tmp_path / "base2"
        shutil.copytree(tiny_model, base2)
        weights = load_file(base2 / "model.safetensors")
        name = next(iter(weights))
        weights[name] = weights[name] * 1.01
        save_file(weights, base2 / "model.safetensors", metadata={"format": "pt"})
        art2 = tmp_path / "art2"
        shutil.copytree(art, art2)
        (art2 / "quantkit.local.json").write_text(json.dumps({"base_model_path": str(base2)}))
        manifest = json.loads((art2 / "quantkit.json").read_text())
        manifest["base_model"]["fingerprint"] = quantkit.sources.models.fingerprint_folder(base2)[0]
        (art2 / "quantkit.json").write_text(json.dumps(manifest))
        art = art2
    validate(art, **kwargs)
    assert len(reference_entries(cache)) == 2
    validate(other, **kwargs)  # another artifact of the same base, same settings: no new entry
    assert len(reference_entries(cache)) == 2


def test_two_concurrent_validates_make_one_entry(fp8, cache, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from quantkit.validate import validate
        r = validate({str(fp8["tiny-fp8-fp8-dynamic"])!r}, context=64, max_tokens=300, write=False)
        print(json.dumps([[s.kld_mean, s.ppl] for t in r.targets for s in t.scores]))
    """)
    env = {**os.environ, "QUANTKIT_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert json.loads(outs[0][0]) == json.loads(outs[1][0])
    entries = reference_entries(cache)
    assert len(entries) == 2  # prose and code, once each
    assert not [p for p in (cache / STORE).iterdir() if p.name.startswith(".") and p.name != ".locks"]  # no staging left
    for e in entries:
        meta = json.loads((e.path / "reference.json").read_text())
        assert (e.path / "logprobs.u16").stat().st_size == meta["positions"] * meta["vocab"] * 2


@pytest.mark.unit
def test_every_scored_token_checked_by_an_independent_per_token_loop(tiny_model):
    """The recorded scored positions, each scored by its own forward pass over exactly the tokens
    before it in its window: perplexity agrees within 0.1%."""
    model = TransformersModel(tiny_model)
    ids = model.tokenize(evaluation_texts(None, 300)["code"])[:180]
    s = score_lockstep(model, model, ids, "code", context=48, stride=24)
    nll = []
    for begin, end, first in s.scored_tokens["windows"]:
        assert first - begin >= 24  # every scored token has half a context
        for t in range(first, end):
            with torch.no_grad():
                logits = model.model(input_ids=torch.tensor([ids[begin:t]])).logits[0, -1].double()
            nll.append(-(torch.log_softmax(logits, -1)[ids[t]]))
    assert len(nll) == s.n_tokens == s.scored_tokens["scored"]
    assert float(torch.stack(nll).mean().exp()) == pytest.approx(s.base_ppl, rel=1e-3)


@pytest.mark.unit
def test_domain_files_are_scored_as_written(tmp_path):
    code = "def f(x):\n\n\n        return x  \n\n\tpass\n"
    (tmp_path / "code.txt").write_text(code)
    assert domain_text(tmp_path / "code.txt") == code
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "  indented\n\n\n"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    assert domain_text(tmp_path / "rows.jsonl") == "  indented\n\n\n\n\nb"


def test_device_and_dtype_are_checked_before_any_work(fp8):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is valid here")
    r = run_cli("validate", str(fp8["tiny-fp8-fp8-dynamic"]), "--device", "cuda")
    assert r.returncode == 2 and "--device cuda: torch sees no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("validate", str(fp8["tiny-fp8-fp8-dynamic"]), "--device", "tpu")
    assert r.returncode == 2 and "--device 'tpu': expected auto, cpu, cuda or cuda:N" in r.stderr
    r = run_cli("validate", str(fp8["tiny-fp8-fp8-dynamic"]), "--dtype", "int8")
    assert r.returncode == 2 and "--dtype 'int8': expected one of auto, float32, bfloat16, float16" in r.stderr


@pytest.mark.gpu
def test_validate_on_the_gpu_in_bfloat16_matches_the_cpu(fp8, cache):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False here)")
    art = fp8["tiny-fp8-fp8-dynamic"]
    # a fresh process, where nothing has initialised CUDA yet (the peak-memory counters failed there once)
    r = run_cli("validate", str(art), "--device", "cuda", "--context", "64", "--max-tokens", "200", "--no-serve", "--json")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr[-2000:]
    [report] = json.loads(r.stdout)
    assert report["settings"]["device"].startswith("cuda") and report["resources"]["peak_gpu_bytes"] > 0
    gpu = validate(art, context=64, max_tokens=200, device="cuda", write=False)
    cpu = validate(art, context=64, max_tokens=200, device="cpu", write=False)
    assert gpu.settings["dtype"] == "bfloat16" and gpu.resources["peak_gpu_bytes"] > 0
    for g, c in zip(gpu.targets[0].scores, cpu.targets[0].scores):
        assert g.base_ppl == pytest.approx(c.base_ppl, rel=0.02)


@pytest.mark.unit
def test_fingerprint_is_cached_until_a_file_changes(tiny_model, cache, tmp_path, monkeypatch):
    import shutil

    from quantkit import files
    from quantkit.sources import models

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    hashed = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p, *a, **k: hashed.append(p.name) or real(p, *a, **k))
    first = models.fingerprint_folder(folder)
    n = len(hashed)
    assert n >= 2 and models.fingerprint_folder(folder) == first and len(hashed) == n  # no file read again
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("{", "{ ", 1))
    assert models.fingerprint_folder(folder)[0] != first[0] and hashed[n:] == ["config.json"]  # only the changed file


@pytest.mark.unit
def test_cache_store_is_bounded_lru_and_skips_entries_in_use(tmp_path):
    import time

    store = CacheStore("demo", root=tmp_path, max_bytes=2500)

    def blob(folder):
        (folder / "data").write_bytes(b"x" * 1000)

    for i in range(2):
        with store.entry({"i": i}, blob):
            pass
        time.sleep(0.02)
    assert store.get({"i": 0}) is not None  # used now: 1 is the least recently used
    with store.entry({"i": 2}, blob):
        pass
    assert store.get({"i": 1}) is None and store.get({"i": 0}) and store.get({"i": 2})
    with store.entry({"i": 0}, blob) as (path, built):  # held (shared lock) while in use
        assert not built
        assert store.prune(0) and path.is_dir() and [e.key for e in store.entries()] == [{"i": 0}]
    assert store.prune(0)[0].key == {"i": 0} and store.entries() == []
    with pytest.raises(RuntimeError):
        with store.entry({"i": 3}, lambda folder: (_ for _ in ()).throw(RuntimeError("build failed"))):
            pass
    assert store.get({"i": 3}) is None and [p.name for p in (tmp_path / "demo").iterdir()] == [".locks"]
    # readers of a stored entry do not wait for each other (a second validate of the same base runs at once)
    import threading

    with store.entry({"i": 0}, blob):
        other = threading.Thread(target=lambda: store.entry({"i": 0}, blob).__enter__())
        other.start()
        other.join(timeout=10)
        assert not other.is_alive()
    # a build killed by SIGKILL leaves its staging folder; the next build of any entry removes it
    killed = tmp_path / "demo" / ".0123abc.partial-4194303-deadbeef"
    killed.mkdir()
    with store.entry({"i": 4}, blob):
        pass
    assert not killed.exists()


def test_cache_cli_lists_and_prunes(fp8, cache):
    validate(fp8["tiny-fp8-fp8-dynamic"], context=64, max_tokens=100, write=False)
    env = {"QUANTKIT_CACHE": str(cache)}
    listed = json.loads(run_cli("cache", "list", "--json", env=env).stdout)
    assert {e["store"] for e in listed} == {"references"} and len(listed) == 2
    r = run_cli("cache", "prune", "--max-size", "1000", "--json", env=env)  # within the bound: nothing goes
    assert r.returncode == 0 and json.loads(r.stdout) == {"removed": [], "bytes": 0}
    r = run_cli("cache", "prune", "--all", env=env)
    assert r.returncode == 0 and "removed 2 entries" in r.stdout
    assert json.loads(run_cli("cache", "list", "--json", env=env).stdout) == []
    assert run_cli("cache", "prune", "--max-size", "-1", env=env).returncode == 2


def test_parameter_bytes_are_counted_from_the_config_alone(fp8, tiny_model):
    """What decides device_map="auto" on a GPU: the decompressed size at the evaluation dtype."""
    from quantkit.runtimes.transformers import parameter_bytes

    model = TransformersModel(tiny_model)
    params = sum(p.numel() for p in model.model.parameters())
    assert parameter_bytes(tiny_model, torch.float32) == 4 * params
    # an FP8 artifact is a quarter of that on disk, but its weights are decompressed to the dtype on load
    assert parameter_bytes(fp8["tiny-fp8-fp8-dynamic"], torch.bfloat16) == 2 * params


@pytest.mark.unit
def test_stored_rows_round_trip_and_the_fused_kld_matches_the_spelled_out_one():
    from quantkit.runtimes.reference import dequantize_rows, kl_from_codes, quantize_rows

    torch.manual_seed(0)
    base = torch.log_softmax(torch.randn(40, 3000) * 4, -1)
    artifact = torch.log_softmax(torch.log_softmax(torch.randn(40, 3000) * 4, -1) + 0.3 * torch.randn(40, 3000), -1)
    codes, scale = quantize_rows(base)
    assert codes.min() >= 0 and codes.max() == 65535
    stored = dequantize_rows(codes, scale)
    kept = base > base.max(-1, keepdim=True).values - 40  # above the clipping floor
    assert (stored - base)[kept].abs().max() < 1e-3 and torch.allclose(stored.exp().sum(-1), torch.ones(40))
    exact = (base.exp() * (base - artifact)).sum(-1)
    spelled = (stored.exp() * (stored - artifact)).sum(-1)
    fused = kl_from_codes(codes, scale, artifact)
    assert torch.allclose(fused, spelled, rtol=1e-4, atol=1e-6)
    assert abs(float(fused.mean() / exact.mean()) - 1) < 1e-3
