"""Honest leaderboards: near-duplicates inside one fold, the test set's leaks and the leak-free
score (featx.heads.dedupe)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featx import tune_heads
from featx.heads.at_scale import test_split as split_rows
from featx.heads.dedupe import duplicate_rows, grouped_folds, leaked_test_rows
from featx.heads.search import score_rows

# Small grids: the folds and scores are what is tested, not the heads.
HEADS = [("logreg", make_pipeline(StandardScaler(), LogisticRegression()),
          {"logisticregression__C": [0.1]}),
         ("knn", KNeighborsClassifier(), {"n_neighbors": [3, 5]})]
WIDTH = 64


def clusters(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(3, WIDTH))
    y = np.repeat(["a", "b", "c"], n_per_class)
    X = centres[np.repeat(np.arange(3), n_per_class)] + rng.normal(size=(len(y), WIDTH)) * 1.3
    return X.astype(np.float32), y


def copies(X: np.ndarray, rows: np.ndarray, seed: int = 5) -> np.ndarray:
    return X[rows] + np.random.default_rng(seed).normal(size=(len(rows), X.shape[1])) * 0.01


@pytest.fixture(scope="module")
def data():
    X, y = clusters(40, 0)
    X_test, y_test = clusters(15, 1)
    leak = np.arange(0, 120, 12)  # ten training images copied into the test set
    X_test = np.r_[copies(X, leak).astype(np.float32), X_test]
    y_test = np.r_[y[leak], y_test]
    return X, y, X_test, y_test, len(leak)


def test_data_without_duplicates_keeps_its_folds_and_split(data):
    X, y, X_test, y_test, n_leak = data
    assert duplicate_rows(X).trivial
    honest = tune_heads(X, y, heads=HEADS, cv=3, test_size=0.25)
    plain = tune_heads(X, y, heads=HEADS, cv=3, test_size=0.25, dedupe=False)
    assert [(r.head, r.cv_mean, r.test_score) for r in honest] == [
        (r.head, r.cv_mean, r.test_score) for r in plain]
    assert all(r.n_test_leaked == 0 and r.test_score_leak_free == r.test_score for r in honest)
    assert "leak-free" in honest.to_text() and "leak-free" not in plain.to_text()
    assert plain.notes == [] and all(r.n_test_leaked is None for r in plain)
    narrow = tune_heads(X[:, :6], y, heads=HEADS, cv=3, test_size=0.25)
    assert narrow.notes == [] and narrow.best.n_test_leaked is None  # toy rows: not searched


def test_leaks_are_counted_and_scored_without(data, tmp_path):
    X, y, X_test, y_test, n_leak = data
    board = tune_heads(X, y, heads=HEADS, cv=3, test=(X_test, y_test))
    assert leaked_test_rows(X, X_test).tolist() == [True] * n_leak + [False] * (len(y_test)
                                                                                 - n_leak)
    for r in board:
        assert r.n_test_leaked == n_leak
        assert r.test_score_leak_free == score_rows(r.estimator, X_test[n_leak:],
                                                    y_test[n_leak:], "accuracy")
    assert any(f"leaks: {n_leak} of the {len(y_test)} test rows" in n for n in board.notes)
    with open(board.to_csv(tmp_path / "board.csv"), newline="") as f:
        row = next(csv.DictReader(f))
    assert row["n_test_leaked"] == str(n_leak) and float(row["test_score_leak_free"]) <= 1
    frame = board.to_frame()
    assert {"n_test_leaked", "test_score_leak_free"} <= set(frame.columns)
    from featx.report.page import _leaderboard_table

    html = _leaderboard_table(board)
    assert "<th>leak-free</th>" in html and f"{board.best.test_score_leak_free:.3f}" in html


def test_duplicate_groups_stay_in_one_fold_and_on_one_side(data):
    X, y, _, _, _ = data
    twins = np.arange(0, 120, 4)
    X2, y2 = np.r_[X, copies(X, twins)], np.r_[y, y[twins]]
    found = duplicate_rows(X2)
    assert not found.trivial and found.n_grouped == 2 * len(twins)
    fit, test = split_rows(y2, 0.25, 0, found.groups)
    assert not set(found.groups[fit]) & set(found.groups[test])
    assert abs(len(test) / len(y2) - 0.25) < 0.05
    assert set(np.unique(y2[test])) == {"a", "b", "c"}
    folds = grouped_folds(y2, found.groups, 3, 0)
    held = np.empty(len(y2), int)
    for i, (_, rows) in enumerate(folds.split(X2, y2)):
        held[rows] = i
    for g in np.unique(found.groups):
        assert len(set(held[found.groups == g])) == 1
    plain = split_rows(y2, 0.25, 0)
    same = split_rows(y2, 0.25, 0, np.arange(len(y2)))  # no shared group: the plain split
    assert all(np.array_equal(a, b) for a, b in zip(plain, same, strict=True))
    board = tune_heads(X2, y2, heads=HEADS, cv=3, test_size=0.25)
    assert board.n_test == len(test) and "kept inside one fold and on one side" in board.notes[0]
    assert board.best.n_test_leaked == 0  # no copy crossed the line


def test_above_exact_rows_a_sample_of_the_test_rows_is_checked(data):
    X, y, X_test, y_test, n_leak = data
    board = tune_heads(X, y, heads=["logreg"], test=(X_test, y_test), exact_rows=50)
    assert board.best.protocol == "holdout"
    assert board.best.n_test_leaked == n_leak  # fewer test rows than the sample: all checked
    assert board.best.test_score_leak_free is not None
    assert any("leaks:" in n for n in board.notes)
    off = tune_heads(X, y, heads=["logreg"], test=(X_test, y_test), exact_rows=50, dedupe=False)
    assert off.best.n_test_leaked is None and not any("leaks:" in n for n in off.notes)


def test_featx_heads_opts_out_with_no_dedupe():
    from featx.cli.main import _parser

    args = _parser().parse_args(["heads", "photos", "--cache", "emb.h5", "--no-dedupe"])
    assert args.dedupe is False
    assert _parser().parse_args(["heads", "photos", "--cache", "emb.h5"]).dedupe is True


def test_a_sampled_leak_check_moves_the_test_score_by_what_the_sample_changed():
    from featx.heads.at_scale import _leak_free

    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    pred = np.array([0, 1, 0, 1, 1, 1, 0, 0])  # 6 of 8 right: 0.75
    checked = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)  # the sample: all right
    none = np.zeros(8, bool)
    # No leak in the sample: the test score itself, not the sample's 1.0.
    assert _leak_free("accuracy", 0.75, (y, pred), (checked, none)) == 0.75
    # Two right answers in the sample were leaks: the sample's score does not move (1.0 -> 1.0).
    leaked = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    assert _leak_free("accuracy", 0.75, (y, pred), (checked, leaked)) == 0.75
    wrong = np.array([1, 1, 0, 1, 1, 1, 1, 0])  # the sample's row 0 wrong: 0.75 there
    assert _leak_free("accuracy", 0.5, (y, wrong), (checked, np.array([0, 1, 0, 0, 0, 0, 0, 0],
                                                                         bool))) == pytest.approx(
        0.5 + 2 / 3 - 0.75)
    # Every test row checked: the score of the clean rows.
    assert _leak_free("accuracy", 0.75, (y, pred), (np.ones(8, bool), leaked)) == 4 / 6


def test_groups_too_large_to_split_fall_back_to_the_plain_folds_and_split(data):
    """Embeddings all alike (random weights) can join most images into one group."""
    X, y, _, _, _ = data
    X, y = X[::4], np.where(y[::4] == "a", "a", "b")  # 30 rows, two classes
    groups = np.r_[np.zeros(26, int), 1, 2, 3, 4]
    assert grouped_folds(y, groups, 2, 0) is None
    fit, test = split_rows(y, 0.5, 0, groups)
    plain = split_rows(y, 0.5, 0)
    assert np.array_equal(fit, plain[0]) and np.array_equal(test, plain[1])
    board = tune_heads(X, y, heads=HEADS[1:], cv=2, test_size=0.5, scoring="roc_auc",
                       groups=groups)
    same = tune_heads(X, y, heads=HEADS[1:], cv=2, test_size=0.5, scoring="roc_auc",
                      dedupe=False)
    assert board.best.cv_mean == same.best.cv_mean and board.n_test == same.n_test
    assert "plain stratified folds" in board.notes[0]
