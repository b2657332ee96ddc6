"""The recipe kind interface and its registry, :data:`RECIPE_KINDS`, keyed by the recipe's ``kind``.

A kind is its pydantic record (the fields a recipe of that kind holds) with the methods every kind
answers: :meth:`RecipeKind.model_refs` (the models it reads), :meth:`RecipeKind.build` (a merged
module from zoo sources), :meth:`RecipeKind.plan` (a streamed merge into a Hugging Face folder),
:meth:`RecipeKind.with_models` (its models renamed, e.g. to folders), :meth:`RecipeKind.mergekit_config`
(the equivalent mergekit config, where there is one), and how a worker builds its candidates over
resident Hugging Face sources: :attr:`RecipeKind.in_place` (written into one resident model of its base)
or :attr:`RecipeKind.as_view` (:meth:`RecipeKind.view`: a module over the resident source models' modules).
A kind that cannot be built one way says so with a :class:`UserError`. The kinds themselves live
in :mod:`evomerge.recipe.schema` (``stitch``, ``weights``), :mod:`evomerge.recipe.layerwise` and
:mod:`evomerge.recipe.stack`; :func:`evomerge.recipe.schema.parse_recipe` validates through this registry.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import ValidationError, model_validator

from evomerge import settings
from evomerge.errors import ConfigError, UserError, config_error
from evomerge.registry import Registry
from evomerge.settings import Seed

if TYPE_CHECKING:
    import torch
    from torch import nn

    from evomerge.core.merge import MergeParams
    from evomerge.core.probe import ActivationCache
    from evomerge.recipe.inplace import InPlaceBuilder
    from evomerge.recipe.materialize import Materialized, Sources
    from evomerge.recipe.stitch_view import FitTexts
    from evomerge.recipe.stream import MergePlan


def path_steps(field: str) -> list[str | int]:
    """A field path's keys and list indices: ``branches[0].model`` is ``["branches", 0, "model"]``."""
    return [int(index) if index else key for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field)]


class NoMergekitConfig(UserError):
    """The recipe has no mergekit equivalent (:meth:`RecipeKind.mergekit_config`); the message says why."""


class Strict(settings.Strict):
    """A settings record in which a null field takes its default (inactive conditional genes decode to null)."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return _drop_nulls(data) if isinstance(data, dict) else data


def _drop_nulls(params: Any) -> Any:
    """Inactive conditional genes decode to null: a null parameter means 'use the default' (a value
    that is not a mapping is left to the field's type check)."""
    if not isinstance(params, dict):
        return {} if params is None else params
    return {k: v for k, v in params.items() if v is not None}


class RecipeKind(Strict):
    """One recipe kind: a record whose ``kind`` is the name it is registered under."""

    kind: str
    seed: Seed = 0
    #: Merges its models tensor by tensor, so their sources must hold the same tensors (checked at load).
    tensorwise: ClassVar[bool] = False
    #: A worker builds its candidates as views over its resident source models (:meth:`view`), each
    #: source loaded once; its sources' configs are checked before a search by :meth:`check_sources`.
    as_view: ClassVar[bool] = False

    @property
    def in_place(self) -> bool:
        """Whether a worker can write this recipe's candidate into one resident model of its base
        (:class:`~evomerge.recipe.inplace.InPlaceBuilder`); such a recipe has ``base``, ``models``,
        ``method`` and :meth:`resolver`."""
        return False

    @property
    def single_model(self) -> bool:
        """Whether the candidate is one model of its sources' architecture, which :meth:`plan` can write
        into a Hugging Face folder (a stitch of two architectures and MASS routing are not)."""
        return True

    @property
    def routed(self) -> bool:
        """Whether a worker builds this recipe's candidate as MASS routing over its base's resident model
        (:meth:`routed_view`, :mod:`evomerge.recipe.mass_view`): each input runs a merge of the tasks it is
        routed to, written in place; its sources are checked by :meth:`check_sources`."""
        return False

    def routed_view(self, builder: InPlaceBuilder) -> nn.Module:
        """The routed candidate over the resident model of ``builder``, for a kind that is :attr:`routed`."""
        raise UserError(f"recipe kind '{self.kind}' does not route")

    def resolver(self, layers: int) -> Callable[[str], MergeParams | None]:
        """An in-place recipe's parameters per tensor name (None: the tensor keeps the base), for a
        model of ``layers`` repeated layers."""
        raise UserError(f"recipe kind '{self.kind}' is not built in place")

    def view(self, models: Mapping[str, nn.Module], fit: FitTexts | None = None) -> nn.Module:
        """The candidate as a module over ``models`` (every model of :meth:`model_refs`, by name, loaded
        once and left unchanged), sharing their weights: for a kind that is :attr:`as_view`. ``fit``: the
        tasks' training texts, for a view fitted on activations (a stitch)."""
        raise UserError(f"recipe kind '{self.kind}' is not built as a view over resident models")

    def view_params(self, module: nn.Module) -> int:
        """The parameters a view built by :meth:`view` holds (what its materialized model would)."""
        raise UserError(f"recipe kind '{self.kind}' is not built as a view over resident models")

    def check_sources(self, configs: Mapping[str, Mapping[str, Any]], source: str, prefix: str = "",
                      tasks: Sequence[str] = ()) -> None:  # fmt: skip
        """Whether the models whose Hugging Face configs are ``configs`` (by the recipe's names) can be
        viewed, for a space whose tasks are named ``tasks``; a ConfigError names ``source`` and the field under ``prefix``."""
        raise UserError(f"recipe kind '{self.kind}' is not built as a view over resident models")

    @abstractmethod
    def model_refs(self) -> list[tuple[str, str]]:
        """Every model the recipe reads, with its field path: ``[("base", id), ("models[0]", id)]``."""

    def with_models(self, models: Mapping[str, str], source: str = "recipe") -> Self:
        """A re-validated copy with every model of :meth:`model_refs` replaced through ``models``
        (e.g. names to model folders), field by field; a model ``models`` lacks is a ConfigError naming its field."""
        data = self.model_dump(mode="json")
        for path, model in self.model_refs():
            if model not in models:
                raise ConfigError(source, path, f"a model of {', '.join(models) or '(none)'}", model)
            *parents, leaf = path_steps(path)
            node = data
            for step in parents:
                node = node[step]
            node[leaf] = models[model]
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise config_error(source, exc) from None

    def parents(self) -> list[str]:
        """The models merged (``mp-irt``'s parents), each once; the ``base`` (only the reference of
        task vectors) is not one."""
        return list(dict.fromkeys(m for path, m in self.model_refs() if path != "base"))

    def mixing(self, task_key: str) -> dict[str, float]:
        """Each source model's share in the merge (``mpirt``'s prior): equal shares of the parents."""
        return dict.fromkeys(self.parents(), 1.0)

    def build(self, sources: Sources, cache: ActivationCache | None, skeleton: bool) -> Materialized:
        """The merged module from zoo ``sources`` (``skeleton``: structure only, weights loaded afterwards)."""
        raise UserError(f"recipe kind '{self.kind}' is not built from zoo models; merge it into a "
                        "Hugging Face folder (evomerge merge)")

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        """The streamed merge into a Hugging Face folder; the recipe's models are model folders.
        ``source`` names the recipe's file in errors; ``keep_embeddings_from``: a backbone-only merge."""
        raise UserError(f"recipe kind '{self.kind}' cannot be streamed into a Hugging Face folder")


    def mergekit_config(self) -> dict[str, Any]:
        """The mergekit config (``mergekit-yaml``) that builds this recipe, whose models are model folders;
        :class:`NoMergekitConfig` says why there is none."""
        raise NoMergekitConfig(f"recipe kind '{self.kind}' has no mergekit counterpart")


#: Recipe kinds by their ``kind``.
RECIPE_KINDS: Registry[type[RecipeKind]] = Registry("recipe kind")
