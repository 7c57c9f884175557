"""One head's search, run the same way for every head :func:`featx.tune_heads` tunes.

:func:`make_plan` fixes what all searches share (the seeded folds, the metrics, the scorer that
ranks, the target when adapting); :func:`tune_head` runs one head's grid or successive-halving
search under that plan and scores its best candidate into a
:class:`~featx.heads.leaderboard.HeadResult`;
:func:`best_predictions` gives the winner's predictions the leaderboard keeps.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.heads.leaderboard import HeadResult
from featx.heads.presets import HeadPreset

__all__ = ["SearchPlan", "TuningData", "best_predictions", "candidates", "make_plan",
           "result_line", "score_rows", "tune_head"]


@dataclass(frozen=True)
class TuningData:
    """The rows the heads are tuned on, tested on (``None``: no test set) and adapted to."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    X_target: np.ndarray | None
    groups: np.ndarray | None = None  # near-duplicate groups of the training rows, if any


@dataclass(frozen=True)
class SearchPlan:
    """What every head's search shares, so that all are searched and scored alike."""

    folds: Any  # the same seeded StratifiedKFold for every head
    fit_size: int  # rows in the smallest training fold
    metrics: dict[str, str]  # the leaderboard's metrics -> scikit-learn scorer names
    binary: bool
    scoring: str  # the name of what ranks, as the leaderboard shows it
    primary: Any  # the scorer that ranks: a scorer name, or reverse validation on the target
    fit_params: dict[str, Any]  # passed to every fit (the target, when adapting)
    search: str
    n_jobs: int | None
    random_state: int


def make_plan(
    data: TuningData,
    binary: bool,
    cv: int,
    scoring: str,
    search: str,
    n_jobs: int | None,
    random_state: int,
    folds: Any = None,
) -> SearchPlan:
    """The folds, metrics and ranking scorer every head's search uses (``folds``: a splitter
    instead of the seeded ``StratifiedKFold``, e.g. one keeping duplicate groups together)."""
    from sklearn.model_selection import StratifiedKFold

    if folds is None:
        folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
    metrics = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy",
               "macro_f1": "f1_macro"}
    if binary:
        metrics["roc_auc"] = "roc_auc"
    fit_size = min(len(train) for train, _ in folds.split(data.X_train, data.y_train))
    fit_params: dict[str, Any] = {}
    primary: Any = scoring
    if data.X_target is not None:
        from featx.adapt import ReverseValidationScorer, TargetData

        fit_params = {"X_target": TargetData(data.X_target)}
        primary, scoring = ReverseValidationScorer(data.X_target), "reverse_validation"
    return SearchPlan(folds, fit_size, metrics, binary, scoring, primary, fit_params, search,
                      n_jobs, random_state)


def candidates(
    head: Any,
    grid: dict[str, list[Any]],
    plan: SearchPlan,
    X_target: np.ndarray | None,
    adapt: str,
    adapt_grid: Mapping[str, list[Any]] | None,
) -> tuple[Any, dict[str, list[Any]]]:
    """A fresh estimator for ``head`` and the grid it can be fitted on (adapted, with a target)."""
    from sklearn.base import clone

    grid = _feasible(grid, plan.fit_size)
    estimator = head.make(plan.random_state) if isinstance(head, HeadPreset) else clone(head)
    if X_target is None:
        return estimator, grid
    from featx.adapt.adapters import adapted_head

    return adapted_head(estimator, grid, adapt, None if adapt_grid is None else dict(adapt_grid))


def tune_head(
    name: str,
    estimator: Any,
    grid: dict[str, list[Any]],
    X_fit: np.ndarray,
    data: TuningData,
    plan: SearchPlan,
    adapt: str,
) -> HeadResult:
    """Search one head's grid, then score its best candidate: one leaderboard row."""
    from sklearn.exceptions import ConvergenceWarning

    started = time.perf_counter()
    with warnings.catch_warnings():
        # Candidates at the edge of a grid may stop before converging; the search ranks them.
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted, cv_scores = _search(
            estimator, grid, X_fit, data.y_train, plan.folds, plan.primary, plan.metrics,
            plan.search, plan.n_jobs, plan.random_state, plan.fit_params,
        )
    seconds = time.perf_counter() - started
    best = fitted.best_estimator_
    i = fitted.best_index_
    scores, test_score, on, predict_seconds = _best_scores(best, fitted, cv_scores, X_fit, data,
                                                           plan)
    return HeadResult(
        head=name,
        # The primary metric is named "score" in both searches.
        cv_mean=float(fitted.cv_results_["mean_test_score"][i]),
        cv_std=float(fitted.cv_results_["std_test_score"][i]),
        test_score=test_score,
        accuracy=scores["accuracy"],
        balanced_accuracy=scores["balanced_accuracy"],
        macro_f1=scores["macro_f1"],
        roc_auc=scores.get("roc_auc"),
        metrics_on=on,
        fit_seconds=float(fitted.refit_time_),
        predict_seconds=predict_seconds,
        search_seconds=seconds,
        n_candidates=_n_candidates(fitted),
        best_params=dict(fitted.best_params_),
        estimator=best,
        extra={} if data.X_target is None else {
            "adapt": f"{adapt} ({len(data.X_target)} rows)"},
    )


def _best_scores(
    best: Any,
    fitted: Any,
    cv_scores: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    X_fit: np.ndarray,
    data: TuningData,
    plan: SearchPlan,
) -> tuple[dict[str, float], float | None, str, float]:
    """The best candidate's metrics, its test score, where they were measured, predict time.

    On the test set when there is one; else unknown (NaN) for a head adapted to a target, whose
    source folds say nothing about the target; else on the cv folds.
    """
    if data.X_test is not None and data.y_test is not None:
        from sklearn.metrics import get_scorer

        t0 = time.perf_counter()
        y_pred = best.predict(data.X_test)
        predict_seconds = time.perf_counter() - t0
        scores = _test_metrics(best, data.X_test, data.y_test, y_pred, plan.binary)
        test_score = (
            scores["accuracy"] if plan.scoring in ("accuracy", "reverse_validation")
            else float(get_scorer(plan.scoring)(best, data.X_test, data.y_test))
        )
        return scores, test_score, "test", predict_seconds
    predict_seconds = float(fitted.cv_results_["mean_score_time"][fitted.best_index_])
    if data.X_target is not None:
        return dict.fromkeys(plan.metrics, float("nan")), None, "cv", predict_seconds
    return cv_scores(X_fit, data.y_train), None, "cv", predict_seconds


def score_rows(estimator: Any, X: np.ndarray, y: np.ndarray, scoring: str) -> float | None:
    """The score a leaderboard's ``test`` column shows, on rows ``X``, ``y`` (``None`` when
    the scorer cannot score them, e.g. ROC AUC on one class)."""
    from sklearn.metrics import accuracy_score, get_scorer

    if scoring in ("accuracy", "reverse_validation"):
        return float(accuracy_score(y, estimator.predict(X)))
    try:
        return float(get_scorer(scoring)(estimator, X, y))
    except ValueError:
        return None


def result_line(result: HeadResult, scoring: str) -> str:
    """The line ``log`` gets when a head is done."""
    return (
        f"  {result.head}: cv {scoring} {result.cv_mean:.3f} ± {result.cv_std:.3f}"
        + (f", test {result.test_score:.3f}" if result.test_score is not None else "")
        + f" ({result.n_candidates} candidates, {result.search_seconds:.1f} s)"
    )


def best_predictions(
    top: HeadResult, X_fit: np.ndarray, data: TuningData, plan: SearchPlan
) -> tuple[np.ndarray, np.ndarray]:
    """The top head's labels and predictions the leaderboard keeps (confusion matrix, report).

    On the test set when there is one; none for a head adapted to a target (no target label to
    compare with); else out-of-fold predictions on the training rows.
    """
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_predict

    if data.X_test is not None and data.y_test is not None:
        return data.y_test, top.estimator.predict(data.X_test)
    if data.X_target is not None:
        none = np.zeros(0, dtype=data.y_train.dtype)
        return none, none
    y_pred = cross_val_predict(clone(top.estimator), X_fit, data.y_train, cv=plan.folds,
                               n_jobs=plan.n_jobs)
    return data.y_train, y_pred


def _feasible(grid: dict[str, list[Any]], fit_size: int) -> dict[str, list[Any]]:
    """Drop kNN sizes larger than the smallest training fold (they cannot be fitted)."""
    out = {}
    for key, values in grid.items():
        if key.endswith("n_neighbors"):
            kept = [v for v in values if v <= fit_size]
            values = kept or [max(1, fit_size)]
        out[key] = list(values)
    return out


def _search(
    estimator: Any,
    grid: dict[str, list[Any]],
    X: np.ndarray,
    y: np.ndarray,
    folds: Any,
    scoring: str,
    metrics: dict[str, str],
    search: str,
    n_jobs: int | None,
    random_state: int,
    fit_params: dict[str, Any] | None = None,
) -> tuple[Any, Callable[[np.ndarray, np.ndarray], dict[str, float]]]:
    """Run the search; return it and a function giving the best candidate's cv metrics."""
    from sklearn.model_selection import GridSearchCV, cross_validate

    if search == "grid":
        # One pass scores every metric on every fold: the best candidate's cv metrics are free.
        scorers = {"score": scoring, **metrics}
        fitted = GridSearchCV(
            estimator, grid, scoring=scorers, refit="score", cv=folds, n_jobs=n_jobs,
            error_score="raise",
        ).fit(X, y, **(fit_params or {}))
        res = fitted.cv_results_

        def from_search(X_: np.ndarray, y_: np.ndarray) -> dict[str, float]:
            return {m: float(res[f"mean_test_{m}"][fitted.best_index_]) for m in metrics}

        return fitted, from_search

    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    # The first rounds fit on subsamples: each must leave the largest k of a kNN grid enough
    # neighbours in its training folds.
    k = max((v for key, vs in grid.items() if key.endswith("n_neighbors") for v in vs),
            default=0)
    n_splits = folds.get_n_splits()
    min_resources: Any = "exhaust"
    if k:
        need = max(2 * n_splits * len(np.unique(y)), math.ceil(k * n_splits / (n_splits - 1)) + 1)
        min_resources = min(need, len(y))
    # Successive halving scores one metric; the others are measured for the winner afterwards.
    fitted = HalvingGridSearchCV(
        estimator, grid, scoring=scoring, cv=folds, n_jobs=n_jobs, factor=3,
        min_resources=min_resources, random_state=random_state, error_score="raise",
    ).fit(X, y, **(fit_params or {}))

    def from_folds(X_: np.ndarray, y_: np.ndarray) -> dict[str, float]:
        from sklearn.base import clone

        out = cross_validate(clone(fitted.best_estimator_), X_, y_, cv=folds, scoring=metrics,
                             n_jobs=n_jobs, params=fit_params)
        return {m: float(np.mean(out[f"test_{m}"])) for m in metrics}

    return fitted, from_folds


def _n_candidates(fitted: Any) -> int:
    # Successive halving lists a candidate once per round it took part in.
    first = getattr(fitted, "n_candidates_", None)
    return int(first[0]) if first else len(fitted.cv_results_["params"])


def _test_metrics(
    head: Any, X: np.ndarray, y: np.ndarray, y_pred: np.ndarray, binary: bool
) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    out = {
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, y_pred)),
        "macro_f1": float(f1_score(y, y_pred, average="macro")),
    }
    if binary and len(np.unique(y)) == 2:
        if hasattr(head, "predict_proba"):
            score = head.predict_proba(X)[:, 1]
        else:
            score = head.decision_function(X)
        out["roc_auc"] = float(roc_auc_score(y == head.classes_[1], score))
    return out
