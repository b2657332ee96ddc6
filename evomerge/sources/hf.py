"""A local Hugging Face model directory: the model class chosen from ``config.json``, the tokenizer
(or image processor) saved beside it, and :class:`~evomerge.sources.adapters.HFAdapter` over the model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr, model_validator

from evomerge.errors import FieldIssue, UserError, read_json
from evomerge.sources.base import Source, source_kind

if TYPE_CHECKING:
    from torch import nn

    from evomerge.sources.adapters import HFAdapter

#: Files that mean a directory has a tokenizer; ``preprocessor_config.json`` means an image processor.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
PROCESSOR_FILE = "preprocessor_config.json"
#: The transformers auto class for an architecture, by the ending of its name; any other: ``AutoModel``.
AUTO_CLASSES = (
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),  # GPT-2's GPT2LMHeadModel, GPT-J's, CodeGen's ...
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForImageClassification", "AutoModelForImageClassification"),
)


@source_kind("hf")
class HFSource(Source):
    """``path``: the directory (``config.json`` and safetensors or ``.bin`` weights, sharded or not).
    ``require_tokenizer``: opening fails unless a tokenizer is saved there (text tasks need one)."""

    path: Path
    require_tokenizer: bool = False
    _config: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> HFSource:
        if not self.path.is_dir():
            raise FieldIssue("path", "an existing Hugging Face model directory", str(self.path))
        config = self.path / "config.json"
        if not config.is_file():
            raise FieldIssue("path", "a Hugging Face model directory (it has no config.json)", str(self.path))
        data = read_json(config, "a Hugging Face model config")
        if not isinstance(data, dict):
            raise FieldIssue("path", f"a directory whose config.json is a JSON object ({config})", type(data).__name__)
        self._config = data
        if self.require_tokenizer and not self.has_tokenizer:
            raise FieldIssue("path", f"a directory with a tokenizer (one of {', '.join(TOKENIZER_FILES)})",
                             str(self.path))
        self.tensors()  # every shard's header read now: a missing, truncated or garbage shard fails here
        return self

    def default_name(self) -> str:
        return self.path.name

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    @property
    def architecture(self) -> str:
        """``architectures[0]`` of ``config.json``, else its ``model_type``."""
        return str((self._config.get("architectures") or [self._config.get("model_type", "unknown")])[0])

    @property
    def auto_class(self) -> str:
        """The transformers auto class that loads the architecture with its head."""
        if not self._config.get("architectures"):
            return "AutoModel"
        return next((auto for end, auto in AUTO_CLASSES if self.architecture.endswith(end)), "AutoModel")

    @property
    def has_tokenizer(self) -> bool:
        return any((self.path / f).is_file() for f in TOKENIZER_FILES)

    def weights(self) -> Path:
        return self.path

    def load_model(self, device: str = "cpu", auto_class: str | None = None) -> nn.Module:
        """The model loaded by ``auto_class`` (default :attr:`auto_class`)."""
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one resident model per worker: no bars
        name = auto_class or self.auto_class
        loader = getattr(transformers, name, None)
        if loader is None or not hasattr(loader, "from_pretrained"):
            raise UserError(f"unknown transformers auto class '{name}'")
        try:
            model = loader.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{self.path}: transformers cannot load it with {name}: {exc}") from None
        return model.to(device).eval().requires_grad_(False)

    def adapter(self, device: str = "cpu", model: nn.Module | None = None) -> HFAdapter:
        from evomerge.sources.adapters import HFAdapter

        return HFAdapter.from_model(model if model is not None else self.load_model(device))

    def tokenizer(self) -> Any:
        """``AutoTokenizer`` over the directory, or ``AutoImageProcessor`` for an image model."""
        import transformers

        if self.has_tokenizer:
            return transformers.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        if (self.path / PROCESSOR_FILE).is_file():
            return transformers.AutoImageProcessor.from_pretrained(str(self.path), local_files_only=True)
        raise UserError(f"{self.path}: no tokenizer ({', '.join(TOKENIZER_FILES)}) and no {PROCESSOR_FILE}")
