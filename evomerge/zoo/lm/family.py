"""What the built-in language-model family holds and how one of its models is trained.

One :class:`LMFamilySpec` fixes everything that enters the weights: the Llama's dimensions, the
skills, the base's pretraining mixture (every skill of :data:`~evomerge.zoo.lm.skills.SKILLS`,
interleaved) and each fine-tune's training (one skill, starting from the base). A model is an
ordinary Hugging Face folder: ``LlamaForCausalLM`` weights and config plus the character tokenizer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from evomerge.zoo.lm.skills import HELD_OUT, SKILLS, generate, training_text
from evomerge.zoo.lm.tokenizer import char_tokenizer
from evomerge.zoo.lm.train import encode_pairs, train_lm

BASE = "base"


class LMFamilySpec(BaseModel):
    """How to build the family. Every field enters the cache key.

    ``skills``: one fine-tune each (``lm-<skill>``); ``train_items``: training items per skill (the
    base sees ``train_items`` of every skill in :data:`SKILLS`); ``held_out``: validation and test
    items per skill in the item files (at most :data:`HELD_OUT`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = 128
    layers: int = 4
    intermediate: int = 512
    heads: int = 4
    max_positions: int = 64
    skills: tuple[str, ...] = ("reverse", "sort", "count", "compare")
    train_items: int = 4000
    held_out: int = HELD_OUT
    base_steps: int = 250
    ft_steps: int = 200
    batch_size: int = 64
    lr: float = 3e-3
    ft_lr: float = 3e-3

    def model_ids(self) -> list[str]:
        return [model_id(BASE), *(model_id(s) for s in self.skills)]


def model_id(member: str) -> str:
    """``lm-base``, ``lm-<skill>``."""
    return f"lm-{member}"


def tiny_family() -> LMFamilySpec:
    """A family with the default skills that builds in seconds, for tests."""
    return LMFamilySpec(hidden=32, layers=2, intermediate=64, train_items=400,
                        held_out=60, base_steps=30, ft_steps=20, batch_size=16)


def new_model(spec: LMFamilySpec, seed: int) -> Any:
    """A freshly initialised ``LlamaForCausalLM`` (``torch.manual_seed(seed)``) over the character tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def train_member(spec: LMFamilySpec, member: str, seed: int, out: Path, base_dir: Path | None) -> float:
    """Train ``member`` (the base, or a skill's fine-tune of the model in ``base_dir``) and save it with
    the tokenizer as a Hugging Face folder ``out``; returns the training seconds.

    Seeds: the base's weights and batches from ``1000 * seed``; skill ``k``'s batches from ``1000 * seed + k + 1``.
    """
    from transformers import LlamaForCausalLM

    tok = char_tokenizer()
    if member == BASE:
        model, skills, steps, lr, train_seed = new_model(spec, 1000 * seed), list(SKILLS), spec.base_steps, spec.lr, 1000 * seed
    else:
        model = LlamaForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
        skills, steps, lr = [member], spec.ft_steps, spec.ft_lr
        train_seed = 1000 * seed + spec.skills.index(member) + 1
    streams = [generate(s, spec.train_items, seed, "train") for s in skills]
    pairs = [training_text(item) for row in zip(*streams) for item in row]  # interleaved: skill by skill
    start = time.perf_counter()
    train_lm(model, encode_pairs(tok, pairs), steps=steps, lr=lr, batch_size=spec.batch_size, seed=train_seed,
             pad_id=tok.pad_token_id)
    seconds = time.perf_counter() - start
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return seconds
