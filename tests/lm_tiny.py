"""Tiny Hugging Face models for the items tests: a character tokenizer and seeded random Llama / BERT."""

from __future__ import annotations

from pathlib import Path

import torch

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?'\"-+=*/()#\n")
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def char_tokenizer(bos: bool = True):
    """One token per character; BOS prepended like Llama's tokenizer (``bos=False``: nothing added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(path: Path | None = None, seed: int = 0, max_positions: int = 256):
    """A seeded random 2-layer Llama over :func:`char_tokenizer` (saved with it to ``path`` if given)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    if path is not None:
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return model, tok


def tiny_bert_classifier(num_labels: int = 3, seed: int = 0):
    """A seeded random 2-layer BERT sequence classifier over :func:`char_tokenizer` (no BOS)."""
    from transformers import BertConfig, BertForSequenceClassification

    tok = char_tokenizer(bos=False)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=128, num_labels=num_labels, pad_token_id=0)
    return BertForSequenceClassification(cfg).eval(), tok
