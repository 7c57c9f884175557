"""Domain adaptation on embeddings, and choosing adapters without target labels."""

from __future__ import annotations

from featx.adapt.adapters import ADAPTERS, CORAL, SubspaceAlignment, adapted_head, coral_matrix
from featx.adapt.selection import PredictionEntropyScorer, ReverseValidationScorer, TargetData

__all__ = [
    "ADAPTERS",
    "CORAL",
    "adapted_head",
    "coral_matrix",
    "SubspaceAlignment",
    "PredictionEntropyScorer",
    "ReverseValidationScorer",
    "TargetData",
]
