"""What the built-in language-model family holds and how one of its models is trained.

One :class:`LMFamilySpec` fixes everything that enters the weights: the Llama's dimensions, the
skills, the base's pretraining mixture (the skills of :data:`~evomerge.zoo.lm.skills.PRETRAINING`,
interleaved), each fine-tune's training (one skill, starting from the base, with a share of the
base's mixture replayed) and the second architecture (:class:`OtherArch`, a GPT-2 trained from scratch
on other skills). A model is an ordinary Hugging Face folder: ``LlamaForCausalLM`` (or
``GPT2LMHeadModel``) weights and config plus the character tokenizer.

Why replay: the skills share one prompt shape, so a fine-tune on one skill alone rewrites how the
model answers every prompt (a reverse fine-tune at the base's learning rate, 200 steps, scored 0.003
on sort, where the base scores 0.62, and 0.000 on count), and the task vectors no longer add up:
with those settings (lr 3e-3, no replay) even the plain average of the four fine-tunes scored below
the base (mean test 0.245 against 0.414). Mixing the pretraining data into fine-tuning is the
usual guard against such forgetting (rehearsal; Robins 1995, and the pretraining mix of InstructGPT's
PPO-ptx); with half the batches replayed at lr 1e-3 the fine-tunes keep the base's other skills and
their average beats the base.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Sequence
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from evomerge.zoo.lm.skills import HELD_OUT, PRETRAINING, generate, training_text
from evomerge.zoo.lm.tokenizer import char_tokenizer
from evomerge.zoo.lm.train import encode_pairs, train_lm

BASE = "base"
#: The member of the second architecture (:class:`OtherArch`), trained from scratch on its own skills.
OTHER = "gpt2"


class OtherArch(BaseModel):
    """The family's second architecture: a ``GPT2LMHeadModel`` over the same character tokenizer,
    pretrained from scratch on ``skills`` (none of the Llama fine-tunes'; ``shift`` and ``member`` are
    outside the Llama's pretraining mixture, ``upper`` is in it), for cross-architecture stitching.
    GPT-2 differs from the Llama in every block (learned absolute positions, LayerNorm, GELU MLP, fused
    attention, tied head), so only its activations can be aligned, not its weights. Dropout is off, as in
    the Llama: with GPT-2's default 0.1 this small model learns its skills far more slowly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    skills: tuple[str, ...] = ("upper", "shift", "member")
    steps: int = 400
    lr: float = 3e-3


class LMFamilySpec(BaseModel):
    """How to build the family. Every field enters the cache key.

    ``skills``: one fine-tune each (``lm-<skill>``); ``train_items``: training items per skill (the
    base sees ``train_items`` of every skill in :data:`PRETRAINING`); ``held_out``: validation and test
    items per skill in the item files (at most :data:`HELD_OUT`); ``replay``: the share of a
    fine-tune's training items drawn from the base's mixture (the rest are its skill's).
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
    fit_items: int = 250
    base_steps: int = 250
    ft_steps: int = 120
    batch_size: int = 64
    lr: float = 3e-3
    ft_lr: float = 1e-3
    replay: Annotated[float, Field(ge=0, lt=1)] = 0.5
    other: OtherArch = OtherArch()

    def model_ids(self) -> list[str]:
        return [model_id(BASE), *(model_id(s) for s in self.skills), model_id(OTHER)]

    def all_skills(self) -> tuple[str, ...]:
        """The fine-tunes' skills, then the second architecture's: every skill with an item file."""
        return (*self.skills, *self.other.skills)

    def condition(self, member: str) -> str:
        """A member's ``zoo list`` condition: ``mixture`` (the base), its skill, or the other architecture's skills."""
        return {BASE: "mixture", OTHER: "+".join(self.other.skills)}.get(member, member)

    @staticmethod
    def architecture(member: str) -> str:
        return "GPT2LMHeadModel" if member == OTHER else "LlamaForCausalLM"

    def own_skills(self, member: str) -> tuple[str, ...]:
        """The skills a member is judged on: a fine-tune's one, the base's fine-tune skills, the other architecture's."""
        return self.skills if member == BASE else self.other.skills if member == OTHER else (member,)


def model_id(member: str) -> str:
    """``lm-base``, ``lm-<skill>``."""
    return f"lm-{member}"


def tiny_family() -> LMFamilySpec:
    """A family with the default skills that builds in seconds, for tests."""
    return LMFamilySpec(hidden=32, layers=2, intermediate=64, train_items=400, held_out=60, fit_items=40,
                        base_steps=30, ft_steps=20, batch_size=16, other=OtherArch(hidden=32, layers=2, steps=30))


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


def new_other(spec: LMFamilySpec, seed: int) -> Any:
    """A freshly initialised ``GPT2LMHeadModel`` of :class:`OtherArch` (``torch.manual_seed(seed)``), same tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok, o = char_tokenizer(), spec.other
    cfg = GPT2Config(vocab_size=len(tok), n_positions=spec.max_positions, n_embd=o.hidden, n_layer=o.layers,
                     n_head=o.heads, n_inner=4 * o.hidden, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def interleaved(skills: Sequence[str], n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` training items of each skill as (prompt, answer), interleaved skill by skill (a prefix holds every skill)."""
    return [training_text(item) for row in zip(*(generate(s, n, seed, "train") for s in skills)) for item in row]


def train_and_save(model: Any, pairs: Sequence[tuple[str, str]], out: Path, *, steps: int, lr: float,
                   batch_size: int, seed: int) -> float:
    """Train ``model`` on (prompt, answer) ``pairs`` (:func:`~evomerge.zoo.lm.train.train_lm`) and save it
    with the character tokenizer as a Hugging Face folder ``out``; returns the training seconds."""
    tok = char_tokenizer()
    start = time.perf_counter()
    train_lm(model, encode_pairs(tok, pairs), steps=steps, lr=lr, batch_size=batch_size, seed=seed, pad_id=tok.pad_token_id)
    seconds = time.perf_counter() - start
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return seconds


def train_member(spec: LMFamilySpec, member: str, seed: int, out: Path, base_dir: Path | None) -> float:
    """Train ``member`` (the base, a skill's fine-tune of the model in ``base_dir``, or the other
    architecture) and save it with the tokenizer as a Hugging Face folder ``out``; returns the training seconds.

    Seeds: the base's weights and batches from ``1000 * seed``; skill ``k``'s batches from ``1000 * seed + k + 1``;
    the other architecture's from ``1000 * seed + 500`` (it trains on ``train_items`` of each of its skills).
    A fine-tune trains on its skill's ``train_items`` plus ``replay / (1 - replay)`` times as many
    items from the front of the base's mixture.
    """
    from transformers import LlamaForCausalLM

    if member == OTHER:
        o = spec.other
        return train_and_save(new_other(spec, 1000 * seed + 500), interleaved(o.skills, spec.train_items, seed), out,
                              steps=o.steps, lr=o.lr, batch_size=spec.batch_size, seed=1000 * seed + 500)
    mixture = interleaved(PRETRAINING, spec.train_items, seed)
    if member == BASE:
        model, pairs, steps, lr, train_seed = new_model(spec, 1000 * seed), mixture, spec.base_steps, spec.lr, 1000 * seed
    else:
        model = LlamaForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
        own = interleaved([member], spec.train_items, seed)
        pairs = own + mixture[: round(len(own) * spec.replay / (1 - spec.replay))]
        steps, lr, train_seed = spec.ft_steps, spec.ft_lr, 1000 * seed + spec.skills.index(member) + 1
    return train_and_save(model, pairs, out, steps=steps, lr=lr, batch_size=spec.batch_size, seed=train_seed)
