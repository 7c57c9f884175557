"""Outliers: rows far from every other row."""

from __future__ import annotations

from typing import Any

import numpy as np

from featx.audit.index import EmbeddingIndex
from featx.exceptions import FeatxError

__all__ = ["outlier_scores"]


def outlier_scores(X: Any, k: int = 10, *, center: bool = False) -> np.ndarray:
    """How far each row is from its neighbours: ``1 -`` its mean cosine similarity to its ``k``
    nearest other rows. Higher is more outlying.

    Parameters
    ----------
    X : array-like of shape (n_rows, width), or EmbeddingIndex
        Embeddings, or an index (its own rows are searched).
    k : int, default=10
        Neighbours averaged (fewer when there are fewer other rows).
    center : bool, default=False
        Subtract the mean row before normalising (an array only; an index is used as built).

    Returns
    -------
    ndarray of float32, shape (n_rows,)
        In ``[0, 2]``; 1 for a row with no other row (nothing to compare with).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 0], [0.99, 0.1], [0.98, 0.2], [-1, 0.1]], np.float32)
    >>> int(np.argmax(outlier_scores(X, k=2)))
    3
    """
    if isinstance(X, EmbeddingIndex):
        index, rows = X, None
    else:
        rows = np.asarray(X)
        if rows.ndim != 2 or len(rows) < 1:
            raise FeatxError(f"expected a 2-D array with at least one row; got {rows.shape}.")
        index = EmbeddingIndex.from_array(rows, center=center)
    n = len(index)
    if n < 2:
        return np.ones(n, np.float32)
    kk = max(1, min(int(k), n - 1))
    sims, _ = (index.search_self(kk) if rows is None
               else index.search_rows(rows, kk, exclude_self=True))
    found = np.isfinite(sims)
    mean = np.where(found, sims, 0.0).sum(axis=1) / np.maximum(found.sum(axis=1), 1)
    return (1.0 - mean).astype(np.float32)
