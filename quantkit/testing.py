"""Tiny, randomly initialised models for fast tests and examples (no download, seconds to build)."""

from __future__ import annotations

from pathlib import Path


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on the built-in prose+code calibration text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from quantkit.sources.calibration import builtin_texts

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_texts("mixed", "train")[:400], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def build_tiny_llama(
    folder: str | Path,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
    tokenizer=None,
) -> Path:
    """Save a random LlamaForCausalLM (safetensors) and a tokenizer into `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = tokenizer or build_tiny_tokenizer(vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def edit_weights(folder: str | Path, edit) -> Path:
    """Rewrite `folder`/model.safetensors as `edit(tensors)` returns it (a dict of name -> tensor, changed in
    place or replaced): tests plant broken checkpoints with it (a tensor removed, a NaN, an int8 cast)."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    tensors = load_file(path)
    tensors = edit(tensors) or tensors
    save_file(tensors, path, metadata={"format": "pt"})
    return path
