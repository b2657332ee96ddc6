"""How lm-eval-harness's ``HFLM`` tokenizes for a causal LM (``lm_eval/models/huggingface.py``,
``lm_eval/api/model.py``), written once for the multiple-choice and generation scorers."""

from __future__ import annotations

import inspect
from functools import cached_property
from typing import Any

import torch
from torch import nn

#: ``transformers``' sentinel for "no maximum length" (``lm_eval.models.utils.TOKENIZER_INFINITY``).
_TOKENIZER_INFINITY = 1000000000000000019884624838656
_DEFAULT_MAX_LENGTH = 2048


def pad_id(tokenizer: Any) -> int:
    """Pad, else unk, else eos (``lm_eval.models.utils.configure_pad_token``)."""
    for value in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if value is not None:
            return value
    return 0


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows left-padded with ``pad``, and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


class CausalLM:
    """A resident causal LM and its tokenizer, with lm-eval's tokenization rules."""

    def __init__(self, model: nn.Module, tokenizer: Any, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device

    @cached_property
    def prefix_token_id(self) -> int:
        """BOS, else EOS: the token an empty context is replaced by (``HFLM.prefix_token_id``)."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @cached_property
    def _prefix_text(self) -> str:
        return self.tokenizer.decode(self.prefix_token_id)

    @cached_property
    def pad_token_id(self) -> int:
        """:func:`pad_id` of the tokenizer."""
        return pad_id(self.tokenizer)

    @cached_property
    def max_length(self) -> int:
        """``lm_eval.models.utils.resolve_max_length``: the config's context length, else the
        tokenizer's ``model_max_length``, else 2048."""
        cfg = getattr(self.model, "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if value is not None:
                return int(value)
        value = getattr(self.tokenizer, "model_max_length", None)
        if value is not None and value != _TOKENIZER_INFINITY:
            return int(value)
        return _DEFAULT_MAX_LENGTH

    @cached_property
    def _forward_args(self) -> set[str]:
        return set(inspect.signature(self.model.forward).parameters)

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """``HFLM.tok_encode``: the tokenizer's default special tokens, none when the text already
        starts with the prefix token's text."""
        kwargs: dict[str, Any] = {}
        if add_special_tokens is not None:
            kwargs["add_special_tokens"] = add_special_tokens
        elif text.startswith(self._prefix_text):
            kwargs["add_special_tokens"] = False
        return self.tokenizer.encode(text, **kwargs)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``TemplateLM.loglikelihood`` + ``_encode_pair``: an empty context becomes the prefix token;
        trailing spaces of the context move to the continuation; the continuation's tokens are the
        whole text's tokens after the context's."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx) :]

    @cached_property
    def _cache_arg(self) -> str | None:
        """The forward argument taking a key/value cache (``cache`` from transformers 5.x, else
        ``past_key_values``), or None."""
        return next((name for name in ("cache", "past_key_values") if name in self._forward_args), None)

    @cached_property
    def can_share_context(self) -> bool:
        """Whether the model takes and returns a key/value cache (Hugging Face causal LMs)."""
        return self._cache_arg is not None and {"use_cache", "position_ids"} <= self._forward_args and hasattr(self.model, "config")

    def left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`left_pad` with :attr:`pad_token_id`."""
        return left_pad(rows, self.pad_token_id)

    def context_then_continuations(
        self, contexts: list[list[int]], rows: list[int], conts: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run each context once, then every continuation on its context's key/value cache.

        Returns the logits after each context's last token ``(len(contexts), V)`` and, when some
        continuation has more than one token, the logits after each of ``conts[r][:-1]`` given
        context ``rows[r]`` ``(len(conts), max_len - 1, V)`` (right-padded).
        """
        ids, mask = self.left_padded(contexts)
        args: dict[str, Any] = {"attention_mask": mask.to(self.device), "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
                                "use_cache": True}
        if "logits_to_keep" in self._forward_args:
            args["logits_to_keep"] = 1
        out = self.model(input_ids=ids.to(self.device), **args)
        last = out.logits[:, -1]
        width = max(len(c) for c in conts) - 1
        if width == 0:
            return last, None
        index = torch.tensor(rows, dtype=torch.long)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        cache.reorder_cache(index.to(self.device))
        cont_ids = torch.full((len(conts), width), self.pad_token_id, dtype=torch.long)
        cont_mask = torch.zeros((len(conts), width), dtype=torch.long)
        for r, c in enumerate(conts):
            cont_ids[r, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            cont_mask[r, : len(c) - 1] = 1
        ctx_len = mask.sum(-1)[index]
        out = self.model(
            input_ids=cont_ids.to(self.device),
            attention_mask=torch.cat([mask[index], cont_mask], dim=1).to(self.device),
            position_ids=(ctx_len[:, None] + torch.arange(width)[None]).to(self.device),
            use_cache=True,
            **{self._cache_arg: cache},
        )
        return last, out.logits

    def last_logits(self, rows: list[list[int]], keep: int) -> torch.Tensor:
        """Logits ``(B, keep, V)`` at the last ``keep`` positions of each row, rows left-padded.

        Left padding with the attention mask and position ids equal to the unpadded ones, so each
        row's values are its own unpadded run's; only the kept positions go through the head.
        """
        ids, mask = self.left_padded(rows)
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if "position_ids" in self._forward_args:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(self.device)
        if "logits_to_keep" in self._forward_args:
            kwargs["logits_to_keep"] = keep
        if "use_cache" in self._forward_args:
            kwargs["use_cache"] = False
        out = self.model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits[:, -keep:]
