"""Whether sources can be merged weight by weight: one architecture, one set of tensor names and
shapes, read from the checkpoints' headers. Vocabulary tensors (embeddings, LM head) whose rows
differ are a separate finding, :class:`VocabularyMismatch`, so a caller can offer a backbone-only merge."""

from __future__ import annotations

from collections.abc import Sequence

from evomerge.errors import UserError
from evomerge.io.tensors import is_vocab_tensor
from evomerge.sources.base import Source


class VocabularyMismatch(UserError):
    """The sources agree except in the rows of their vocabulary tensors (``tensors``); merging the
    backbone only, keeping one model's embeddings and head, still works."""

    def __init__(self, message: str, tensors: list[str]):
        super().__init__(message)
        self.tensors = tensors


def check_compatible(sources: Sequence[Source], backbone_only: bool = False) -> None:
    """A UserError naming the first source and tensor that differ from the first source's, in
    architecture, tensor names or shapes; a :class:`VocabularyMismatch` when only vocabulary tensors'
    shapes differ (ignored with ``backbone_only``)."""
    if len(sources) < 2:
        return
    first, ref = sources[0], sources[0].tensors()
    vocab: dict[str, str] = {}  # tensor name -> rows of each source
    for other in sources[1:]:
        if other.architecture != first.architecture:
            raise UserError(f"models '{first.name}' ({first.architecture}) and '{other.name}' ({other.architecture}) "
                            "are different architectures; a weight merge needs one")
        tensors = other.tensors()
        for name in ref.names():
            if name not in tensors:
                raise UserError(f"model '{other.name}' has no tensor '{name}' (model '{first.name}' has it)")
        for name in tensors.names():
            if name not in ref:
                raise UserError(f"model '{other.name}' has a tensor '{name}' that model '{first.name}' lacks")
        for name in ref.names():
            a, b = ref.info(name).shape, tensors.info(name).shape
            if a == b:
                continue
            if is_vocab_tensor(ref, name) and is_vocab_tensor(tensors, name) and a[1:] == b[1:]:
                vocab[name] = f"'{name}' ({first.name} {a[0]} rows, {other.name} {b[0]})"
                continue
            raise UserError(f"tensor '{name}': model '{first.name}' has shape {list(a)}, model '{other.name}' {list(b)}")
    if vocab and not backbone_only:
        raise VocabularyMismatch(f"vocabularies differ: {', '.join(vocab.values())}; merge the backbone only and "
                                 "keep one model's embeddings and head", list(vocab))
