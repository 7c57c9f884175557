"""Classifier heads on embeddings: the presets, their tuning and the leaderboard."""

from __future__ import annotations

from featx.heads.knn_index import IndexKNNClassifier
from featx.heads.leaderboard import HeadResult, Leaderboard
from featx.heads.presets import (
    DEFAULT_HEADS,
    HEADS,
    SCALABLE_HEADS,
    HeadPreset,
    list_heads,
    make_head,
)
from featx.heads.scalable import SGDHead
from featx.heads.tuning import EXACT_ROWS, cached_embeddings, tune_heads

__all__ = [
    "DEFAULT_HEADS",
    "SCALABLE_HEADS",
    "EXACT_ROWS",
    "HEADS",
    "HeadPreset",
    "list_heads",
    "make_head",
    "cached_embeddings",
    "tune_heads",
    "HeadResult",
    "Leaderboard",
    "SGDHead",
    "IndexKNNClassifier",
]
