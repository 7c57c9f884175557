"""Near-duplicates and train/test leaks: pairs of rows far closer than their neighbourhoods.

:func:`find_duplicates` pairs rows of one set, :func:`find_leaks` test rows with training rows,
:func:`duplicate_groups` joins pairs into groups (connected components) for a grouped split.

A pair is *exact* when its rows share a content key or are identical, and *near* when its score
reaches the threshold. The score (``method="relative"``, the default) compares the pair's cosine
similarity ``s`` with its neighbourhood: with ``b`` the larger of the two rows' similarities to
their ``k``-th nearest neighbour, ``score = (s - b) / (1 - b)``, the share of the way from the
neighbourhood to identity that the pair covers. A pair counts when the two rows are much closer to
each other than to the rest of their neighbourhood, so dense regions (plain drawings, where natural
neighbours are all near) do not flood the results while sparse ones keep their real copies.

How :data:`DEFAULT_THRESHOLD` was chosen (``python -m benchmarks.audit``, docs/audit.md): 6,000
Fashion-MNIST training and 1,000 test images at 160 px with 450 injected transformed copies (1-pixel
shifts, 2-3 pixel crops resized back, brightness x0.8/x1.2, JPEG quality 75; inside training and
across train/test). The score at which as many pairs are reported as there are true ones was 0.44
(MobileNet v1) and 0.46 (EfficientNet-Lite0), at 1.5x as many 0.36 and 0.39, at 2x 0.32 and 0.35:
nearly the same on both backbones, where plain cosine's thresholds differ (0.938 and 0.920 at 2x).
At 0.4 the relative score recalled 0.733 (MobileNet) and 0.669 (Lite0) of the copies at 1.21 and
1.40 times as many pairs as true ones; plain cosine at 0.94 recalled 0.598 at 1.67x and 0.444 at
0.64x (at 2x as many pairs: 0.618 and 0.542). Crops are the misses: 0.10 of them were found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.audit.index import EmbeddingIndex
from featx.exceptions import FeatxError

__all__ = ["Pairs", "DEFAULT_THRESHOLD", "DEFAULT_COSINE_THRESHOLD", "MIN_SIMILARITY",
           "find_duplicates",
           "find_leaks", "duplicate_groups"]

#: The near-duplicate threshold on the pair score (see the module docstring and
#: docs/audit.md for the measurements behind it).
DEFAULT_THRESHOLD = 0.4
#: With ``method="relative"``, a pair also needs at least this cosine similarity: in sparse or
#: low-dimensional data a row's neighbourhood can be far enough for natural neighbours to pass
#: the relative score alone. On the benchmark's real embeddings the floor changed nothing (recall
#: 0.733 and 0.669 with and without it); at 0.9 it cost MobileNet 0.02 and Lite0 0.07 of recall.
MIN_SIMILARITY = 0.8
#: The plain-cosine baseline's threshold (``method="cosine"``): about twice as many pairs as
#: true ones on the benchmark's MobileNet embeddings.
DEFAULT_COSINE_THRESHOLD = 0.94
#: Identical rows beyond this many in one group are paired with the group's first row only.
_CLIQUE_LIMIT = 20


@dataclass(frozen=True)
class Pairs:
    """Pairs of rows, most similar first.

    Attributes
    ----------
    a, b : ndarray of int64
        Row numbers. :func:`find_duplicates`: ``a < b``, rows of one set, each pair once;
        :func:`find_leaks`: ``a`` a test row, ``b`` a training row.
    similarity : ndarray of float32
        The rows' cosine similarity (1.0 for exact pairs).
    kind : ndarray of str
        ``"exact"`` (same content key, or identical rows) or ``"near"``.
    score : ndarray of float32
        What the threshold was applied to (``inf`` for exact pairs).
    threshold : float
        The threshold used.
    """

    a: np.ndarray
    b: np.ndarray
    similarity: np.ndarray
    kind: np.ndarray
    score: np.ndarray
    threshold: float

    def __len__(self) -> int:
        return len(self.a)

    def to_frame(self, names_a: Sequence[Any] | None = None,
                 names_b: Sequence[Any] | None = None) -> Any:
        """A pandas DataFrame ``a, b, similarity, kind`` with rows named by ``names_a[a]`` and
        ``names_b[b]`` when given (``names_b`` defaults to ``names_a``)."""
        import pandas as pd

        names_b = names_a if names_b is None else names_b
        a = self.a if names_a is None else np.asarray(names_a, dtype=object)[self.a]
        b = self.b if names_b is None else np.asarray(names_b, dtype=object)[self.b]
        return pd.DataFrame({"a": a, "b": b, "similarity": self.similarity, "kind": self.kind})

    @classmethod
    def empty(cls, threshold: float) -> Pairs:
        z = np.zeros(0, np.int64)
        return cls(z, z, np.zeros(0, np.float32), np.zeros(0, "<U5"), np.zeros(0, np.float32),
                   float(threshold))


def _sorted_pairs(a: np.ndarray, b: np.ndarray, sim: np.ndarray, kind: np.ndarray,
                  score: np.ndarray, threshold: float) -> Pairs:
    order = np.lexsort((b, a, -score, -sim.astype(np.float64)))
    return Pairs(a[order].astype(np.int64), b[order].astype(np.int64),
                 sim[order].astype(np.float32), kind[order].astype("<U5"),
                 score[order].astype(np.float32), float(threshold))


def find_duplicates(X: Any, *, keys: Sequence[str] | None = None, threshold: float | None = None,
                    k: int = 10, method: str = "relative",
                    min_similarity: float | None = None) -> Pairs:
    """Pairs of rows of ``X`` that are copies of each other.

    Parameters
    ----------
    X : array-like of shape (n_rows, width), or EmbeddingIndex
        Embeddings; an index searches its own rows (:meth:`EmbeddingIndex.search_self`).
    keys : sequence of str, optional
        Each row's content key: rows with equal keys are exact pairs.
    threshold : float, optional
        Default :data:`DEFAULT_THRESHOLD` (for the default ``method``).
    k : int, default=10
        Neighbours searched per row; the ``k``-th is the neighbourhood ``method="relative"``
        compares with.
    method : {"relative", "cosine"}, default="relative"
        ``"relative"``: the pair's cosine similarity against the larger of the two rows'
        ``k``-th neighbour similarities (see the module docstring; :data:`DEFAULT_THRESHOLD`
        was measured at ``k=10``); ``"cosine"``: plain cosine similarity (the naive baseline,
        default threshold :data:`DEFAULT_COSINE_THRESHOLD`).
    min_similarity : float, optional
        ``method="relative"``: the least cosine similarity of a near pair (default
        :data:`MIN_SIMILARITY`); ignored by ``"cosine"``.

    Returns
    -------
    Pairs
        ``a < b``, each pair once, most similar first.
    """
    index, rows_of = _self_index(X, method)
    n = len(index)
    if keys is not None and len(keys) != n:
        raise FeatxError(f"expected one key per row: {n} rows, {len(keys)} keys.")
    th = _threshold(threshold, method)
    kk = max(1, min(int(k), n - 1)) if n > 1 else 1
    if n > 1:
        sims, nbrs = index.search_self(kk) if rows_of is None else index.search_rows(
            rows_of, kk, exclude_self=True)
        kth = _kth(sims)
        score = _scores(method, sims, nbrs, kth, kth)
        a = np.repeat(np.arange(n), kk)
        b, s, sc = nbrs.ravel(), sims.ravel(), score.ravel()
        keep = (b >= 0) & (sc >= th) & (s >= _floor(min_similarity, method))
        a, b, s, sc = a[keep], b[keep], s[keep], sc[keep]
        a, b = np.minimum(a, b), np.maximum(a, b)
        # each pair once (found from both ends: keep the higher score)
        order = np.lexsort((-sc, b, a))
        a, b, s, sc = a[order], b[order], s[order], sc[order]
        first = np.ones(len(a), bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        a, b, s, sc = a[first], b[first], s[first], sc[first]
    else:
        a = b = np.zeros(0, np.int64)
        s = sc = np.zeros(0, np.float32)
    ea, eb = _exact_pairs(index, rows_of, keys)
    kind = np.full(len(a), "near", "<U5")
    if len(ea):
        near_ids = a * n + b
        exact_ids = ea * n + eb
        is_exact = np.isin(near_ids, exact_ids)
        kind[is_exact] = "exact"
        sc = np.where(is_exact, np.inf, sc)
        s = np.where(is_exact, 1.0, s)
        extra = ~np.isin(exact_ids, near_ids)
        a = np.concatenate([a, ea[extra]])
        b = np.concatenate([b, eb[extra]])
        s = np.concatenate([s, np.ones(int(extra.sum()), np.float32)])
        sc = np.concatenate([sc, np.full(int(extra.sum()), np.inf, np.float32)])
        kind = np.concatenate([kind, np.full(int(extra.sum()), "exact", "<U5")])
    return _sorted_pairs(a, b, s, kind, sc, th)


def find_leaks(X_train: Any, X_test: Any, *, threshold: float | None = None,
               keys_train: Sequence[str] | None = None, keys_test: Sequence[str] | None = None,
               k: int = 10, method: str = "relative",
               min_similarity: float | None = None) -> Pairs:
    """Test rows with a copy among the training rows.

    Parameters
    ----------
    X_train : array-like of shape (n_train, width), or EmbeddingIndex of the training rows
    X_test : array-like of shape (n_test, width)
    threshold, k, method, min_similarity
        As :func:`find_duplicates`; ``"relative"`` compares a pair with the test row's ``k``-th
        training neighbour and the training row's ``k``-th neighbour among training rows.
    keys_train, keys_test : sequence of str, optional
        Content keys: a test row whose key is a training row's is an exact leak.

    Returns
    -------
    Pairs
        ``a`` a test row, ``b`` a training row; every such pair above the threshold (a test row
        may leak into several training rows), most similar first.
    """
    index, train_rows = _self_index(X_train, method)
    Q = np.asarray(X_test)
    if Q.ndim != 2 or Q.shape[1] != index.width:
        raise FeatxError(f"expected test rows of width {index.width}; got shape {Q.shape}.")
    th = _threshold(threshold, method)
    kk = max(1, min(int(k), len(index)))
    sims, nbrs = index.search_rows(Q, kk)
    if method == "relative":
        if train_rows is None:
            own, _ = index.search_self(kk)
        else:
            own, _ = index.search_rows(train_rows, kk, exclude_self=True)
        score = _scores(method, sims, nbrs, _kth(sims), _kth(own))
    else:
        score = sims
    a = np.repeat(np.arange(len(Q)), kk)
    b, s, sc = nbrs.ravel(), sims.ravel(), score.ravel()
    keep = (b >= 0) & (sc >= th) & (s >= _floor(min_similarity, method))
    a, b, s, sc = a[keep], b[keep], s[keep], sc[keep]
    kind = np.full(len(a), "near", "<U5")
    same = _identical(Q, a, b, index, train_rows, s)
    kind[same], s[same], sc[same] = "exact", 1.0, np.inf
    if keys_train is not None and keys_test is not None:
        where = _key_matches(np.asarray(keys_test), np.asarray(keys_train))
        if len(where[0]):
            ids = a * len(index) + b
            exact_ids = where[0] * len(index) + where[1]
            is_exact = np.isin(ids, exact_ids)
            kind[is_exact], s[is_exact], sc[is_exact] = "exact", 1.0, np.inf
            extra = ~np.isin(exact_ids, ids)
            m = int(extra.sum())
            a = np.concatenate([a, where[0][extra]])
            b = np.concatenate([b, where[1][extra]])
            s = np.concatenate([s, np.ones(m, np.float32)])
            sc = np.concatenate([sc, np.full(m, np.inf, np.float32)])
            kind = np.concatenate([kind, np.full(m, "exact", "<U5")])
    return _sorted_pairs(a, b, s, kind, sc, th)


def duplicate_groups(pairs: Pairs, n_rows: int) -> np.ndarray:
    """One group id per row: rows joined by ``pairs`` (directly or through others) share one,
    every other row has its own. Ids are ``0..n_groups-1``, numbered by first row.

    Examples
    --------
    >>> p = Pairs(np.array([0, 3]), np.array([2, 4]), np.ones(2, np.float32),
    ...           np.array(["near", "near"]), np.ones(2, np.float32), 0.9)
    >>> duplicate_groups(p, 6).tolist()
    [0, 1, 0, 2, 2, 3]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n_rows < 1:
        return np.zeros(0, np.int64)
    a, b = np.asarray(pairs.a, np.int64), np.asarray(pairs.b, np.int64)
    if len(a) and (max(a.max(), b.max()) >= n_rows or min(a.min(), b.min()) < 0):
        raise FeatxError(f"pairs name rows outside 0..{n_rows - 1}; pass the rows' count.")
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n_rows, n_rows))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first appearance, so ids follow row order.
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(np.argsort(first))] = np.arange(len(first))
    return rank[labels]


# ---- the pieces -------------------------------------------------------------------------------


def _self_index(X: Any, method: str) -> tuple[EmbeddingIndex, np.ndarray | None]:
    """The index to search and the rows to query it with (``None``: its own stored rows)."""
    if method not in ("relative", "cosine"):
        raise FeatxError(f"method must be 'relative' or 'cosine'; got {method!r}.")
    if isinstance(X, EmbeddingIndex):
        return X, None
    rows = np.asarray(X)
    if rows.ndim != 2:
        raise FeatxError(f"expected a 2-D array of embeddings; got shape {rows.shape}.")
    return EmbeddingIndex.from_array(rows), rows


def _threshold(threshold: float | None, method: str) -> float:
    if threshold is not None:
        return float(threshold)
    return DEFAULT_THRESHOLD if method == "relative" else DEFAULT_COSINE_THRESHOLD



def _kth(sims: np.ndarray) -> np.ndarray:
    """Each row's farthest neighbour found (the k-th, or the last an IVF search found; -1 when
    none was)."""
    found = np.isfinite(sims)
    last = np.maximum(found.sum(axis=1) - 1, 0)
    kth = sims[np.arange(len(sims)), last]
    return np.where(found.any(axis=1), kth, -1.0).astype(np.float32)


def _floor(min_similarity: float | None, method: str) -> float:
    if method == "cosine":
        return -np.inf
    return MIN_SIMILARITY if min_similarity is None else float(min_similarity)


def _scores(method: str, sims: np.ndarray, nbrs: np.ndarray, kth_query: np.ndarray,
            kth_rows: np.ndarray) -> np.ndarray:
    """The pair score of each (query, neighbour) entry."""
    if method == "cosine":
        return sims
    kth_nbr = kth_rows[np.maximum(nbrs, 0)]
    base = np.maximum(kth_query[:, None], kth_nbr)
    base = np.where(np.isfinite(base), base, -1.0)
    # The share of the way from the neighbourhood's k-th similarity to 1 that the pair covers.
    score = (sims - base) / np.maximum(1.0 - base, 1e-6)
    return np.clip(score, -1.0, 1.0).astype(np.float32)


def _exact_pairs(index: EmbeddingIndex, rows: np.ndarray | None,
                 keys: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``a < b`` of rows with equal keys or identical rows."""
    n = len(index)
    tags = []
    if keys is not None:
        tags.append(_codes(np.asarray(keys)))
    tags.append(_codes(_row_hashes(index, rows)))
    a_all, b_all = [], []
    for codes in tags:
        a, b = _same_code_pairs(codes)
        if codes is tags[-1] and len(a):  # hashes: check the rows really are equal
            va = _row_values(index, rows, a)
            vb = _row_values(index, rows, b)
            same = (va == vb).all(axis=1)
            a, b = a[same], b[same]
        a_all.append(a)
        b_all.append(b)
    a = np.concatenate(a_all) if a_all else np.zeros(0, np.int64)
    b = np.concatenate(b_all) if b_all else np.zeros(0, np.int64)
    if not len(a):
        return a, b
    uniq = np.unique(a * n + b)
    return uniq // n, uniq % n


def _codes(values: np.ndarray) -> np.ndarray:
    _, codes = np.unique(values, return_inverse=True)
    return codes.ravel()


def _same_code_pairs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``a < b`` with equal codes: all pairs in a group of up to 20, beyond that each
    member with the group's first row."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, len(codes)])
    a_out, b_out = [], []
    for s, m in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist(), strict=True):
        members = np.sort(order[s:s + m])
        if m <= _CLIQUE_LIMIT:
            i, j = np.triu_indices(m, 1)
            a_out.append(members[i])
            b_out.append(members[j])
        else:
            a_out.append(np.full(m - 1, members[0]))
            b_out.append(members[1:])
    if not a_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a_out).astype(np.int64), np.concatenate(b_out).astype(np.int64)


def _row_hashes(index: EmbeddingIndex, rows: np.ndarray | None, block: int = 8192) -> np.ndarray:
    """An 8-byte digest of each row's bytes (the array's, or the index's stored rows)."""
    n = len(index)
    out = np.empty(n, "S8")
    for lo in range(0, n, block):
        part = (np.ascontiguousarray(rows[lo:lo + block], np.float32) if rows is not None
                else index.vectors(lo, lo + block))
        out[lo:lo + len(part)] = [hashlib.blake2b(r.tobytes(), digest_size=8).digest()
                                  for r in part]
    return out


def _row_values(index: EmbeddingIndex, rows: np.ndarray | None, which: np.ndarray) -> np.ndarray:
    if rows is not None:
        return np.asarray(rows[which], np.float32)
    return np.stack([index.vectors(int(i), int(i) + 1)[0] for i in which])


def _identical(Q: np.ndarray, a: np.ndarray, b: np.ndarray, index: EmbeddingIndex,
               train_rows: np.ndarray | None, sims: np.ndarray) -> np.ndarray:
    """Which (test row, training row) pairs are identical rows (for an index: cosine 1 within
    float32 rounding, since it holds normalised rows only)."""
    near_one = sims >= 1.0 - 1e-6
    if train_rows is None:
        return near_one
    out = np.zeros(len(a), bool)
    which = np.flatnonzero(near_one)
    if len(which):
        out[which] = (np.asarray(Q[a[which]]) == np.asarray(train_rows[b[which]])).all(axis=1)
    return out


def _key_matches(keys_test: np.ndarray, keys_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (test row, training row) pair with equal keys."""
    order = np.argsort(keys_train, kind="stable")
    sorted_train = keys_train[order]
    lo = np.searchsorted(sorted_train, keys_test, side="left")
    hi = np.searchsorted(sorted_train, keys_test, side="right")
    counts = hi - lo
    a = np.repeat(np.arange(len(keys_test)), counts)
    starts = np.repeat(lo, counts)
    offs = np.arange(len(a)) - np.repeat(np.cumsum(counts) - counts, counts)
    b = order[starts + offs]
    return a.astype(np.int64), b.astype(np.int64)
