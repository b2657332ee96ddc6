"""Aligners between two models' activation spaces, one interface, registered by YAML name.

``make_aligner("cca", k=16).fit(pairs).as_module()`` gives an ``nn.Module`` from A's layer
shape to B's. Importing this package registers every aligner in :data:`ALIGNERS`.
"""

from evomerge.core.align import cca, gromov, lowrank, mlp, ot, procrustes, ridge  # noqa: F401  (registration)
from evomerge.core.align.base import ALIGNERS, Aligner, ConditionPair, Rows, StitchMap, make_aligner
from evomerge.core.align.shapes import Layout, pair_layouts

__all__ = ["ALIGNERS", "Aligner", "ConditionPair", "Layout", "Rows", "StitchMap", "make_aligner", "pair_layouts"]
