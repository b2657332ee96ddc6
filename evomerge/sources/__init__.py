"""Model sources: where the models a recipe merges come from.

A :class:`Source` gives a model's config, its tensors read lazily from the checkpoint's headers
(:class:`~evomerge.io.tensors.TensorSource`), the loaded module, an adapter (named layers; run up to
a layer and on from a layer with the full inputs) and, for text models, its tokenizer. Kinds, by the
name a space file gives under ``source``: ``zoo`` (a built-in zoo model by id), ``hf`` (a local
Hugging Face directory), ``torch`` (a module factory plus a safetensors checkpoint).
:func:`check_compatible` says whether sources can be merged weight by weight.
"""

from evomerge.sources.base import SOURCES, Source, open_source, source_kind
from evomerge.sources.compat import VocabularyMismatch, check_compatible
from evomerge.sources.hf import HFSource
from evomerge.sources.module import TorchSource
from evomerge.sources.zoo import ZooSource

__all__ = ["SOURCES", "HFSource", "Source", "TorchSource", "VocabularyMismatch", "ZooSource", "check_compatible",
           "open_source", "source_kind"]
