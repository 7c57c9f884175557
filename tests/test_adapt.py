"""Domain adaptation on embeddings: CORAL, subspace alignment, and the label-free scorers."""

from __future__ import annotations

import pickle
from functools import partial

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import estimator_checks_generator

from featx import AdaptationError
from featx.adapt import (
    CORAL,
    PredictionEntropyScorer,
    ReverseValidationScorer,
    SubspaceAlignment,
    TargetData,
    coral_matrix,
)


def shifted(rng: np.random.Generator, n: int = 200, width: int = 4):
    """Two classes; the target is the same problem rescaled per feature and moved."""
    y = np.repeat([0, 1], n // 2)
    Xs = rng.normal(size=(n, width)) + 2 * y[:, None]
    gains = np.where(np.arange(width) % 2, 2.0, 0.5)
    Xt = (rng.normal(size=(n, width)) + 2 * y[:, None]) * gains + 3
    return Xs, y, Xt


# ---- CORAL --------------------------------------------------------------------------------------


def test_coral_matrix_gives_the_source_the_target_covariance(rng):
    Xs = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    Xt = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5))
    A = coral_matrix(Xs, Xt, reg=0.0)
    np.testing.assert_allclose(np.cov(Xs @ A, rowvar=False, bias=True),
                               np.cov(Xt, rowvar=False, bias=True),
                               atol=1e-8)
    # With regularisation the match is looser, and the map is still symmetric-root based.
    loose = coral_matrix(Xs, Xt, reg=1.0)
    assert not np.allclose(loose, A)


def test_coral_reg_is_relative_to_the_mean_variance(rng):
    Xs, Xt = rng.normal(size=(100, 3)), rng.normal(size=(100, 3)) * 2
    np.testing.assert_allclose(coral_matrix(Xs * 1000, Xt * 1000, reg=1.0),
                               coral_matrix(Xs, Xt, reg=1.0), atol=1e-10)


def test_coral_fits_the_head_on_the_recoloured_source(rng):
    Xs, y, Xt = shifted(rng)
    model = CORAL(LogisticRegression(), reg=0.5).fit(Xs, y, X_target=Xt)
    A = coral_matrix(Xs, Xt, reg=0.5)
    by_hand = LogisticRegression().fit((Xs - Xs.mean(0)) @ A + Xt.mean(0), y)
    np.testing.assert_allclose(model.estimator_.coef_, by_hand.coef_)
    np.testing.assert_array_equal(model.predict(Xt), by_hand.predict(Xt))
    np.testing.assert_allclose(model.predict_proba(Xt), by_hand.predict_proba(Xt))
    assert model.n_target_ == len(Xt) and model.classes_.tolist() == [0, 1]


def test_coral_without_mean_alignment_is_the_paper(rng):
    Xs, y, Xt = shifted(rng)
    model = CORAL(LogisticRegression(), align_mean=False).fit(Xs, y, X_target=Xt)
    by_hand = LogisticRegression().fit(Xs @ coral_matrix(Xs, Xt, reg=1.0), y)
    np.testing.assert_allclose(model.estimator_.coef_, by_hand.coef_)


def test_coral_shrinkage_options(rng):
    from sklearn.covariance import ledoit_wolf

    Xs, y, Xt = shifted(rng, n=40, width=30)  # fewer rows than a stable covariance needs
    with pytest.raises(AdaptationError, match=r"singular .*reg > 0.*ledoit_wolf"):
        CORAL(reg=0.0).fit(Xs, y, X_target=Xt[:10])
    model = CORAL(LogisticRegression(), reg=0.0, shrinkage="ledoit_wolf")
    model.fit(Xs, y, X_target=Xt[:10])
    cs, ct = ledoit_wolf(Xs)[0], ledoit_wolf(Xt[:10])[0]
    ws, vs = np.linalg.eigh(cs)
    wt, vt = np.linalg.eigh(ct)
    A = (vs * ws**-0.5) @ vs.T @ (vt * wt**0.5) @ vt.T
    by_hand = LogisticRegression().fit((Xs - Xs.mean(0)) @ A + Xt[:10].mean(0), y)
    np.testing.assert_allclose(model.estimator_.coef_, by_hand.coef_, rtol=1e-6)
    fixed = CORAL(reg=0.0, shrinkage=0.5).fit(Xs, y, X_target=Xt[:10])
    assert fixed.score(Xt, y) > 0.5


def test_coral_recovers_a_shift_that_breaks_the_source_head(rng):
    Xs, y, Xt = shifted(rng)
    assert CORAL().fit(Xs, y).score(Xt, y) == 0.5  # every target row looks like class 1
    assert CORAL().fit(Xs, y, X_target=Xt).score(Xt, y) > 0.9


def test_without_a_target_nothing_is_adapted(rng):
    Xs, y, Xt = shifted(rng)
    coral = CORAL(LogisticRegression()).fit(Xs, y)
    plain = LogisticRegression().fit(Xs, y)
    np.testing.assert_allclose(coral.estimator_.coef_, plain.coef_)
    assert coral.n_target_ == 0
    sa = SubspaceAlignment(LogisticRegression(), n_components=2).fit(Xs, y)
    np.testing.assert_allclose(sa.mean_, Xs.mean(0))
    assert sa.n_target_ == 0


# ---- subspace alignment -------------------------------------------------------------------------


def test_subspace_alignment_by_hand(rng):
    from sklearn.decomposition import PCA

    Xs, y, Xt = shifted(rng, width=6)
    model = SubspaceAlignment(LogisticRegression(), n_components=3).fit(Xs, y, X_target=Xt)
    ps = PCA(3).fit(Xs).components_
    pt = PCA(3).fit(Xt).components_
    # The same subspaces as PCA's (directions up to sign), orthonormal.
    np.testing.assert_allclose(np.abs(model.components_ @ pt.T), np.eye(3), atol=1e-8)
    np.testing.assert_allclose(model.components_ @ model.components_.T, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(model.mean_, Xt.mean(0))
    # The head is fitted on the source aligned to the target's basis, as the paper writes it
    # (P_s^T P_s projects onto the source subspace, whatever the directions' signs).
    aligned = (Xs - Xs.mean(0)) @ ps.T @ (ps @ model.components_.T)
    by_hand = LogisticRegression().fit(aligned, y)
    np.testing.assert_allclose(model.estimator_.coef_, by_hand.coef_, rtol=1e-6)
    np.testing.assert_array_equal(
        model.predict(Xt), by_hand.predict((Xt - Xt.mean(0)) @ model.components_.T)
    )
    assert model.score(Xt, y) > 0.9


def test_subspace_alignment_uses_at_most_what_the_data_spans(rng):
    Xs, y, Xt = shifted(rng, width=5)
    model = SubspaceAlignment(n_components=64).fit(Xs, y, X_target=Xt[:3])
    assert model.n_components_ == 3 and model.components_.shape == (3, 5)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", [CORAL(), SubspaceAlignment(n_components=2)],
                         ids=["coral", "subspace"])
def test_bad_targets_are_refused_with_the_fix(adapter, rng):
    Xs, y, Xt = shifted(rng)
    with pytest.raises(AdaptationError, match=r"X_target has 3 features per row, but X .* 4"):
        clone(adapter).fit(Xs, y, X_target=Xt[:, :3])
    with pytest.raises(AdaptationError, match=r"X_target has 1 row; .* at least 2 target rows"):
        clone(adapter).fit(Xs, y, X_target=Xt[:1])
    nan = Xt.copy()
    nan[[3, 7]] = np.nan
    with pytest.raises(AdaptationError, match=r"X_target has 2 of 200 rows with NaN .*on_error"):
        clone(adapter).fit(Xs, y, X_target=nan)
    with pytest.raises(AdaptationError, match=r"X \(the source\) has 2 of 200 rows with NaN"):
        clone(adapter).fit(nan, y, X_target=Xt)
    fitted = clone(adapter).fit(Xs, y, X_target=Xt)
    with pytest.raises(AdaptationError, match=r"X has 2 of 200 rows with NaN"):
        fitted.predict(nan)
    with pytest.raises(ValueError, match="X has 3 features, but .* is expecting 4"):
        fitted.predict(Xt[:, :3])
    with pytest.raises(AdaptationError, match="X_target must be a 2-D numeric array"):
        clone(adapter).fit(Xs, y, X_target=np.zeros(4))


def test_bad_parameters_are_refused():
    Xs, y = np.zeros((4, 2)) + np.arange(4)[:, None], np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="'reg' parameter of CORAL must be a float in the range"):
        CORAL(reg=-1.0).fit(Xs, y)
    with pytest.raises(ValueError, match="'shrinkage' parameter of CORAL must be"):
        CORAL(shrinkage="oas").fit(Xs, y)
    with pytest.raises(ValueError, match="'n_components' parameter of SubspaceAlignment"):
        SubspaceAlignment(n_components=0).fit(Xs, y)


# ---- scikit-learn compatibility -----------------------------------------------------------------


def test_clone_and_pickle_keep_the_adapted_model(rng):
    Xs, y, Xt = shifted(rng)
    for adapter in (CORAL(reg=0.3), SubspaceAlignment(n_components=2)):
        fitted = adapter.fit(Xs, y, X_target=Xt)
        again = pickle.loads(pickle.dumps(fitted))
        np.testing.assert_allclose(again.predict_proba(Xt), fitted.predict_proba(Xt))
        fresh = clone(fitted)
        assert fresh.get_params() == adapter.get_params()
        assert not hasattr(fresh, "estimator_")


def test_skops_round_trip_with_featx_trusted_types(rng):
    import skops.io as sio

    from featx.model import TRUSTED_TYPES

    Xs, y, Xt = shifted(rng)
    from featx.heads import make_head

    for adapter in (CORAL(make_head("logreg")), SubspaceAlignment(make_head("knn"),
                                                                  n_components=2)):
        fitted = adapter.fit(Xs, y, X_target=Xt)
        data = sio.dumps(fitted)
        untrusted = set(sio.get_untrusted_types(data=data))
        assert untrusted <= set(TRUSTED_TYPES), untrusted - set(TRUSTED_TYPES)
        loaded = sio.loads(data, trusted=sorted(untrusted))
        np.testing.assert_array_equal(loaded.predict(Xt), fitted.predict(Xt))


NOT_APPLICABLE = {
    "check_array_api_input": (
        "the adapters compute covariances and SVDs with NumPy; the check itself skips unless "
        "array-api-strict is installed and SCIPY_ARRAY_API=1"
    ),
}


def _name(check) -> str:
    return (check.func if isinstance(check, partial) else check).__name__


# scikit-learn's checks call fit(X, y) without X_target (nothing is adapted then); the tests above
# cover the adapted path. Every check passes.
CHECKS = [
    pytest.param(estimator, check, id=f"{type(estimator).__name__}-{_name(check)}")
    for adapter in (CORAL(), SubspaceAlignment(n_components=2))
    for estimator, check in estimator_checks_generator(adapter)
    if _name(check) not in NOT_APPLICABLE
]


def test_all_checks_are_collected():
    assert len(CHECKS) >= 100


@pytest.mark.parametrize(("estimator", "check"), CHECKS)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ---- inside GridSearchCV ------------------------------------------------------------------------


def _seen_target_rows(X_target, rng) -> list[int]:
    """How many target rows each fold's fit received, recorded by a scorer."""
    Xs, y, _ = shifted(rng, n=60)
    seen: list[int] = []

    def record(estimator, X, y_):
        seen.append(estimator.n_target_)
        return 0.0

    GridSearchCV(CORAL(), {"reg": [1.0]}, cv=KFold(3), scoring=record, refit=False).fit(
        Xs, y, X_target=X_target
    )
    return seen


def test_target_data_reaches_every_fold_whole(rng):
    Xt = shifted(rng, n=60)[2]
    assert _seen_target_rows(TargetData(Xt), rng) == [60, 60, 60]
    # A plain array of another length also passes whole ...
    assert _seen_target_rows(Xt[:50], rng) == [50, 50, 50]
    # ... but one as long as X is sliced like a per-sample parameter: why TargetData exists.
    assert _seen_target_rows(Xt, rng) == [40, 40, 40]


def test_reverse_validation_by_hand(rng):
    Xs, y, Xt = shifted(rng)
    train, val = np.arange(0, 200, 2), np.arange(1, 200, 2)
    model = CORAL(LogisticRegression()).fit(Xs[train], y[train], X_target=Xt)
    pseudo = model.predict(Xt)
    reverse = CORAL(LogisticRegression()).fit(Xt, pseudo, X_target=Xs[val])
    expected = np.mean(reverse.predict(Xs[val]) == y[val])
    score = ReverseValidationScorer(TargetData(Xt))(model, Xs[val], y[val])
    assert score == expected and 0.9 < score <= 1.0
    # A head that is not an adapter is reversed plainly.
    plain = LogisticRegression().fit(Xs[train], y[train])
    near = Xs + rng.normal(scale=0.5, size=Xs.shape)  # a target the plain head can label
    assert ReverseValidationScorer(near)(plain, Xs[val], y[val]) == np.mean(
        LogisticRegression().fit(near, plain.predict(near)).predict(Xs[val]) == y[val]
    )
    with pytest.raises(AdaptationError, match="got y=None"):
        ReverseValidationScorer(Xt)(model, Xs[val])


def test_reverse_validation_picks_the_adaptation_without_target_labels(rng):
    Xs, y, Xt = shifted(rng, n=120, width=3)
    search = GridSearchCV(
        CORAL(), {"align_mean": [False, True]}, cv=3, scoring=ReverseValidationScorer(Xt)
    ).fit(Xs, y, X_target=TargetData(Xt))
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_ == {"align_mean": True} and scores[1] > scores[0] + 0.2
    assert search.best_estimator_.score(Xt, y) > 0.9


def test_a_one_class_target_labelling_scores_its_share(rng):
    Xs, y, Xt = shifted(rng)
    source_only = CORAL().fit(Xs, y)  # says class 1 for every target row
    assert ReverseValidationScorer(Xt)(source_only, Xs[:50], y[:50]) == np.mean(y[:50] == 1)


def test_prediction_entropy(rng):
    Xs, y, Xt = shifted(rng)
    model = CORAL().fit(Xs, y, X_target=Xt)
    p = model.predict_proba(Xt)
    assert PredictionEntropyScorer(Xt)(model, Xs, y) == pytest.approx(
        np.mean(np.sum(p * np.log(p), axis=1))
    )
    # Usable as a search's scorer; and its known weakness: the unadapted candidate, which calls
    # every target row class 1 with confidence, has the lower entropy (the higher score).
    search = GridSearchCV(CORAL(), {"align_mean": [False, True]}, cv=3,
                          scoring=PredictionEntropyScorer(TargetData(Xt)))
    search.fit(Xs, y, X_target=TargetData(Xt))
    unadapted, adapted = search.cv_results_["mean_test_score"]
    assert -np.log(2) < adapted < unadapted <= 0
    svm = CORAL(LinearSVC()).fit(Xs, y, X_target=Xt)
    with pytest.raises(AdaptationError, match="LinearSVC has no predict_proba; use Reverse"):
        PredictionEntropyScorer(Xt)(svm.estimator_, Xs, y)
    with pytest.raises(AdaptationError, match=r"at least 2 target embeddings; got .* \(1, 4\)"):
        PredictionEntropyScorer(Xt[:1])(model, Xs, y)


# ---- tune_heads(target=...) ---------------------------------------------------------------------


def test_tune_heads_adapts_every_head_and_ranks_by_reverse_validation(rng):
    from featx import tune_heads

    Xs, y, Xt = shifted(rng, n=120)
    lines: list[str] = []
    board = tune_heads(Xs, y, heads=["logreg", "knn"], cv=3, target=Xt, test=(Xt, y),
                       grids={"knn": {"clf__n_neighbors": [5]}}, log=lines.append)
    assert "ranked by reverse validation on the target: no target label is used" in lines[0]
    assert board.scoring == "reverse_validation"
    assert board.columns == ["adapt"] and "coral (120 rows)" in board.to_text()
    for r in board:
        assert isinstance(r.estimator, CORAL) and r.estimator.n_target_ == 120
        assert set(r.best_params) >= {"reg"} and r.metrics_on == "test"
        assert 0 <= r.cv_mean <= 1 and r.test_score > 0.9
    assert board["knn"].best_params["estimator__clf__n_neighbors"] == 5
    # Reverse validation is an accuracy on the source folds, computable by hand for the best.
    assert [r.cv_mean for r in board] == sorted((r.cv_mean for r in board), reverse=True)
    unadapted = tune_heads(Xs, y, heads=["logreg"], cv=3, test=(Xt, y))
    assert unadapted.best.test_score == 0.5


def test_choosing_with_a_target_uses_no_target_label(rng):
    """The target's labels (given only as ``test=``) never choose: permuted, they give the same
    grids' choices, the same reverse-validation scores and the same ranking; only the test
    metrics, which they are for, change."""
    from featx import tune_heads

    Xs, y, Xt = shifted(rng, n=120)
    kw = dict(heads=["logreg", "knn"], cv=3, target=Xt,
              grids={"knn": {"clf__n_neighbors": [3, 15]}})
    true = tune_heads(Xs, y, test=(Xt, y), **kw)
    permuted = tune_heads(Xs, y, test=(Xt, rng.permutation(y)), **kw)
    flipped = tune_heads(Xs, y, test=(Xt, 1 - y), **kw)
    unlabelled = tune_heads(Xs, y, **kw)

    def choices(board):
        return [(r.head, r.best_params, r.cv_mean, r.cv_std) for r in board]

    assert choices(true) == choices(permuted) == choices(flipped) == choices(unlabelled)
    for a, b in zip(true, flipped, strict=True):
        np.testing.assert_array_equal(a.estimator.predict(Xt), b.estimator.predict(Xt))
    # The labels did reach the test metrics: flipped labels turn every hit into a miss.
    assert true.best.test_score > 0.9
    assert [r.test_score for r in flipped] == pytest.approx([1 - r.test_score for r in true])


def test_tune_heads_target_without_labels_reports_no_target_metrics(rng):
    from featx import tune_heads

    Xs, y, Xt = shifted(rng, n=90)
    board = tune_heads(Xs, y, heads=["logreg"], cv=3, target=Xt, adapt="subspace",
                       adapt_grid={"n_components": [2]})
    r = board.best
    assert isinstance(r.estimator, SubspaceAlignment) and r.best_params["n_components"] == 2
    assert np.isnan(r.accuracy) and np.isnan(r.macro_f1) and r.test_score is None
    assert len(board.y_true) == 0 and len(board.y_pred) == 0
    assert r.estimator.score(Xt, y) > 0.75  # the source-only head scores 0.5


def test_tune_heads_target_errors(rng):
    from featx import FeatxError, tune_heads

    Xs, y, Xt = shifted(rng, n=60)
    with pytest.raises(FeatxError, match="test_size holds out source rows.*test=\\(X_target_"):
        tune_heads(Xs, y, heads=["logreg"], cv=3, target=Xt, test_size=0.2)
    with pytest.raises(FeatxError, match="target has 3 features per row, but X has 4"):
        tune_heads(Xs, y, heads=["logreg"], cv=3, target=Xt[:, :3])
    with pytest.raises(FeatxError, match="adapt='tca' is not known; expected one of coral, sub"):
        tune_heads(Xs, y, heads=["logreg"], cv=3, target=Xt, adapt="tca")
    with pytest.raises(FeatxError, match="target has 1 row; adapting needs at least 2"):
        tune_heads(Xs, y, heads=["logreg"], cv=3, target=Xt[:1])


# ---- the command line ---------------------------------------------------------------------------


def test_cli_heads_target_saves_an_adapted_model_that_predicts_the_target(tmp_path):
    import csv

    from PIL import Image

    from featx import load_model
    from tests.conftest import featx_main, save_tiny_convnet

    save_tiny_convnet(tmp_path / "tiny.keras", 16)
    rng = np.random.default_rng(2)
    for c, cls in enumerate(["dark", "light"]):
        for domain, offset in (("source", 0), ("target", 60)):
            folder = tmp_path / domain / cls
            folder.mkdir(parents=True)
            for i in range(8):
                arr = rng.integers(0, 120, size=(16, 16, 3)) + 100 * c + offset
                Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    flat = tmp_path / "unlabelled"
    flat.mkdir()
    for p in sorted((tmp_path / "target").rglob("*.png")):
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())

    common = ["--backbone", tmp_path / "tiny.keras", "--input-size", "16", "--cache",
              tmp_path / "emb.h5", "--heads", "logreg,knn", "--cv", "2", "--n-jobs", "1"]
    run = featx_main  # main() in this process: the same text, no TensorFlow start-up

    # An unlabelled folder: ranked by reverse validation, no target metrics, a model saved.
    done = run("heads", tmp_path / "source", *common, "--target", flat, "--out", tmp_path / "u")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "16 target images from" in done.stdout and "unlabelled" in done.stdout
    assert "no target label is used" in done.stdout
    assert "cv reverse_validation" in done.stdout and "coral (16 rows)" in done.stdout
    assert {p.name for p in (tmp_path / "u").iterdir()} == {
        "leaderboard.csv", "leaderboard.png", "model.featx"}
    model = load_model(tmp_path / "u" / "model.featx")  # through skops' trusted types
    assert isinstance(model.head, CORAL) and model.head.n_target_ == 16
    assert model.manifest["info"]["target"] == str(flat)
    predicted = run("predict", tmp_path / "u" / "model.featx", flat, "--out", tmp_path / "p.csv")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and {r["prediction"] for r in rows} <= {"dark", "light"}
    assert all(r["error"] == "" for r in rows)
    # A flat folder is read in the file system's order (featx lists nothing up front): rows are
    # matched by path.
    files = sorted(str(p) for p in flat.iterdir())
    assert dict(zip(files, model.predict(files), strict=True)) == {
        r["path"]: r["prediction"] for r in rows}

    # A labelled target folder: its labels report the test columns and a confusion matrix.
    done = run("heads", tmp_path / "source", *common, "--target", tmp_path / "target",
               "--adapt", "subspace", "--out", tmp_path / "l")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "their labels only report the test columns, never choose" in done.stdout
    assert (tmp_path / "l" / "confusion_matrix.png").is_file()
    board = list(csv.DictReader(open(tmp_path / "l" / "leaderboard.csv", newline="")))
    assert all(0 <= float(r["test_score"]) <= 1 for r in board)
    assert isinstance(load_model(tmp_path / "l" / "model.featx").head, SubspaceAlignment)
