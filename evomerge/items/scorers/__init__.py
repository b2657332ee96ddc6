"""Scorers, one per item kind, registered under the format ``type`` they score."""

from evomerge.items.scorers import classification, generation, multiple_choice  # noqa: F401  (registration)
from evomerge.items.scorers.base import SCORERS, ScoreResult, Scorer, make_scorer

__all__ = ["SCORERS", "ScoreResult", "Scorer", "make_scorer"]
