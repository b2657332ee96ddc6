"""mergekit's merge YAML (``mergekit-yaml CONFIG OUT``) read into typed records.

The records mirror ``mergekit.config.MergeConfiguration`` for the part evomerge merges the same way:
``merge_method``, ``models`` (each a ``model`` and its ``parameters``) or ``slices`` (each a list of
``sources`` with a ``model`` and a ``layer_range``), ``base_model``, ``parameters``, ``dtype``,
``out_dtype`` and ``tokenizer_source: base``. A parameter value is a scalar, a gradient (a list of
numbers, interpolated over the layers) or a list of ``{filter, value}`` conditions. Unlike mergekit,
unknown fields are errors (``extra="forbid"``): a misspelt or unsupported key (``modules``,
``tokenizer``, ``residual_weight``...) stops the merge with the field named instead of being ignored.
Model references are local folders (no hub downloads, no ``+lora`` suffixes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.errors import ConfigError, UserError

#: mergekit methods that ``evomerge merge`` runs with mergekit's semantics.
MERGEKIT_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "passthrough")
DTYPES = ("float32", "float16", "bfloat16", "float64")

Scalar = Union[bool, int, float, str]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConditionalParameter(_Strict):
    """``value`` applies to tensors whose name contains ``filter`` (``*`` or none: every tensor)."""

    value: ScalarOrGradient
    filter: str | None = None


ParameterSetting = Union[ScalarOrGradient, ConditionalParameter, list[ConditionalParameter]]
Parameters = dict[str, ParameterSetting]


class InputModel(_Strict):
    model: str
    parameters: Parameters | None = None


class InputSlice(_Strict):
    model: str
    layer_range: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _ordered(self) -> InputSlice:
        if self.layer_range[1] <= self.layer_range[0]:
            raise ValueError(f"layer_range [start, end) must have end > start, got {list(self.layer_range)}")
        return self


class OutputSlice(_Strict):
    sources: Annotated[list[InputSlice], Field(min_length=1)]
    base_model: str | None = None
    parameters: Parameters | None = None


class MergekitConfig(_Strict):
    merge_method: str
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: Parameters | None = None
    dtype: Literal[DTYPES] | None = None  # type: ignore[valid-type]
    out_dtype: Literal[DTYPES] | None = None  # type: ignore[valid-type]
    tokenizer_source: Literal["base"] | None = None

    @model_validator(mode="after")
    def _one_input_kind(self) -> MergekitConfig:
        if bool(self.models) == bool(self.slices):
            raise ValueError("exactly one of 'models' or 'slices' (non-empty) must be present")
        return self

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if name not in MERGEKIT_METHODS:
            raise ValueError(f"one of {', '.join(MERGEKIT_METHODS)} (evomerge runs these with mergekit's semantics), got '{name}'")
        return name

    def referenced_models(self) -> list[str]:
        """Every model named, base first, each once, in order of appearance."""
        seen: list[str] = [self.base_model] if self.base_model else []
        for m in self.models or []:
            seen.append(m.model)
        for s in self.slices or []:
            seen += ([s.base_model] if s.base_model else []) + [src.model for src in s.sources]
        return list(dict.fromkeys(seen))


def validation_error(source: str, exc: ValidationError) -> ConfigError:
    """The first pydantic error as a :class:`ConfigError` naming the field path."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "union", "tagged-union")))
    loc = loc.replace("merge_method.", "")
    if err["type"] == "extra_forbidden":
        return ConfigError(source, loc, "a known field; this one is unknown or not supported by evomerge merge")
    msg = err["msg"].removeprefix("Value error, ")
    return ConfigError(source, loc or "(config)", msg[:1].lower() + msg[1:], err.get("input") if err["type"] != "value_error" else None)


def parse_mergekit_config(data: Any, source: str = "config") -> MergekitConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, "(config)", "a mapping of mergekit config fields", type(data).__name__)
    try:
        return MergekitConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(source, exc) from None


def load_mergekit_config(path: str | Path) -> MergekitConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    return parse_mergekit_config(data, str(path))
