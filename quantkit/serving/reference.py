"""The transformers runtime's greedy continuation of the same checkpoint: what vLLM's greedy ids are compared with."""

from __future__ import annotations

from pathlib import Path

from quantkit.serving.workload import GREEDY_PROMPT


def transformers_greedy_ids(model_path: Path, prompt: str, n: int, device: str = "cpu", dtype: str = "float32") -> list[int]:
    """Greedy continuation with the transformers runtime: the reference for vLLM. validate passes its
    --device and --dtype (a 70B model is not run in float32 on the CPU); serve-test uses the CPU."""
    import torch

    from quantkit.runtimes.transformers import TransformersModel

    rt = TransformersModel(model_path, dtype, device)
    ids = rt.tokenize(prompt)
    try:
        with torch.inference_mode():
            out = rt.model.generate(torch.tensor([ids], device=rt.device), max_new_tokens=n, do_sample=False,
                                    num_beams=1, pad_token_id=rt.tokenizer.eos_token_id)
        return out[0, len(ids) :].tolist()
    finally:
        rt.close()


def greedy_reference(model_path: Path, n: int, device: str = "cpu", dtype: str = "float32") -> list[int]:
    """The transformers runtime's greedy ids for GREEDY_PROMPT. Callers ask the format first
    (`Format.transformers_reference`): transformers would dequantize a GGUF, which is not what vLLM runs."""
    return transformers_greedy_ids(model_path, GREEDY_PROMPT, n, device, dtype)
