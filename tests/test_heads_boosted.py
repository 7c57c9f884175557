"""featx.heads.boosted: gradient boosting (XGBoost) from blocks on disk, against scikit-learn's
HistGradientBoosting, streamed, stopped early or by a deadline, pickled and saved."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from featx import tune_heads
from featx.exceptions import FeatxError
from featx.heads.boosted import BoostedHead
from featx.heads.rows import ArrayBlocks
from featx.heads.scalable import BudgetExceeded
from featx.model.saved import TRUSTED_TYPES


def clusters(n: int, seed: int, d: int = 16, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters; the label is the cluster mod 4 (each class several clusters)."""
    centres = np.random.default_rng(200).normal(size=(k, d)) * 1.5
    rng = np.random.default_rng(seed)
    c = rng.integers(0, k, n)
    return (centres[c] + rng.normal(size=(n, d))).astype(np.float32), c % 4


def test_close_to_hist_gradient_boosting_on_the_same_rows(tmp_path):
    X, y = clusters(3_000, seed=0)
    Xq, yq = clusters(1_000, seed=1)
    ours = BoostedHead(cache_dir=tmp_path).fit(X, y)
    theirs = HistGradientBoostingClassifier(max_iter=200, early_stopping=True,
                                            random_state=0).fit(X, y)
    assert abs(ours.score(Xq, yq) - theirs.score(Xq, yq)) <= 0.03
    assert ours.score(Xq, yq) > 0.8
    proba = ours.predict_proba(Xq)
    assert proba.shape == (1_000, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert ours.stopped_by_ == "early_stopping" and 1 <= ours.n_iter_ < 200
    assert list(tmp_path.iterdir()) == []  # XGBoost's pages removed after the fit


def test_streaming_in_small_blocks_learns_the_same_trees_as_one_block():
    X, y = clusters(2_000, seed=2)
    Xq, _ = clusters(500, seed=3)
    one = BoostedHead(30, validation_fraction=0).fit_stream(ArrayBlocks(X, y, block_rows=10**6))
    seen: list[int] = []
    many = BoostedHead(30).fit_stream(ArrayBlocks(X, y, block_rows=128), progress=seen.append)
    assert seen[:16] == [128] * 15 + [2_000 - 15 * 128]  # the first read, block by block
    assert sum(seen[16:]) == 30 * 2_000 and many.stopped_by_ == "rounds"
    # The quantile sketch is merged across blocks: a bin edge may move, a prediction rarely.
    assert np.mean(one.predict(Xq) == many.predict(Xq)) >= 0.97


def test_a_deadline_stops_the_rounds_keeping_the_trees_or_refuses_to_start(tmp_path):
    X, y = clusters(2_000, seed=4)
    head = BoostedHead(10_000, validation_fraction=0, cache_dir=tmp_path)
    with pytest.raises(BudgetExceeded):
        head.fit_stream(ArrayBlocks(X, y), deadline=time.monotonic() - 1)
    assert not hasattr(head, "model_") and list(tmp_path.iterdir()) == []
    head.fit_stream(ArrayBlocks(X, y), deadline=time.monotonic() + 1.0)
    assert head.stopped_by_ == "deadline" and 1 <= head.n_iter_ < 10_000
    assert head.score(X, y) > 0.8 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("n_classes", [2, 4])
def test_pickle_and_skops_round_trips_predict_identically(n_classes):
    X, y = clusters(1_000, seed=5)
    y = y % n_classes
    head = BoostedHead(20).fit(X, y)
    data = sio.dumps(head)
    assert set(sio.get_untrusted_types(data=data)) <= set(TRUSTED_TYPES)
    for loaded in (pickle.loads(pickle.dumps(head)), sio.loads(data, trusted=TRUSTED_TYPES)):
        np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
    assert head.predict_proba(X).shape == (1_000, n_classes)


def test_bad_rows_and_labels_are_clear_errors():
    X, y = clusters(500, seed=6)
    X[7, 3] = np.nan
    with pytest.raises(FeatxError, match="NaN or infinite"):
        BoostedHead(5).fit_stream(ArrayBlocks(X, y))
    with pytest.raises(FeatxError, match=r"labels \[9\] that are not among the classes"):
        BoostedHead(5).fit_stream(ArrayBlocks(np.nan_to_num(X), np.where(y == 0, 9, y)),
                                  classes=np.array([1, 2, 3]))


def test_the_preset_runs_the_holdout_protocol_stopped_by_the_validation_block():
    X, y = clusters(3_000, seed=7)
    board = tune_heads(X, y, heads=["gb_xgb"], test_size=0.2, exact_rows=1_000, progress=False)
    result = board["gb_xgb"]
    assert result.protocol == "holdout" and result.n_fit == 2_400 - 240
    assert result.why == "streams every training row by blocks" and result.test_score > 0.8


@parametrize_with_checks([BoostedHead(n_estimators=5)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_without_xgboost_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "xgboost", None)  # what an absent package imports as
    X, y = clusters(100, seed=8)
    with pytest.raises(ImportError, match=r"pip install 'featx\[boost\]'"):
        BoostedHead(5).fit(X, y)
