"""transformers as the runtime for float and compressed-tensors checkpoints.

compressed-tensors installs its quantize-dequantize forward on every quantized Linear when
transformers loads the checkpoint, so W8A8 and FP8 activations are quantized in the forward
pass on CPU as well (a test checks that turning it off changes the logits). Weights are
decompressed to the evaluation dtype: this is fake quantization, numerically the quantized model,
not vLLM's kernels (those run in the serve check).

The base is scored once per (base, text, windows, dtype, device class) into a stored reference
(quantkit.runtimes.reference); each artifact is then one pass with one model in memory.
"""

from __future__ import annotations

import gc
from contextlib import ExitStack
from pathlib import Path

import torch

from quantkit.cache_store import REFERENCES, CacheStore
from quantkit.errors import QuantkitError
from quantkit.memory import release_free_heap
from quantkit.runtimes.base import BaseFolder, DomainScores, EvaluationSettings, Runtime, ScoredTarget
from quantkit.runtimes.reference import ROWS_PER_CHUNK, BaseReference, build_reference, kl_from_codes, reference_key


class TransformersModel:
    """A checkpoint loaded with transformers (compressed-tensors installs its quantized forward)."""

    def __init__(self, path: str | Path, dtype: str | torch.dtype = torch.float32, device: str = "cpu", tokenizer=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        kwargs = {}
        if device != "cpu":
            # spread over every GPU (and the CPU) only when one device cannot hold the weights
            kwargs["device_map"] = device if fits_on(self.path, dtype, device) else "auto"
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype, **kwargs).eval()
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(self.path))
        self.device = self.model.get_input_embeddings().weight.device

    @property
    def activation_quantized_modules(self) -> int:
        return sum(
            1
            for m in self.model.modules()
            if getattr(getattr(m, "quantization_scheme", None), "input_activations", None) is not None
        )

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def logprobs(self, input_ids: list[int], keep: int | None = None) -> torch.Tensor:
        """[len(input_ids), vocab] next-token log-probabilities (position i predicts token i + 1), float32;
        with `keep`, only the last `keep` positions (the LM head runs on those alone)."""
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, logits_to_keep=keep or 0)
        return torch.log_softmax(out.logits[0].float(), dim=-1)

    def close(self) -> None:
        """Free the weights now (the next model loads into the memory this one held)."""
        del self.model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        release_free_heap()  # ~110 MB of a 1 GB model stayed resident without it


def parameter_bytes(folder: Path, dtype: torch.dtype) -> int:
    """The model's parameters at `dtype` (quantized weights are decompressed to it on load), counted
    on the meta device from config.json alone: nothing is allocated, no weight file is read."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    return sum(p.numel() for p in skeleton.parameters()) * dtype.itemsize


def fits_on(folder: Path, dtype: torch.dtype, device: str) -> bool:
    """Whether the model at `dtype` leaves a fifth of the GPU's free memory free."""
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return parameter_bytes(folder, dtype) <= 0.8 * free


def lead_tokens(context: int, stride: int) -> int:
    """Tokens of context every scored token has in its window: context - stride (at least one)."""
    return max(1, context - stride)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index) of each window: window w starts at w * step and scores its
    tokens from begin + lead on, so every token from `lead` on is scored exactly once, each with at
    least `lead = context - stride` tokens before it (the default stride = context / 2 gives half a
    context, as llama.cpp scores the second half of each chunk). stride == context: lead 1."""
    if context < 2 or not 1 <= stride <= context:
        raise ValueError(f"need a context of at least 2 and a stride between 1 and the context ({context}); got {stride}")
    lead = lead_tokens(context, stride)
    step = context - lead
    out: list[tuple[int, int, int]] = []
    begin = 0
    while begin + lead < n_tokens:
        end = min(begin + context, n_tokens)
        out.append((begin, end, begin + lead))
        begin += step
    return out


def describe_windows(spans: list[tuple[int, int, int]], context: int, stride: int) -> dict:
    """Exactly which tokens were scored, for validation.json."""
    lead = lead_tokens(context, stride)
    return {"rule": f"windows of up to {context} tokens every {context - lead} tokens; in each window the tokens "
                    f"from offset {lead} on are scored (each predicted from at least {lead} tokens of the window)",
            "windows": [list(s) for s in spans], "scored": sum(e - f for _, e, f in spans)}


def llamacpp_windows(n_tokens: int, context: int, chunks: int) -> list[tuple[int, int, int]]:
    """The windows llama.cpp's perplexity tool scores: non-overlapping chunks of `context` tokens,
    only the second half of each chunk scored. Used to cross-check the two runtimes."""
    full = min(chunks, n_tokens // context)
    return [(c * context, (c + 1) * context, c * context + context // 2 + 1) for c in range(full)]


def _scored(rt: TransformersModel, ids: list[int], begin: int, end: int, first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs [end - first, vocab], targets) of one window's scored positions."""
    window = ids[begin:end]
    lp = rt.logprobs(window, keep=end - first + 1)[:-1]
    return lp, torch.tensor(window[first - begin:], device=lp.device)


def perplexity(rt: TransformersModel, token_ids: list[int], context: int = 512, stride: int = 256,
               spans: list[tuple[int, int, int]] | None = None) -> tuple[float, int]:
    """Single-model perplexity over the same windows as `score_lockstep`; returns (ppl, scored tokens)."""
    nll = []
    for begin, end, first in spans if spans is not None else windows(len(token_ids), context, stride):
        lp, targets = _scored(rt, token_ids, begin, end, first)
        nll.append(-lp.gather(1, targets[:, None])[:, 0].cpu())
    nll_all = torch.cat(nll)
    return float(nll_all.mean().exp()), nll_all.numel()


POSITION_BINS = 8


class _Accumulator:
    """Per-token statistics of one domain, window by window (one float per scored token kept)."""

    def __init__(self, context: int) -> None:
        self.context = context
        self.nll_base: list[torch.Tensor] = []
        self.nll_art: list[torch.Tensor] = []
        self.kls: list[torch.Tensor] = []
        self.agree = 0
        self.bin_sum = torch.zeros(POSITION_BINS, dtype=torch.float64)
        self.bin_n = torch.zeros(POSITION_BINS, dtype=torch.float64)

    def add(self, begin: int, first: int, kl: torch.Tensor, nll_base: torch.Tensor, nll_art: torch.Tensor,
            base_top: torch.Tensor, art_top: torch.Tensor) -> None:
        """Rows predicting tokens first, first + 1, ... of the window starting at `begin`."""
        kl = kl.clamp_min(0).cpu()
        self.kls.append(kl)
        self.nll_base.append(nll_base.cpu())
        self.nll_art.append(nll_art.cpu())
        self.agree += int((base_top.cpu() == art_top.cpu()).sum())
        # position of the predicting token in its window
        predicting = torch.arange(first - 1 - begin, first - 1 - begin + kl.numel())
        bins = (predicting * POSITION_BINS // self.context).clamp_max(POSITION_BINS - 1)
        self.bin_sum.index_add_(0, bins, kl.double())
        self.bin_n.index_add_(0, bins, torch.ones_like(kl, dtype=torch.float64))

    def scores(self, domain: str, stride: int, windows_info: dict | None) -> DomainScores:
        kl = torch.cat(self.kls)
        n = kl.numel()
        return DomainScores(
            domain=domain, runtime="transformers", n_tokens=n, context=self.context, stride=stride,
            base_ppl=float(torch.cat(self.nll_base).double().mean().exp()),
            ppl=float(torch.cat(self.nll_art).double().mean().exp()),
            kld_mean=float(kl.double().mean()), kld_median=float(kl.median()), kld_p99=float(torch.quantile(kl, 0.99)),
            top1_agreement=self.agree / n,
            kld_by_position=[float(s / c) if c else None for s, c in zip(self.bin_sum, self.bin_n)],
            scored_tokens=windows_info,
        )


def score_lockstep(base: TransformersModel, artifact: TransformersModel, token_ids: list[int], domain: str,
                   context: int = 512, stride: int = 256, spans: list[tuple[int, int, int]] | None = None) -> DomainScores:
    """Perplexity of both models and KL(base || artifact) over the full vocabulary in float32, with both
    models in memory, window by window: the exact value the stored reference is checked against."""
    spans = spans if spans is not None else windows(len(token_ids), context, stride)
    acc = _Accumulator(context)
    for begin, end, first in spans:
        pb, targets = _scored(base, token_ids, begin, end, first)
        pa, _ = _scored(artifact, token_ids, begin, end, first)
        pb = pb.to(pa.device)
        acc.add(begin, first, (pb.exp() * (pb - pa)).sum(-1), -pb.gather(1, targets[:, None].to(pb.device))[:, 0],
                -pa.gather(1, targets[:, None])[:, 0], pb.argmax(-1), pa.argmax(-1))
    return acc.scores(domain, stride, describe_windows(spans, context, stride))


def score_against_reference(artifact: TransformersModel, token_ids: list[int], reference: BaseReference, domain: str,
                            context: int, stride: int, on_window=lambda n: None) -> DomainScores:
    """Perplexity and KL(base || artifact) of the artifact against a stored base reference (one model in memory)."""
    acc = _Accumulator(context)
    for i, (begin, end, first) in enumerate(reference.windows):
        pa, targets = _scored(artifact, token_ids, begin, end, first)
        if pa.shape[1] != reference.vocab:
            raise QuantkitError(f"{artifact.path.name} has a vocabulary of {pa.shape[1]}, its base {reference.vocab}")
        nll_art, art_top = -pa.gather(1, targets[:, None])[:, 0], pa.argmax(-1)
        for r0 in range(0, pa.shape[0], ROWS_PER_CHUNK):
            r1 = min(r0 + ROWS_PER_CHUNK, pa.shape[0])
            codes, scale, nll_base, base_top = reference.block(i, r0, r1, pa.device)
            acc.add(begin, first + r0, kl_from_codes(codes, scale, pa[r0:r1]), nll_base, nll_art[r0:r1], base_top,
                    art_top[r0:r1])
        del pa, nll_art
        release_free_heap()  # per chunk as well: 80 MB less at peak, 17% slower (measured)
        on_window(end - first)
    return acc.scores(domain, stride, describe_windows(reference.windows, context, stride))


def perplexity_llamacpp_style(rt: TransformersModel, token_ids: list[int], context: int, chunks: int) -> float:
    """Perplexity over llama.cpp's perplexity-tool windows (`llamacpp_windows`)."""
    return perplexity(rt, token_ids, context, context, spans=llamacpp_windows(len(token_ids), context, chunks))[0]


class TransformersRuntime(Runtime):
    """compressed-tensors (and float) checkpoints: the base's reference computed once (cached on disk),
    then the artifact alone, window by window."""

    name = "transformers"

    def evaluate(self, artifact, base: BaseFolder, texts, settings: EvaluationSettings, reporter) -> list[ScoredTarget]:
        from transformers import AutoTokenizer

        from quantkit.device import device_class

        [target] = artifact.targets()
        base_folder = base.path
        base_tok, art_tok = AutoTokenizer.from_pretrained(str(base_folder)), AutoTokenizer.from_pretrained(str(artifact.path))
        lead = lead_tokens(settings.context, settings.stride)
        needed = settings.max_tokens + lead

        def count_tokens(text: str) -> int:
            return len(base_tok(text, add_special_tokens=False)["input_ids"])

        token_ids = {}
        for domain, source in texts.items():
            text = source.prefix(count_tokens, needed)  # only what is scored is read and tokenized
            ids = base_tok(text, add_special_tokens=False)["input_ids"][:needed]
            if art_tok(text, add_special_tokens=False)["input_ids"][: len(ids)] != ids:
                raise QuantkitError(
                    f"{artifact.name} tokenizes the '{domain}' text differently from its base; KLD would be meaningless"
                )
            if len(ids) <= lead:
                raise QuantkitError(f"the '{domain}' text has {len(ids)} tokens; scoring needs more than {lead} "
                                    f"(context {settings.context}, stride {settings.stride})")
            token_ids[domain] = ids
        store = CacheStore(REFERENCES)
        scores = []
        with ExitStack() as held:
            references = {}
            loaded: list[TransformersModel] = []  # the base, loaded only when some reference is not stored yet
            for domain, ids in token_ids.items():
                spans = windows(len(ids), settings.context, settings.stride)
                key = reference_key(base.fingerprint, ids, settings.context, settings.stride,
                                    settings.dtype, device_class(settings.device))

                def build(folder, ids=ids, spans=spans, domain=domain):
                    if not loaded:
                        with reporter.task(f"loading the base ({settings.dtype} on {settings.device})"):
                            loaded.append(TransformersModel(base_folder, settings.dtype, settings.device, base_tok))
                    n = sum(e - f for _, e, f in spans)
                    with reporter.task(f"base reference on {domain} ({n} tokens)", total=n, tokens=n) as bar:
                        build_reference(loaded[0], ids, spans, folder, bar.advance)

                path, built = held.enter_context(store.entry(key, build))
                if not built:
                    reporter.log(f"base reference on {domain}: stored ({path})")
                references[domain] = BaseReference(path)
            for model in loaded:
                model.close()
            loaded.clear()
            with reporter.task(f"loading {artifact.name} ({settings.dtype} on {settings.device})"):
                quant = TransformersModel(artifact.path, settings.dtype, settings.device, art_tok)
            try:
                for domain, ids in token_ids.items():
                    ref = references[domain]
                    n = ref.offsets[-1]
                    with reporter.task(f"{artifact.name}: perplexity and KLD on {domain} ({n} tokens)", total=n, tokens=n) as bar:
                        scores.append(score_against_reference(quant, ids, ref, domain, settings.context, settings.stride,
                                                              bar.advance))
            finally:
                quant.close()
        return [ScoredTarget(target, self.name, scores, device=settings.device)]
