"""Near-duplicates, leaks, duplicate groups and outliers on small arrays with known copies."""

from __future__ import annotations

import numpy as np
import pytest

from featx.audit.duplicates import (
    DEFAULT_THRESHOLD,
    Pairs,
    duplicate_groups,
    find_duplicates,
    find_leaks,
)
from featx.audit.index import EmbeddingIndex
from featx.audit.outliers import outlier_scores
from featx.exceptions import FeatxError


@pytest.fixture
def data(rng: np.random.Generator) -> dict:
    """400 rows in 8 loose clusters (natural neighbours), a tight copy of 4 rows, an identical
    row, and a dense clump of 30 rows that are all alike (cosine about 0.93) without any being
    a copy."""
    centres = rng.normal(size=(8, 64)) * 2
    X = centres[rng.integers(8, size=400)] + rng.normal(size=(400, 64))
    X[100:130] = centres[0] * 3 + 1.5 * rng.normal(size=(30, 64))  # dense but not copies
    for copy, orig in ((300, 10), (301, 20), (302, 30), (303, 40)):
        X[copy] = X[orig] + 0.02 * rng.normal(size=64)
    X[350] = X[50]
    return {"X": X.astype(np.float32), "copies": {(10, 300), (20, 301), (30, 302), (40, 303)}}


def _near(p: Pairs) -> set:
    return {(a, b) for a, b, k in zip(p.a.tolist(), p.b.tolist(), p.kind, strict=True)
            if k == "near"}


def test_copies_found_and_dense_natural_neighbours_left_alone(data):
    pairs = find_duplicates(data["X"])
    assert pairs.threshold == DEFAULT_THRESHOLD
    assert data["copies"] <= _near(pairs)
    exact = {(a, b) for a, b, k in zip(pairs.a, pairs.b, pairs.kind, strict=True) if k == "exact"}
    assert exact == {(50, 350)}
    clump = {(a, b) for a, b in _near(pairs) if 100 <= a < 130 and 100 <= b < 130}
    assert not clump
    # The naive baseline does report the clump at a threshold that still finds the copies.
    naive = find_duplicates(data["X"], method="cosine", threshold=0.9)
    assert data["copies"] <= _near(naive)
    assert {(a, b) for a, b in _near(naive) if 100 <= a < 130 and 100 <= b < 130}


def test_pairs_are_ordered_once_each_and_framed(data):
    pairs = find_duplicates(data["X"], threshold=0.1)
    assert (pairs.a < pairs.b).all()
    assert len(set(zip(pairs.a.tolist(), pairs.b.tolist(), strict=True))) == len(pairs)
    assert (np.diff(pairs.similarity) <= 1e-7).all() and pairs.similarity.dtype == np.float32
    assert pairs.kind[0] == "exact" and pairs.similarity[0] == 1.0
    names = [f"img{i}.png" for i in range(len(data["X"]))]
    frame = pairs.to_frame(names)
    assert list(frame.columns) == ["a", "b", "similarity", "kind"]
    assert frame.iloc[0]["a"] == "img50.png" and frame.iloc[0]["b"] == "img350.png"


def test_equal_keys_are_exact_and_an_index_gives_the_same_pairs(data):
    X = data["X"]
    keys = [f"k{i}" for i in range(len(X))]
    keys[7] = keys[200] = "same"
    pairs = find_duplicates(X, keys=keys)
    assert (7, 200) in set(zip(pairs.a[pairs.kind == "exact"].tolist(),
                               pairs.b[pairs.kind == "exact"].tolist(), strict=True))
    from_index = find_duplicates(EmbeddingIndex.from_array(X))
    assert _near(from_index) == _near(find_duplicates(X))
    with pytest.raises(FeatxError, match="one key per row"):
        find_duplicates(X, keys=keys[:3])
    with pytest.raises(FeatxError, match="method must be"):
        find_duplicates(X, method="hamming")


def test_leaks_name_the_test_row_then_the_training_row(data, rng):
    X = data["X"]
    train, test = X[:300], np.vstack([X[[10, 20]] + 0.02 * rng.normal(size=(2, 64)),
                                      X[[5]], rng.normal(size=(3, 64))]).astype(np.float32)
    leaks = find_leaks(train, test)
    got = set(zip(leaks.a.tolist(), leaks.b.tolist(), leaks.kind.tolist(), strict=True))
    assert {(0, 10, "near"), (1, 20, "near"), (2, 5, "exact")} <= got
    assert not {a for a, _, _ in got} & {3, 4, 5}
    keyed = find_leaks(train, test, keys_train=[f"k{i}" for i in range(300)],
                       keys_test=["x", "y", "z", "k250", "w", "v"])
    assert (3, 250, "exact") in set(zip(keyed.a.tolist(), keyed.b.tolist(),
                                        keyed.kind.tolist(), strict=True))


def test_duplicate_groups_are_connected_components():
    p = Pairs(np.array([0, 2, 5]), np.array([2, 4, 6]), np.ones(3, np.float32),
              np.array(["near"] * 3), np.ones(3, np.float32), 0.4)
    assert duplicate_groups(p, 8).tolist() == [0, 1, 0, 2, 0, 3, 3, 4]
    assert duplicate_groups(Pairs.empty(0.4), 3).tolist() == [0, 1, 2]
    with pytest.raises(FeatxError, match="outside 0..3"):
        duplicate_groups(p, 4)


def test_outlier_scores_rank_the_far_row_first(data, rng):
    X = np.vstack([data["X"][:200], 40 * rng.normal(size=(1, 64))]).astype(np.float32)
    scores = outlier_scores(X, k=5)
    assert scores.shape == (201,) and int(np.argmax(scores)) == 200
    np.testing.assert_allclose(outlier_scores(EmbeddingIndex.from_array(X), k=5), scores,
                               atol=1e-5)
    assert outlier_scores(X[:1]).tolist() == [1.0]


def test_the_similarity_floor_keeps_two_merely_alike_loners_apart(data, rng):
    """Two rows alike (cosine about 0.7) and far from every other row pass the relative score
    alone; the floor (MIN_SIMILARITY) keeps them out."""
    shared = 3 * rng.normal(size=64)
    loners = shared + 2 * rng.normal(size=(2, 64))
    X = np.vstack([data["X"], loners]).astype(np.float32)
    n = len(X)
    assert (n - 2, n - 1) not in _near(find_duplicates(X))
    assert (n - 2, n - 1) in _near(find_duplicates(X, min_similarity=-1.0))
