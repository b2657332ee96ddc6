"""Tiny Llama checkpoints (a base and perturbed "fine-tunes") with a tokenizer, saved as HF folders."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(vocab_size - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llama_config(vocab_size: int = 64, layers: int = 4, hidden: int = 32):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def save_llama_family(root: Path, n: int = 3, vocab_size: int = 64, layers: int = 4, seed: int = 0, **save) -> tuple[Path, list[Path]]:
    """``root/base`` and ``root/ft{t}`` (base + noise of scale 0.02 (t + 1)), float32 safetensors."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(tiny_llama_config(vocab_size, layers)).eval()
    tok = tiny_tokenizer(vocab_size)
    base.save_pretrained(root / "base", **save)
    tok.save_pretrained(root / "base")
    dirs = []
    for t in range(n):
        sd = {k: v + 0.02 * (t + 1) * torch.randn_like(v) for k, v in base.state_dict().items()}
        ft = LlamaForCausalLM(tiny_llama_config(vocab_size, layers)).eval()
        ft.load_state_dict(sd)
        ft.save_pretrained(root / f"ft{t}", **save)
        tok.save_pretrained(root / f"ft{t}")
        dirs.append(root / f"ft{t}")
    return root / "base", dirs
