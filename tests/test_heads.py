"""featx.heads: the presets, tune_heads and its leaderboard, embeddings read from a
cache."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from featx import (
    DEFAULT_HEADS,
    HEADS,
    FeatxError,
    ImageEmbedder,
    Leaderboard,
    cached_embeddings,
    list_heads,
    make_head,
    tune_heads,
)
from featx.exceptions import CacheGroupError
from tests.conftest import tiny_convnet

FAST = ["logreg", "knn", "rbf_svm"]


def blobs(n_per_class: int = 30, n_classes: int = 3, width: int = 6, seed: int = 0):
    """Overlapping Gaussian blobs with string labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat([f"class{k}" for k in range(n_classes)], n_per_class)
    centres = rng.normal(scale=1.5, size=(n_classes, width))
    X = centres[np.repeat(np.arange(n_classes), n_per_class)] + rng.normal(size=(len(y), width))
    return X.astype(np.float32), y


# ---- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_preset_is_a_pipeline_or_a_streaming_head_whose_grids_apply(name):
    preset = HEADS[name]
    head = make_head(name)
    assert preset.n_candidates >= 3
    for grid in (preset.grid, preset.scale_grid or {}):
        for key, values in grid.items():
            for value in values:
                clone(head).set_params(**{key: value})  # raises on a key the head lacks
    if preset.streams:  # trains by blocks, runs on every row at scale; standardises itself
        # where it needs comparable scales (gradient boosting's trees do not)
        assert hasattr(head, "fit_stream") and preset.max_rows is None
        assert preset.scaled == (name != "gb_xgb")
        assert make_head(name, random_state=7).random_state == 7
        return
    assert isinstance(head, Pipeline) and head.steps[-1][0] == "clf"
    assert isinstance(head.steps[0][1], StandardScaler) == preset.scaled
    assert preset.max_rows is not None and preset.max_rows >= 20_000
    if "random_state" in head.named_steps["clf"].get_params():
        assert make_head(name, random_state=7).named_steps["clf"].random_state == 7


def test_defaults_and_unknown_names():
    assert set(DEFAULT_HEADS) < set(list_heads()) and "hist_gb" not in DEFAULT_HEADS
    assert make_head("logreg", clf__C=0.5).named_steps["clf"].C == 0.5
    with pytest.raises(FeatxError, match="did you mean 'knn'"):
        make_head("kn")
    X, y = blobs()
    with pytest.raises(FeatxError, match="'svm' is not known.*Known: gb_xgb, hist_gb"):
        tune_heads(X, y, heads=["svm"])


# ---- tuning -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def board() -> Leaderboard:
    X, y = blobs()
    return tune_heads(X, y, heads=FAST, cv=3, test_size=0.3, random_state=0)


def test_leaderboard_is_ranked_by_cv_and_complete(board):
    assert [r.head for r in board] == sorted(FAST, key=lambda h: -board[h].cv_mean)
    assert board.best is board.results[0]
    assert (board.n_train, board.n_test, board.cv) == (63, 27, 3)
    assert board.classes.tolist() == ["class0", "class1", "class2"]
    for r in board:
        assert 0 <= r.cv_std < r.cv_mean <= 1
        assert r.metrics_on == "test" and r.test_score == r.accuracy
        assert 0 < r.balanced_accuracy <= 1 and 0 < r.macro_f1 <= 1
        assert r.roc_auc is None  # three classes
        assert r.fit_seconds >= 0 and r.predict_seconds >= 0 and r.search_seconds > 0
        assert r.n_candidates == HEADS[r.head].n_candidates
        assert set(r.best_params) == set(HEADS[r.head].grid)
        assert r.estimator.predict(np.zeros((1, 6), np.float32)).shape == (1,)
    assert len(board.y_true) == len(board.y_pred) == 27
    assert np.mean(board.y_true == board.y_pred) == pytest.approx(board.best.test_score)


def test_test_split_is_stratified_and_reproducible(board):
    X, y = blobs()
    assert np.unique(board.y_true, return_counts=True)[1].tolist() == [9, 9, 9]
    again = tune_heads(X, y, heads=FAST, cv=3, test_size=0.3, random_state=0)
    assert [r.as_row() | {"fit_seconds": 0, "predict_seconds": 0, "search_seconds": 0}
            for r in again] == [
        r.as_row() | {"fit_seconds": 0, "predict_seconds": 0, "search_seconds": 0} for r in board
    ]
    other = tune_heads(X, y, heads=FAST, cv=3, test_size=0.3, random_state=1)
    assert not np.array_equal(other.y_true, board.y_true)


def test_cv_scores_are_gridsearchcvs_own():
    X, y = blobs()
    result = tune_heads(X, y, heads=["logreg"], cv=4, random_state=3)["logreg"]
    folds = StratifiedKFold(4, shuffle=True, random_state=3)
    search = GridSearchCV(make_head("logreg"), HEADS["logreg"].grid, cv=folds).fit(X, y)
    assert result.cv_mean == pytest.approx(search.best_score_)
    assert result.best_params == search.best_params_
    # Without a test set the other metrics are the same folds' means.
    assert result.metrics_on == "cv" and result.test_score is None
    assert result.accuracy == pytest.approx(search.best_score_)


def test_binary_gets_roc_auc_even_without_probabilities():
    X, y = blobs(n_classes=2)
    board = tune_heads(X, y, heads=["linear_svm", "logreg"], cv=3, test_size=0.25)
    assert not hasattr(board["linear_svm"].estimator, "predict_proba")
    for r in board:
        assert 0.5 < r.roc_auc <= 1.0
    cv_only = tune_heads(X, y, heads=["linear_svm"], cv=3)
    assert 0.5 < cv_only.best.roc_auc <= 1.0 and cv_only.best.metrics_on == "cv"
    assert len(cv_only.y_pred) == len(y)  # out-of-fold predictions for the confusion matrix


def test_explicit_test_set_custom_head_and_grid_override():
    from sklearn.linear_model import RidgeClassifier

    X, y = blobs()
    X2, y2 = blobs(seed=1)
    board = tune_heads(
        X, y, test=(X2, y2), cv=3,
        heads=["logreg", ("ridge", RidgeClassifier(), {"alpha": [0.1, 10.0]})],
        grids={"logreg": {"clf__C": [0.5]}},
    )
    assert board.n_test == 90 and board["logreg"].n_candidates == 1
    assert board["logreg"].best_params == {"clf__C": 0.5}
    assert board["ridge"].best_params["alpha"] in (0.1, 10.0)


def test_parallel_and_halving_searches():
    X, y = blobs(n_per_class=60)
    serial = tune_heads(X, y, heads=["knn"], cv=3, n_jobs=1)
    parallel = tune_heads(X, y, heads=["knn"], cv=3, n_jobs=2)
    assert serial.best.cv_mean == parallel.best.cv_mean
    assert serial.best.best_params == parallel.best.best_params
    halving = tune_heads(X, y, heads=["knn"], cv=3, search="halving", test_size=0.2)
    r = halving.best
    assert r.n_candidates == HEADS["knn"].n_candidates and r.metrics_on == "test"
    assert 0.5 < r.cv_mean <= 1
    cv_only = tune_heads(X, y, heads=["knn"], cv=3, search="halving")
    assert cv_only.best.metrics_on == "cv" and 0.5 < cv_only.best.macro_f1 <= 1


def test_knn_sizes_beyond_the_smallest_fold_are_left_out():
    X, y = blobs(n_per_class=4, n_classes=2)  # 8 samples: training folds of 5 or 6 with cv=3
    for search in ("grid", "halving"):
        result = tune_heads(X, y, heads=["knn"], cv=3, search=search)["knn"]
        assert result.best_params["clf__n_neighbors"] in (3, 5)
        assert result.n_candidates == 4  # k = 3 and 5, uniform and distance


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cv": 31}, "class 'class0' has 30 training samples, fewer than the cv=31"),
        ({"cv": 1}, "at least 2 folds"),
        ({"search": "random"}, "Expected 'grid' or 'halving'"),
        ({"test_size": 0.2, "test": (np.zeros((2, 6)), ["a", "b"])}, "not both"),
        ({"test_size": 1.5}, "0 < test_size < 1"),
        ({"grids": {"mlp": {}}}, "grids names head 'mlp'"),
        ({"heads": [42]}, "head 42 is not understood"),
    ],
)
def test_bad_arguments_say_what_to_do(kwargs, message):
    X, y = blobs()
    kwargs.setdefault("heads", ["knn"])
    with pytest.raises(FeatxError, match=message):
        tune_heads(X, y, **kwargs)


def test_bad_data_say_what_to_do():
    X, y = blobs()
    with pytest.raises(FeatxError, match="one label per row of X"):
        tune_heads(X, y[:-1], heads=["knn"])
    bad = X.copy()
    bad[3, 0] = np.nan
    with pytest.raises(FeatxError, match="1 rows with NaN"):
        tune_heads(bad, y, heads=["knn"])
    with pytest.raises(FeatxError, match="2-D numeric array"):
        tune_heads(X[:, 0], y, heads=["knn"])
    with pytest.raises(FeatxError, match="at least 2 classes"):
        tune_heads(X, np.zeros(len(y)), heads=["knn"])


def test_leaderboard_text_csv_and_frame(board, tmp_path):
    text = board.to_text()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["#", "head", "cv", "accuracy"]
    assert lines[2].split()[1] == board.best.head
    assert "tested on 27 held out" in lines[-1]
    assert str(board) == text
    path = board.to_csv(tmp_path / "board.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["head"] for r in rows] == [r.head for r in board]
    assert float(rows[0]["cv_mean"]) == pytest.approx(board.best.cv_mean)
    frame = board.to_frame()
    assert list(frame["head"]) == [r.head for r in board]
    assert "best_params" in frame.columns and "estimator" not in frame.columns
    with pytest.raises(KeyError, match="no head 'mlp'"):
        board["mlp"]


# ---- embeddings from a cache --------------------------------------------------------------------


def test_tuning_from_a_cache_file_embeds_nothing(tmp_path, rng):
    from featx.nets.build import get_builder_network

    images = rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8)
    y = np.repeat(["a", "b"], 12)
    images[y == "b", :, :, 0] = 255
    cache = tmp_path / "emb.h5"
    embedder = ImageEmbedder(tiny_convnet, input_size=16, cache=cache)
    X = embedder.fit_transform(images)
    net = get_builder_network(embedder.backbone_config(), (16, 16, 3))
    seen = net.n_seen

    read = cached_embeddings(cache, images[::-1])
    np.testing.assert_array_equal(read, X[::-1])
    from_cache = tune_heads(cache, y, images=images, heads=["logreg"], cv=3)
    from_array = tune_heads(X, y, heads=["logreg"], cv=3)
    assert from_cache.best.cv_mean == from_array.best.cv_mean
    assert net.n_seen == seen  # nothing went through the network

    with pytest.raises(FeatxError, match="pass images="):
        tune_heads(cache, y, heads=["logreg"])
    other = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(FeatxError, match="2 of 3 images are not in cache group .*Embed them"):
        cached_embeddings(cache, np.concatenate([images[:1], other]))
    with pytest.raises(CacheGroupError, match="does not exist. Embed the images into it first"):
        cached_embeddings(tmp_path / "none.h5", images)

    ImageEmbedder(tiny_convnet, input_size=12, cache=cache).fit_transform(images[:2])
    with pytest.raises(CacheGroupError, match="holds 2 groups .*; pass group=") as caught:
        cached_embeddings(cache, images)
    assert "backbone parameters" not in str(caught.value)  # only a group can choose here
    fingerprint = embedder.backbone_config().fingerprint
    np.testing.assert_array_equal(cached_embeddings(cache, images, group=fingerprint[:8]), X)
    with pytest.raises(CacheGroupError, match="matches no group"):
        cached_embeddings(cache, images, group="zzz")
