"""Honest leaderboards: near-duplicates kept inside one fold, leaks of the test set counted.

A held-out score is only as honest as the split. :func:`featx.tune_heads` (``dedupe=True``, the
default) uses the audit's near-duplicate search (:func:`featx.audit.find_duplicates`) to:

- join the training rows into *duplicate groups* (rows linked by a pair, directly or through
  others) and keep each group inside one fold (:func:`grouped_folds`:
  ``StratifiedGroupKFold``) and, for ``test_size``, on one side of the test split
  (:func:`featx.heads.at_scale.test_split` with ``groups``);
- count the test rows with a near-duplicate in training (:func:`leaked_test_rows`) and score
  every head on the test rows without them too: ``HeadResult.test_score_leak_free`` beside
  ``test_score``, ``HeadResult.n_test_leaked``.

On data without duplicates nothing changes: the folds and the split are the ones
``dedupe=False`` gives. Rows narrower than :data:`MIN_WIDTH` (hand-made features, toy data) are
not searched (the threshold is calibrated on network embeddings). Above ``exact_rows`` (the
holdout protocol) the training rows are not grouped (there are no folds; a full search of a
million rows would cost more than the tuning), and the leaks of a seeded sample of at most
:data:`LEAK_SAMPLE` test rows are counted against every training row, streamed a block at a
time (:func:`sampled_leaks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LEAK_SAMPLE", "GROUP_MIN_COSINE", "LEAK_MIN_COSINE", "MIN_WIDTH", "Dedupe",
           "duplicate_rows", "grouped_folds", "leaked_test_rows", "sampled_leaks"]

#: Test rows whose leaks are counted above ``exact_rows`` (a seeded sample).
LEAK_SAMPLE = 1000

#: Rows narrower than this are not searched for duplicates: the pair score's threshold was
#: calibrated on network embeddings (hundreds of dimensions); on a few hand-made features every
#: nearest neighbour is relatively near and natural neighbours would be paired (measured: 109
#: pairs among 90 rows of 6-wide Gaussian blobs, cosines up to 0.989).
MIN_WIDTH = 64

#: The cosine similarity a pair needs besides its score to join a group (and so change the
#: folds and the split). The audit's score is relative to each row's neighbourhood, so it also
#: pairs natural look-alikes: on the demo's 2,000 Fashion-MNIST training images (no copies) 37
#: pairs at cosine 0.90-0.957 (pixel correlations 0.68-0.98, different garments). At 0.96 the
#: demo keeps its folds; on the audit benchmark's set 196 of its 360 injected pairs still join.
GROUP_MIN_COSINE = 0.96

#: The cosine similarity a test row's pair needs to count as a leak (reported only: the scores
#: are not changed by it). On the audit benchmark's set (MobileNet): 138 of the 180 injected
#: leaks and 27 other test images at 0.9; 91 and 3 at 0.96.
LEAK_MIN_COSINE = 0.9

_K = 10  # neighbours the pair score compares with (the audit's default)


@dataclass(frozen=True)
class Dedupe:
    """What the near-duplicate search found in the rows a leaderboard was tuned on."""

    groups: np.ndarray  # a group id per training row
    n_pairs: int
    threshold: float

    @property
    def n_grouped(self) -> int:
        """Rows that share a group with another row."""
        _, inverse, counts = np.unique(self.groups, return_inverse=True, return_counts=True)
        return int((counts[inverse] > 1).sum())

    @property
    def trivial(self) -> bool:
        """No row shares a group: nothing to keep together."""
        return len(np.unique(self.groups)) == len(self.groups)


def duplicate_rows(X: np.ndarray, threshold: float | None = None) -> Dedupe:
    """The duplicate groups of the rows of ``X`` (see the module docstring); every row its own
    group when ``X`` is narrower than :data:`MIN_WIDTH`."""
    from featx.audit.duplicates import DEFAULT_THRESHOLD, duplicate_groups, find_duplicates

    if X.shape[1] < MIN_WIDTH:
        return Dedupe(np.arange(len(X)), 0,
                      DEFAULT_THRESHOLD if threshold is None else float(threshold))
    pairs = _close(find_duplicates(X, threshold=threshold, k=_K), GROUP_MIN_COSINE)
    return Dedupe(duplicate_groups(pairs, len(X)), len(pairs), pairs.threshold)


def _close(pairs: Any, floor: float) -> Any:
    """The pairs at least ``floor`` similar."""
    import dataclasses

    keep = pairs.similarity >= floor
    return dataclasses.replace(pairs, **{f: getattr(pairs, f)[keep]
                                         for f in ("a", "b", "similarity", "kind", "score")})


def grouped_folds(y: np.ndarray, groups: np.ndarray, cv: int, random_state: int) -> Any:
    """``cv`` stratified folds that keep each group in one fold, as a ``PredefinedSplit``
    (a splitter every search takes, successive halving included); ``None`` when the groups
    cannot be split so that every fold trains and is scored on every class (groups too large:
    embeddings all alike, e.g. from random weights)."""
    from sklearn.model_selection import PredefinedSplit, StratifiedGroupKFold

    test_fold = np.full(len(y), -1, np.int64)
    folds = StratifiedGroupKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
    n_classes = len(np.unique(y))
    try:
        for i, (train, held) in enumerate(folds.split(np.zeros((len(y), 1)), y, groups)):
            if len(np.unique(y[train])) < n_classes or len(np.unique(y[held])) < n_classes:
                return None
            test_fold[held] = i
    except ValueError:  # fewer groups than folds
        return None
    return PredefinedSplit(test_fold)


def leaked_test_rows(X_train: np.ndarray, X_test: np.ndarray,
                     threshold: float | None = None) -> np.ndarray:
    """A mask over the test rows: those with a near-duplicate among the training rows."""
    from featx.audit.duplicates import find_leaks

    leaked = np.zeros(len(X_test), bool)
    if len(X_test) and len(X_train) > 1 and X_train.shape[1] >= MIN_WIDTH:
        pairs = _close(find_leaks(X_train, X_test, threshold=threshold, k=_K), LEAK_MIN_COSINE)
        leaked[pairs.a] = True
    return leaked


def sampled_leaks(fit: Any, valid: Any, test: Any, *, threshold: float | None, random_state: int,
                  sample: int = LEAK_SAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Leaks of a seeded sample of the test rows, against every training row, streamed.

    ``fit``, ``valid`` and ``test`` are block sources (:mod:`featx.heads.rows`). Each sampled
    test row's ``k`` most similar training rows are kept while the training blocks stream by;
    a test row leaks when its best pair's score, relative to its own ``k``-th training
    neighbour (``(s - b) / (1 - b)``, the audit's score with the test side's neighbourhood
    only), reaches the threshold.

    Returns
    -------
    checked, leaked : ndarray of bool, shape (test.n_rows,)
        Over the test rows in stored order: the sampled ones, and those of them that leak.
    """
    from featx.audit.duplicates import DEFAULT_THRESHOLD
    from featx.audit.index import normalised

    th = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    n = test.n_rows
    checked = np.zeros(n, bool)
    if test.width < MIN_WIDTH:
        return checked, checked.copy()
    rng = np.random.default_rng(random_state)
    checked[rng.choice(n, min(n, sample), replace=False)] = True
    parts, at = [], 0
    for X, _ in test.blocks(seed=None):
        parts.append(X[checked[at:at + len(X)]])
        at += len(X)
    Q = normalised(np.concatenate(parts))
    k = _K
    top = np.full((len(Q), k), -np.inf, np.float32)
    for source in (fit, valid):
        for X, _ in source.blocks(seed=None):
            sims = Q @ normalised(X).T
            both = np.concatenate([top, sims], axis=1)
            keep = min(k, both.shape[1])
            top = -np.sort(-np.partition(both, both.shape[1] - keep, axis=1)[:, -keep:], axis=1)
    best, kth = top[:, 0], top[:, -1]
    kth = np.where(np.isfinite(kth), kth, -1.0)
    score = (best - kth) / np.maximum(1.0 - kth, 1e-6)
    leaked = np.zeros(n, bool)
    leaked[np.flatnonzero(checked)[((score >= th) & (best >= LEAK_MIN_COSINE))
                                   | (best >= 1.0 - 1e-6)]] = True
    return checked, leaked


def leak_note(n_leaked: int, n_checked: int, n_test: int, threshold: float,
              sampled: bool) -> str:
    """The leaderboard's line about leaks."""
    where = (f"of a seeded sample of {n_checked:,} of the {n_test:,} test rows" if sampled
             else f"of the {n_test:,} test rows")
    return (f"leaks: {n_leaked:,} {where} have a near-duplicate in training (pair score >= "
            f"{threshold:g}, cosine >= {LEAK_MIN_COSINE:g}); 'leak-free' is the test score "
            + ("moved by what dropping the sample's leaks changed on the sample" if sampled
               else "without them"))
