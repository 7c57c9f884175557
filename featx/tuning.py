"""Tuning heads on embeddings: :func:`tune_heads`, its search, and reading embeddings from a cache.

:func:`tune_heads` tunes any set of heads (the presets of :mod:`featx.heads`, or your own) on the
same embeddings with the same stratified folds and returns a :class:`~featx.Leaderboard`.

The expensive part, embedding, happens once, before tuning; nothing in this module builds a
network or embeds an image. Embeddings come in as arrays, or as an embedding cache file plus the
images they belong to (looked up by content, see :func:`cached_embeddings`).

Search strategy. :func:`tune_heads` runs an exhaustive ``GridSearchCV`` by default: the preset
grids are small (3 to 8 candidates) and the embeddings are already computed, so an exhaustive
search costs seconds to a minute and gives every candidate the same folds, which makes the
leaderboard's numbers directly comparable. ``search="halving"`` uses successive halving
(``HalvingGridSearchCV``, factor 3) instead; it pays off for large grids (dozens of candidates)
on many samples with heads whose fit time grows faster than the sample count (RBF SVM, MLP,
gradient boosting), because most candidates are only fitted on a fraction of the data.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.exceptions import FeatxError
from featx.heads import DEFAULT_HEADS, HeadPreset, _preset, list_heads
from featx.leaderboard import HeadResult, Leaderboard

__all__ = ["tune_heads", "cached_embeddings"]


def cached_embeddings(
    cache: str | os.PathLike[str], images: Any, *, group: str | None = None
) -> np.ndarray:
    """Read the embeddings of ``images`` from a cache file, by content; embed nothing.

    Parameters
    ----------
    cache : path
        An embedding cache written by :class:`featx.ImageEmbedder` or ``featx embed``.
    images : sequence of paths, or anything :class:`featx.ImageEmbedder` takes
        The images, in the order wanted. Each is hashed (a file is read, not decoded) and its
        row found in the cache.
    group : str or None, default=None
        The fingerprint (or a unique prefix of it) of the cache group to read; ``None`` when the
        cache holds one group. ``featx info FILE`` lists the groups.

    Returns
    -------
    embeddings : ndarray of float32, shape (len(images), width)

    Raises
    ------
    CacheGroupError
        If the cache does not exist or is empty, or the group is ambiguous or unknown (see
        :func:`featx.cache_groups.choose_group`; the message lists the groups).
    FeatxError
        If an image is not in the group (the message says how to embed it).
    """
    from featx.cache import EmbeddingCache
    from featx.cache_groups import choose_group
    from featx.images import as_items

    store = EmbeddingCache(cache)
    chosen = choose_group(store, group, offer_backbone=False)
    items, _ = as_items(images)
    keys = [item.key() for item in items]
    found, vectors = store.lookup(chosen.fingerprint, keys)
    if not found.all():
        missing = np.flatnonzero(~found)
        names = ", ".join(items[i].name for i in missing[:3])
        raise FeatxError(
            f"{len(missing)} of {len(items)} images are not in cache group {chosen.fingerprint} "
            f"({chosen.label}) of {str(cache)!r}, e.g. {names}. Embed them first (featx embed, "
            "or ImageEmbedder(..., cache=...).transform), or leave them out."
        )
    return vectors


def _resolve_heads(heads: Any) -> list[tuple[str, Any, dict[str, list[Any]]]]:
    """Names, presets or (name, estimator, grid) triples -> (name, estimator, grid)."""
    if heads is None:
        heads = DEFAULT_HEADS
    if isinstance(heads, str):
        heads = [heads]
    out = []
    for h in heads:
        if isinstance(h, str):
            preset = _preset(h)
            out.append((preset.name, preset, dict(preset.grid)))
        elif isinstance(h, HeadPreset):
            out.append((h.name, h, dict(h.grid)))
        elif isinstance(h, tuple) and len(h) == 3 and isinstance(h[0], str):
            out.append((h[0], h[1], dict(h[2])))
        else:
            raise FeatxError(
                f"head {h!r} is not understood. Expected a preset name ({', '.join(list_heads())})"
                ", a HeadPreset, or a (name, estimator, param_grid) tuple."
            )
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names) or not names:
        raise FeatxError(f"expected one or more heads with distinct names; got {names}.")
    return out


def _as_matrix(X: Any, images: Any, group: str | None, what: str) -> np.ndarray:
    if isinstance(X, (str, os.PathLike)):
        if images is None:
            raise FeatxError(
                f"{what} is a cache file ({str(X)!r}); pass images= (the images whose "
                "embeddings to read, in the order of the labels)."
            )
        return cached_embeddings(X, images, group=group)
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise FeatxError(
            f"{what} must be a 2-D numeric array of embeddings (n_samples, width) or a cache "
            f"file; got {arr.dtype} of shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise FeatxError(
            f"{what} has {bad} rows with NaN or infinite values (images that failed to embed "
            "with on_error='nan'?); leave them out before tuning."
        )
    return arr


def tune_heads(
    X: Any,
    y: Any,
    *,
    heads: Any = None,
    cv: int = 5,
    test_size: float | None = None,
    test: tuple[Any, Any] | None = None,
    images: Any = None,
    test_images: Any = None,
    group: str | None = None,
    scoring: str = "accuracy",
    search: str = "grid",
    grids: Mapping[str, Mapping[str, list[Any]]] | None = None,
    random_state: int = 0,
    n_jobs: int | None = None,
    log: Callable[[str], None] | None = None,
    target: Any = None,
    target_images: Any = None,
    adapt: str = "coral",
    adapt_grid: Mapping[str, list[Any]] | None = None,
    backend: str | None = None,
) -> Leaderboard:
    """Tune several heads on the same embeddings and rank them.

    Every head is searched over its grid with the same stratified ``cv`` folds, refitted on
    all the training data with its best parameters, and (when a test set is given) scored on
    it. Nothing is embedded here.

    Parameters
    ----------
    X : array of shape (n_samples, width), or a cache file path
        The embeddings; a cache file needs ``images``.
    y : array-like of shape (n_samples,)
        Class labels (ints or strings; strings make the saved model predict names).
    heads : sequence of str, HeadPreset or (name, estimator, grid), default=None
        Which heads; ``None``: :data:`DEFAULT_HEADS`.
    cv : int, default=5
        Stratified folds (shuffled with ``random_state``).
    test_size : float or None, default=None
        Hold out this fraction of ``X`` (stratified) as the test set.
    test : (X_test, y_test) or None, default=None
        An explicit test set instead (``X_test`` a cache file needs ``test_images``).
    images, test_images : sequence, optional
        The images whose embeddings to read when ``X`` / ``X_test`` is a cache file.
    group : str or None
        The cache group (see :func:`cached_embeddings`).
    scoring : str, default="accuracy"
        A scikit-learn scorer name the search maximises.
    search : {"grid", "halving"}, default="grid"
        Exhaustive ``GridSearchCV``, or successive halving (see the module docstring).
    grids : mapping of head name -> grid, optional
        Grids replacing the presets' for the named heads.
    random_state : int, default=0
        Seeds the split, the folds and the heads.
    n_jobs : int or None, default=None
        Parallel fits in each search (``-1``: all cores).
    log : callable or None
        Called with a line per head as it finishes.
    target : array of shape (n_target, width), or a cache file path, optional
        Unlabelled embeddings of the domain the heads will predict (a cache file needs
        ``target_images``). Every head is then wrapped in a domain adapter (``adapt``), searched
        over its grid and the adapter's, and ranked by reverse validation on the target
        (:class:`featx.adapt.ReverseValidationScorer`): no target label is used, and ``scoring``
        is not. The metrics are measured on ``test`` (labelled target rows, when you have some
        to report on; they never choose), else they are NaN: the source folds say nothing
        about the target. ``test_size`` is refused (it would test on the source).
    target_images : sequence, optional
        The images whose embeddings to read when ``target`` is a cache file.
    adapt : {"coral", "subspace"}, default="coral"
        The adapter (:class:`featx.adapt.CORAL` or :class:`featx.adapt.SubspaceAlignment`).
    adapt_grid : dict, optional
        The adapter's grid, replacing its default (:data:`featx.adapt.ADAPTERS`).
    backend : {None, "ray"}, default=None
        Where the searches' fits run: in this process (``n_jobs`` of them at once), or on a Ray
        cluster (``RAY_ADDRESS``, a connection already open, or a local one started for the
        call) through Ray's joblib backend, ``n_jobs=None`` then meaning every CPU of the
        cluster. The embeddings go into Ray's object store once, not once per fit.
        Needs ``pip install 'featx[ray]'``.

    Returns
    -------
    Leaderboard

    Examples
    --------
    >>> import numpy as np
    >>> from featx import tune_heads
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 40)
    >>> X = rng.normal(size=(80, 5)) + y[:, None]
    >>> board = tune_heads(X, y, heads=["logreg", "knn"], cv=3, test_size=0.25)
    >>> [r.head for r in board][0] in ("logreg", "knn"), board.n_train, board.n_test
    (True, 60, 20)
    >>> board.best.roc_auc > 0.8
    True
    """
    say = log or (lambda line: None)
    _check_options(search=search, backend=backend, cv=cv, test=test, test_size=test_size)
    resolved = _heads_to_tune(heads, grids)
    X_all = _as_matrix(X, images, group, "X")
    X_target = _target_matrix(target, target_images, group, test_size, X_all.shape[1], adapt)
    data = _train_and_test(X_all, y, test, test_images, test_size, group, random_state, X_target)
    classes = _classes(data.y_train, cv)
    plan = _plan(data, len(classes) == 2, cv, scoring, search, n_jobs, random_state)
    if X_target is not None:
        say(f"adapting every head to {len(X_target)} unlabelled target rows ({adapt}); ranked "
            "by reverse validation on the target: no target label is used")
    with _parallel(backend) as share:  # the fits run here, or on a Ray cluster
        X_fit = share(data.X_train)  # on Ray: in the object store once, not once per fit
        results = []
        for name, head, default_grid in resolved:
            estimator, grid = _candidates(
                head, dict((grids or {}).get(name, default_grid)), plan, X_target, adapt,
                adapt_grid,
            )
            result = _tune_head(name, estimator, grid, X_fit, data, plan, adapt)
            results.append(result)
            say(_result_line(result, plan.scoring))
        results.sort(key=lambda r: -r.cv_mean)  # stable: ties keep the order the heads were given
        y_true, y_pred = _best_predictions(results[0], X_fit, data, plan)
    return Leaderboard(
        results=results, scoring=plan.scoring, classes=classes, n_train=len(data.y_train),
        n_test=0 if data.y_test is None else len(data.y_test), cv=int(cv),
        y_true=np.asarray(y_true), y_pred=np.asarray(y_pred),
    )


@dataclass(frozen=True)
class _Data:
    """The rows the heads are tuned on, tested on (``None``: no test set) and adapted to."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    X_target: np.ndarray | None


@dataclass(frozen=True)
class _Plan:
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


def _check_options(
    *, search: str, backend: str | None, cv: Any, test: Any, test_size: float | None
) -> None:
    """Refuse option values that no data could make valid."""
    if search not in ("grid", "halving"):
        raise FeatxError(f"search={search!r} is not valid. Expected 'grid' or 'halving'.")
    if backend not in (None, "ray"):
        raise FeatxError(f"backend={backend!r} is not valid. Expected None or 'ray'.")
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise FeatxError(f"cv={cv!r} is not valid; expected an integer of at least 2 folds.")
    if test is not None and test_size:
        raise FeatxError("pass either test=(X_test, y_test) or test_size, not both.")


def _heads_to_tune(
    heads: Any, grids: Mapping[str, Any] | None
) -> list[tuple[str, Any, dict[str, list[Any]]]]:
    """The heads as (name, estimator, grid), every name in ``grids`` among them."""
    resolved = _resolve_heads(heads)
    for name in grids or {}:
        if name not in {n for n, _, _ in resolved}:
            raise FeatxError(f"grids names head {name!r}, which is not among the heads tuned.")
    return resolved


def _train_and_test(
    X_all: np.ndarray,
    y: Any,
    test: tuple[Any, Any] | None,
    test_images: Any,
    test_size: float | None,
    group: str | None,
    random_state: int,
    X_target: np.ndarray | None,
) -> _Data:
    """The training rows and the test set: ``test``, a stratified ``test_size`` split, or none."""
    from sklearn.model_selection import train_test_split

    y_all = np.asarray(y)
    if y_all.shape != (len(X_all),):
        raise FeatxError(
            f"y must hold one label per row of X ({len(X_all)}); got shape {y_all.shape}."
        )
    if test is not None:
        X_test = _as_matrix(test[0], test_images, group, "X_test")
        y_test = np.asarray(test[1])
        if y_test.shape != (len(X_test),) or X_test.shape[1] != X_all.shape[1]:
            raise FeatxError(
                f"the test set has {X_test.shape} embeddings and {y_test.shape} labels; expected "
                f"one label per row and width {X_all.shape[1]} like X."
            )
        return _Data(X_all, y_all, X_test, y_test, X_target)
    if test_size:
        if not 0 < test_size < 1:
            raise FeatxError(f"test_size={test_size!r} is not valid; expected 0 < test_size < 1.")
        X_train, X_test, y_train, y_test = train_test_split(
            X_all, y_all, test_size=test_size, stratify=y_all, random_state=random_state
        )
        return _Data(X_train, y_train, X_test, y_test, X_target)
    return _Data(X_all, y_all, None, None, X_target)


def _classes(y_train: np.ndarray, cv: int) -> np.ndarray:
    """The training classes, each with at least ``cv`` samples."""
    classes, counts = np.unique(y_train, return_counts=True)
    if len(classes) < 2:
        raise FeatxError(f"expected at least 2 classes to tell apart; got {classes.tolist()}.")
    if counts.min() < cv:
        rare = classes[int(np.argmin(counts))].item()
        raise FeatxError(
            f"class {rare!r} has {int(counts.min())} training samples, fewer than the cv={cv} "
            "folds; pass a smaller cv or give it more samples."
        )
    return classes


def _plan(
    data: _Data,
    binary: bool,
    cv: int,
    scoring: str,
    search: str,
    n_jobs: int | None,
    random_state: int,
) -> _Plan:
    """The folds, metrics and ranking scorer every head's search uses."""
    from sklearn.model_selection import StratifiedKFold

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
    return _Plan(folds, fit_size, metrics, binary, scoring, primary, fit_params, search, n_jobs,
                 random_state)


def _candidates(
    head: Any,
    grid: dict[str, list[Any]],
    plan: _Plan,
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
    from featx.adapt import adapted_head

    return adapted_head(estimator, grid, adapt, None if adapt_grid is None else dict(adapt_grid))


def _tune_head(
    name: str,
    estimator: Any,
    grid: dict[str, list[Any]],
    X_fit: np.ndarray,
    data: _Data,
    plan: _Plan,
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
    data: _Data,
    plan: _Plan,
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


def _result_line(result: HeadResult, scoring: str) -> str:
    """The line ``log`` gets when a head is done."""
    return (
        f"  {result.head}: cv {scoring} {result.cv_mean:.3f} ± {result.cv_std:.3f}"
        + (f", test {result.test_score:.3f}" if result.test_score is not None else "")
        + f" ({result.n_candidates} candidates, {result.search_seconds:.1f} s)"
    )


def _best_predictions(
    top: HeadResult, X_fit: np.ndarray, data: _Data, plan: _Plan
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


@contextlib.contextmanager
def _parallel(backend: str | None) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    """Where the fits run; yields how to hand them the training rows."""
    if backend is None:
        yield lambda X: X
        return
    from featx.ray_cluster import ray_joblib

    with ray_joblib() as share:
        yield share


def _target_matrix(
    target: Any, images: Any, group: str | None, test_size: float | None, width: int, adapt: str
) -> np.ndarray | None:
    """The unlabelled target embeddings, checked against the source's width."""
    if target is None:
        return None
    from featx.adapt import ADAPTERS

    if adapt not in ADAPTERS:
        raise FeatxError(f"adapt={adapt!r} is not known; expected one of "
                         f"{', '.join(sorted(ADAPTERS))}.")
    if test_size:
        raise FeatxError(
            "test_size holds out source rows, which say nothing about heads adapted to a "
            "target; with target=, pass test=(X_target_labelled, y) to report on labelled "
            "target rows (they never choose), or no test set."
        )
    Xt = _as_matrix(target, images, group, "target")
    if Xt.shape[1] != width:
        raise FeatxError(
            f"target has {Xt.shape[1]} features per row, but X has {width}; expected embeddings "
            "of the same width (the same backbone, layer and pooling)."
        )
    if len(Xt) < 2:
        raise FeatxError(f"target has {len(Xt)} row; adapting needs at least 2 target rows.")
    return Xt


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
