"""The LM family's character-level tokenizer, saved as a ``PreTrainedTokenizerFast``.

Built with the ``tokenizers`` library (a ``WordLevel`` model over single characters, a
pre-tokenizer that isolates every character and a ``Fuse`` decoder), so ``AutoTokenizer``
loads it offline like any Hugging Face tokenizer. No special token is added on encode: the
models are trained on raw ``prompt + answer`` strings, as lm-eval-harness feeds a causal LM.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from evomerge.zoo.lm.skills import ALPHABET

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """Ids 0–3 are ``<pad> <s> </s> <unk>``, then one id per character of :data:`ALPHABET`."""
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *ALPHABET])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False,
    )
