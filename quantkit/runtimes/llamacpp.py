"""llama.cpp as the runtime for GGUF files: its own perplexity / KL-divergence tool.

The reference logits come from the F32 conversion of the float base, saved by the tool
(`--kl-divergence-base`) into quantkit's cache once per (base, llama.cpp build, text, context,
chunks); each GGUF type is then scored against them, so a second GGUF folder of the same base
costs no base pass. llama-perplexity
splits the text into non-overlapping chunks of `context` tokens and scores the second half
of each chunk, so stride == context here.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

from quantkit.cache_store import LLAMACPP_LOGITS, CacheStore
from quantkit.runtimes.base import BaseFolder, DomainScores, EvaluationSettings, Runtime, ScoredTarget
from quantkit.toolchains.llamacpp import LlamaCpp, ToolchainError, check_tokenizer_fidelity, converted_base, require_toolchain


def base_logits(tc: LlamaCpp, base_gguf: Path, text_file: Path, logits_file: Path, context: int, chunks: int) -> int:
    """Save the reference logits; returns how many chunks the text actually filled."""
    result = tc.perplexity(base_gguf, text_file, ctx=context, chunks=chunks, save_logits=logits_file)
    return result["chunks"] or chunks


def score_gguf(tc: LlamaCpp, gguf_file: Path, logits_file: Path, domain: str, context: int, chunks: int) -> DomainScores:
    k = tc.kl_divergence(gguf_file, logits_file, ctx=context, chunks=chunks)
    return DomainScores(
        # llama-perplexity scores positions context/2 .. context-2 of each chunk (their next tokens)
        domain=domain, runtime="llama.cpp", n_tokens=chunks * (context - 1 - context // 2), context=context, stride=context,
        base_ppl=k["ppl_base"], ppl=k["ppl"], kld_mean=k["mean_kld"], kld_median=k["median_kld"],
        kld_p99=k["p99_kld"], top1_agreement=k["same_top_p"] / 100.0,
    )


class LlamaCppRuntime(Runtime):
    """GGUF files: reference logits of the base's F32 conversion once per text, then each type against them."""

    name = "llama.cpp"
    work_in_subprocesses = True

    def evaluate(self, artifact, base: BaseFolder, texts, settings: EvaluationSettings, reporter) -> list[ScoredTarget]:
        from quantkit.recipe import ModelSpec
        from quantkit.sources.models import ResolvedModel, load_tokenizer

        targets = artifact.targets()
        try:
            tc = require_toolchain()
        except ToolchainError as e:
            # reported per type as unavailable (their gates fail: an unmeasured metric never passes)
            return [ScoredTarget(t, self.name, [], unavailable=str(e)) for t in targets]
        b = artifact.manifest.base_model
        trusted = (artifact.manifest.recipe.get("model") or {}).get("trust_remote_code") is True  # as quantize was told
        resolved = ResolvedModel(ModelSpec(source=b.source, trust_remote_code=trusted), base.path, b.kind, base.fingerprint,
                                 b.weight_bytes)
        context = settings.context
        with reporter.task("float reference for llama.cpp (F32 conversion of the base)"):
            f32 = converted_base(tc, resolved, "F32", reporter)
        tokenizer = load_tokenizer(resolved)
        chunks = max(1, settings.max_tokens // (context - context // 2))
        scored = {t.name: ScoredTarget(t, self.name, device="cpu") for t in targets}  # llama.cpp's CPU build
        store = CacheStore(LLAMACPP_LOGITS)
        with tempfile.TemporaryDirectory(prefix="quantkit-validate-") as tmp_name, ExitStack() as held:
            tmp = Path(tmp_name)
            logits = {}
            for domain, source in texts.items():
                # llama-perplexity tokenizes the whole file it is given: give it the chunks it scores, not the domain
                # file (and at least two contexts: it refuses fewer tokens whatever --chunks says)
                text = source.prefix(lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]),
                                     max(chunks, 2) * context)
                check_tokenizer_fidelity(tc, f32, tokenizer, text=text[:20_000])
                (tmp / f"{domain}.txt").write_text(text)
                key = {"kind": "llamacpp-f32-logits", "format": 1, "base_fingerprint": base.fingerprint, "toolchain": tc.version,
                       "text_sha256": hashlib.sha256(text.encode()).hexdigest(), "context": context, "chunks": chunks}

                def build(folder, domain=domain):
                    with reporter.task(f"reference logits on {domain} (llama-perplexity, F32)", tokens=chunks * context):
                        used = base_logits(tc, f32, tmp / f"{domain}.txt", folder / "base.logits", context, chunks)
                    (folder / "chunks.json").write_text(json.dumps({"chunks": used}) + "\n")

                entry, built = held.enter_context(store.entry(key, build))
                if not built:
                    reporter.log(f"reference logits on {domain}: stored ({entry})")
                logits[domain] = (entry / "base.logits", json.loads((entry / "chunks.json").read_text())["chunks"])
            for t in targets:
                for domain, (logit_file, used) in logits.items():
                    with reporter.task(f"{t.scheme}: KLD and perplexity on {domain} (llama-perplexity)", tokens=chunks * context):
                        scored[t.name].scores.append(score_gguf(tc, t.path, logit_file, domain, context, used))
        return list(scored.values())
