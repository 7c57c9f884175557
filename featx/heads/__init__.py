"""Classifier heads on embeddings: the presets, their tuning and the leaderboard."""

from __future__ import annotations

from featx.heads.leaderboard import HeadResult, Leaderboard
from featx.heads.presets import DEFAULT_HEADS, HEADS, HeadPreset, list_heads, make_head
from featx.heads.tuning import cached_embeddings, tune_heads

__all__ = [
    "DEFAULT_HEADS",
    "HEADS",
    "HeadPreset",
    "list_heads",
    "make_head",
    "cached_embeddings",
    "tune_heads",
    "HeadResult",
    "Leaderboard",
]
