"""The audit: a nearest-neighbour index per cache group; duplicates, leaks and outliers."""

from __future__ import annotations

from featx.audit.duplicates import (
    DEFAULT_THRESHOLD,
    Pairs,
    duplicate_groups,
    find_duplicates,
    find_leaks,
)
from featx.audit.index import EmbeddingIndex
from featx.audit.outliers import outlier_scores

__all__ = [
    "EmbeddingIndex",
    "Pairs",
    "DEFAULT_THRESHOLD",
    "find_duplicates",
    "find_leaks",
    "duplicate_groups",
    "outlier_scores",
]
