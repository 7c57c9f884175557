"""Classical heads on embeddings: presets, tuning, and the leaderboard.

A *head* is a scikit-learn classifier that trains on embeddings. :data:`HEADS` holds presets,
each a :class:`~sklearn.pipeline.Pipeline` (with a ``StandardScaler`` where the head needs
comparable feature scales) and a small default search grid. :func:`tune_heads` tunes any set of
heads on the same embeddings, with the same stratified folds, and returns a :class:`Leaderboard`.

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

import csv
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = [
    "HeadPreset",
    "HEADS",
    "DEFAULT_HEADS",
    "HeadResult",
    "Leaderboard",
    "list_heads",
    "make_head",
    "tune_heads",
    "cached_embeddings",
]


@dataclass(frozen=True)
class HeadPreset:
    """A named head: how to build its pipeline and which grid to search.

    Attributes
    ----------
    name : str
        The preset's name (``"logreg"``).
    description : str
        One line: what the head is.
    build : callable
        ``build(random_state) -> Pipeline``; the classifier is the step named ``"clf"``.
    grid : dict
        The default search grid, keys prefixed with the step name (``"clf__C"``).
    scaled : bool
        Whether the pipeline standardises the features first.
    """

    name: str
    description: str
    build: Callable[[int | None], Any] = field(repr=False)
    grid: dict[str, list[Any]]
    scaled: bool

    def make(self, random_state: int | None = 0) -> Any:
        """A new, unfitted pipeline of this head."""
        return self.build(random_state)

    @property
    def n_candidates(self) -> int:
        """How many parameter combinations the default grid holds."""
        return math.prod(len(v) for v in self.grid.values())


def _pipeline(clf: Any, scaled: bool) -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("scale", StandardScaler())] if scaled else []
    return Pipeline([*steps, ("clf", clf)])


def _logreg(random_state: int | None) -> Any:
    from sklearn.linear_model import LogisticRegression

    return _pipeline(LogisticRegression(max_iter=2000, random_state=random_state), True)


def _linear_svm(random_state: int | None) -> Any:
    from sklearn.svm import LinearSVC

    return _pipeline(LinearSVC(max_iter=5000, random_state=random_state), True)


def _rbf_svm(random_state: int | None) -> Any:
    from sklearn.svm import SVC

    return _pipeline(SVC(kernel="rbf", random_state=random_state), True)


def _hist_gb(random_state: int | None) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    # Trees split on thresholds: scaling changes nothing. Early stopping bounds the fit time.
    clf = HistGradientBoostingClassifier(
        max_iter=200, early_stopping=True, random_state=random_state
    )
    return _pipeline(clf, False)


def _knn(random_state: int | None) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return _pipeline(KNeighborsClassifier(), True)


def _mlp(random_state: int | None) -> Any:
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=(256,), early_stopping=True, max_iter=300, random_state=random_state
    )
    return _pipeline(clf, True)


#: The presets, by name. Each grid was chosen to bracket what works on frozen ImageNet features
#: (1,000-2,000 wide, a few thousand samples) while staying cheap to search.
HEADS: dict[str, HeadPreset] = {
    p.name: p
    for p in [
        HeadPreset("logreg", "standardise + logistic regression", _logreg,
                   {"clf__C": [0.01, 0.1, 1.0]}, True),
        HeadPreset("linear_svm", "standardise + linear SVM", _linear_svm,
                   {"clf__C": [0.0001, 0.001, 0.01]}, True),
        HeadPreset("rbf_svm", "standardise + RBF-kernel SVM", _rbf_svm,
                   {"clf__C": [1.0, 3.0, 10.0, 30.0]}, True),
        HeadPreset("hist_gb", "histogram gradient boosting (no scaling needed)", _hist_gb,
                   {"clf__learning_rate": [0.05, 0.1], "clf__max_leaf_nodes": [15, 31]}, False),
        HeadPreset("knn", "standardise + k nearest neighbours", _knn,
                   {"clf__n_neighbors": [3, 5, 10, 20], "clf__weights": ["uniform", "distance"]},
                   True),
        HeadPreset("mlp", "standardise + MLP, one hidden layer of 256, early stopping", _mlp,
                   {"clf__alpha": [0.0001, 0.01, 1.0]}, True),
    ]
}

#: The heads :func:`tune_heads` tunes when none are named: every preset but gradient boosting,
#: which costs tens of seconds per fit on 1,000-wide embeddings (name it to include it).
DEFAULT_HEADS: tuple[str, ...] = ("logreg", "linear_svm", "rbf_svm", "knn", "mlp")


def list_heads() -> list[str]:
    """The names of the preset heads.

    Examples
    --------
    >>> from featx import list_heads
    >>> list_heads()
    ['hist_gb', 'knn', 'linear_svm', 'logreg', 'mlp', 'rbf_svm']
    """
    return sorted(HEADS)


def _preset(name: str) -> HeadPreset:
    key = name.strip().lower().replace("-", "_")
    if key not in HEADS:
        import difflib

        close = difflib.get_close_matches(key, list(HEADS), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
        raise FeatxError(f"head {name!r} is not known{hint} Known: {', '.join(list_heads())}.")
    return HEADS[key]


def make_head(name: str, *, random_state: int | None = 0, **params: Any) -> Any:
    """Build a preset head's pipeline, optionally with parameters set.

    Parameters
    ----------
    name : str
        A preset name (see :func:`list_heads`).
    random_state : int or None, default=0
        Passed to heads that use randomness.
    **params
        Pipeline parameters, e.g. ``clf__C=0.1``.

    Examples
    --------
    >>> from featx import make_head
    >>> make_head("logreg", clf__C=0.1).named_steps["clf"].C
    0.1
    """
    head = _preset(name).make(random_state)
    return head.set_params(**params) if params else head


# ---- the leaderboard ----------------------------------------------------------------------------


@dataclass
class HeadResult:
    """One tuned head: its scores, timings and best parameters.

    Attributes
    ----------
    head : str
        The head's name.
    cv_mean, cv_std : float
        Mean and standard deviation of the search's score over the folds, for the best
        parameters.
    test_score : float or None
        The score of the refitted head on the held-out test set (``None`` without one).
    accuracy, balanced_accuracy, macro_f1 : float
        On the test set when there is one (``metrics_on == "test"``), else the mean over the
        cross-validation folds of the best parameters (``metrics_on == "cv"``).
    roc_auc : float or None
        As above, for two classes only.
    metrics_on : {"test", "cv"}
    fit_seconds : float
        Time to refit the best parameters on all the training data.
    predict_seconds : float
        Time to predict the test set; without one, the mean time to score one fold.
    search_seconds : float
        Wall time of the whole search.
    n_candidates : int
        Parameter combinations searched.
    best_params : dict
    estimator : Pipeline
        The best head, refitted on all the training data.
    """

    head: str
    cv_mean: float
    cv_std: float
    test_score: float | None
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    roc_auc: float | None
    metrics_on: str
    fit_seconds: float
    predict_seconds: float
    search_seconds: float
    n_candidates: int
    best_params: dict[str, Any]
    estimator: Any = field(repr=False, default=None)

    def as_row(self) -> dict[str, Any]:
        """The result as a flat dict of plain values (what the CSV and the frame hold)."""
        return {
            "head": self.head,
            "cv_mean": self.cv_mean,
            "cv_std": self.cv_std,
            "test_score": self.test_score,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "roc_auc": self.roc_auc,
            "metrics_on": self.metrics_on,
            "fit_seconds": self.fit_seconds,
            "predict_seconds": self.predict_seconds,
            "search_seconds": self.search_seconds,
            "n_candidates": self.n_candidates,
            "best_params": _params_text(self.best_params),
        }


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('clf__')}={v!r}" for k, v in sorted(params.items()))


@dataclass
class Leaderboard:
    """Tuned heads, best first (by cross-validated score: the test set never picks a head).

    A list of :class:`HeadResult` rather than a pandas DataFrame, so that the command line and
    the saved model need no pandas; :meth:`to_frame` gives a DataFrame when pandas is there.

    Attributes
    ----------
    results : list of HeadResult
        Sorted by ``cv_mean``, best first.
    scoring : str
        The score the search maximised (``"accuracy"``, ...).
    classes : ndarray
        The class labels, sorted.
    n_train, n_test : int
        Samples tuned on, and held out (0 without a test set).
    cv : int
        Number of stratified folds.
    y_true, y_pred : ndarray
        The best head's test labels and predictions (out-of-fold predictions on the training
        data when there is no test set): what its confusion matrix shows.
    """

    results: list[HeadResult]
    scoring: str
    classes: np.ndarray
    n_train: int
    n_test: int
    cv: int
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)

    @property
    def best(self) -> HeadResult:
        """The head with the best cross-validated score."""
        return self.results[0]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[HeadResult]:
        return iter(self.results)

    def __getitem__(self, name: str) -> HeadResult:
        for r in self.results:
            if r.head == name:
                return r
        raise KeyError(f"no head {name!r} on the leaderboard; it has {[r.head for r in self]}")

    def to_frame(self) -> Any:
        """The leaderboard as a pandas DataFrame (needs pandas), one row per head."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is a dev dependency
            raise ImportError(
                "Leaderboard.to_frame needs pandas: pip install pandas (or featx[pandas])."
            ) from None
        return pd.DataFrame([r.as_row() for r in self.results])

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the leaderboard as CSV (one row per head, best first); return the path."""
        out = Path(path)
        rows = [r.as_row() for r in self.results]
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["head"])
            writer.writeheader()
            writer.writerows(rows)
        return out

    def to_text(self) -> str:
        """A plain-text table, best first."""
        metric = "test" if self.n_test else "cv"
        header = ["#", "head", f"cv {self.scoring}", "test", "bal.acc", "macro-F1"]
        binary = any(r.roc_auc is not None for r in self.results)
        if binary:
            header.append("ROC AUC")
        header += ["fit s", "pred s", "best parameters"]
        table = [header]
        for i, r in enumerate(self.results, 1):
            row = [
                str(i), r.head, f"{r.cv_mean:.3f} ± {r.cv_std:.3f}",
                "-" if r.test_score is None else f"{r.test_score:.3f}",
                f"{r.balanced_accuracy:.3f}", f"{r.macro_f1:.3f}",
            ]
            if binary:
                row.append("-" if r.roc_auc is None else f"{r.roc_auc:.3f}")
            row += [f"{r.fit_seconds:.2f}", f"{r.predict_seconds:.2f}",
                    _params_text(r.best_params)]
            table.append(row)
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        right = {0, 2, 3, 4, 5, *range(6, len(header) - 1)}
        lines = []
        for row in table:
            cells = [c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"{len(self.results)} heads, {self.cv}-fold stratified cross-validation on "
            f"{self.n_train} samples" + (f", tested on {self.n_test} held out" if self.n_test
                                         else "") + f"; bal.acc/macro-F1 on {metric}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# ---- embeddings from a cache --------------------------------------------------------------------


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
    FeatxError
        If the cache does not exist, the group is ambiguous or unknown, or an image is not in it
        (the message says how to embed it).
    """
    from featx.cache import EmbeddingCache
    from featx.images import as_items

    store = EmbeddingCache(cache)
    if not store.exists():
        raise FeatxError(f"cache file {str(cache)!r} does not exist.")
    groups = store.groups()
    listing = "; ".join(f"{g.fingerprint} ({g.label}, {g.rows} rows)" for g in groups)
    if group is None:
        if len(groups) != 1:
            raise FeatxError(
                f"cache {str(cache)!r} holds {len(groups)} groups; pass group= (a fingerprint "
                f"or a unique prefix) to choose one: {listing}."
            )
        chosen = groups[0]
    else:
        matches = [g for g in groups if g.fingerprint.startswith(group)]
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            raise FeatxError(
                f"group {group!r} matches {what} groups of cache {str(cache)!r}; expected one. "
                f"Its groups: {listing}."
            )
        chosen = matches[0]
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


# ---- tuning -------------------------------------------------------------------------------------


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
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

    say = log or (lambda line: None)
    if search not in ("grid", "halving"):
        raise FeatxError(f"search={search!r} is not valid. Expected 'grid' or 'halving'.")
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise FeatxError(f"cv={cv!r} is not valid; expected an integer of at least 2 folds.")
    if test is not None and test_size:
        raise FeatxError("pass either test=(X_test, y_test) or test_size, not both.")
    resolved = _resolve_heads(heads)
    for name in grids or {}:
        if name not in {n for n, _, _ in resolved}:
            raise FeatxError(f"grids names head {name!r}, which is not among the heads tuned.")
    X_all = _as_matrix(X, images, group, "X")
    y_all = np.asarray(y)
    if y_all.shape != (len(X_all),):
        raise FeatxError(
            f"y must hold one label per row of X ({len(X_all)}); got shape {y_all.shape}."
        )
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    if test is not None:
        X_test = _as_matrix(test[0], test_images, group, "X_test")
        y_test = np.asarray(test[1])
        if y_test.shape != (len(X_test),) or X_test.shape[1] != X_all.shape[1]:
            raise FeatxError(
                f"the test set has {X_test.shape} embeddings and {y_test.shape} labels; expected "
                f"one label per row and width {X_all.shape[1]} like X."
            )
        X_train, y_train = X_all, y_all
    elif test_size:
        if not 0 < test_size < 1:
            raise FeatxError(f"test_size={test_size!r} is not valid; expected 0 < test_size < 1.")
        X_train, X_test, y_train, y_test = train_test_split(
            X_all, y_all, test_size=test_size, stratify=y_all, random_state=random_state
        )
    else:
        X_train, y_train = X_all, y_all
    classes, counts = np.unique(y_train, return_counts=True)
    if len(classes) < 2:
        raise FeatxError(f"expected at least 2 classes to tell apart; got {classes.tolist()}.")
    if counts.min() < cv:
        rare = classes[int(np.argmin(counts))].item()
        raise FeatxError(
            f"class {rare!r} has {int(counts.min())} training samples, fewer than the cv={cv} "
            "folds; pass a smaller cv or give it more samples."
        )
    binary = len(classes) == 2
    folds = StratifiedKFold(n_splits=int(cv), shuffle=True, random_state=random_state)
    metrics = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy",
               "macro_f1": "f1_macro"}
    if binary:
        metrics["roc_auc"] = "roc_auc"

    fit_size = min(len(train) for train, _ in folds.split(X_train, y_train))
    results: list[HeadResult] = []
    for name, head, default_grid in resolved:
        grid = _feasible(dict((grids or {}).get(name, default_grid)), fit_size)
        estimator = head.make(random_state) if isinstance(head, HeadPreset) else clone(head)
        started = time.perf_counter()
        with warnings.catch_warnings():
            # Candidates at the edge of a grid may stop before converging; the search ranks them.
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted, cv_scores = _search(
                estimator, grid, X_train, y_train, folds, scoring, metrics, search, n_jobs,
                random_state,
            )
        seconds = time.perf_counter() - started
        best = fitted.best_estimator_
        if X_test is not None and y_test is not None:
            t0 = time.perf_counter()
            y_pred = best.predict(X_test)
            predict_seconds = time.perf_counter() - t0
            scores = _test_metrics(best, X_test, y_test, y_pred, binary)
            from sklearn.metrics import get_scorer

            test_score: float | None = (
                scores["accuracy"] if scoring == "accuracy"
                else float(get_scorer(scoring)(best, X_test, y_test))
            )
            on = "test"
        else:
            scores = cv_scores(X_train, y_train)
            predict_seconds = float(fitted.cv_results_["mean_score_time"][fitted.best_index_])
            test_score = None
            on = "cv"
        i = fitted.best_index_
        result = HeadResult(
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
        )
        results.append(result)
        say(
            f"  {name}: cv {scoring} {result.cv_mean:.3f} ± {result.cv_std:.3f}"
            + (f", test {test_score:.3f}" if test_score is not None else "")
            + f" ({result.n_candidates} candidates, {seconds:.1f} s)"
        )
    results.sort(key=lambda r: -r.cv_mean)  # stable: ties keep the order the heads were given
    top = results[0]
    if X_test is not None and y_test is not None:
        y_true, y_pred = y_test, top.estimator.predict(X_test)
    else:
        y_true = y_train
        y_pred = cross_val_predict(clone(top.estimator), X_train, y_train, cv=folds,
                                   n_jobs=n_jobs)
    return Leaderboard(
        results=results, scoring=scoring, classes=classes, n_train=len(y_train),
        n_test=0 if y_test is None else len(y_test), cv=int(cv), y_true=np.asarray(y_true),
        y_pred=np.asarray(y_pred),
    )


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
) -> tuple[Any, Callable[[np.ndarray, np.ndarray], dict[str, float]]]:
    """Run the search; return it and a function giving the best candidate's cv metrics."""
    from sklearn.model_selection import GridSearchCV, cross_validate

    if search == "grid":
        # One pass scores every metric on every fold: the best candidate's cv metrics are free.
        scorers = {"score": scoring, **metrics}
        fitted = GridSearchCV(
            estimator, grid, scoring=scorers, refit="score", cv=folds, n_jobs=n_jobs,
            error_score="raise",
        ).fit(X, y)
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
    ).fit(X, y)

    def from_folds(X_: np.ndarray, y_: np.ndarray) -> dict[str, float]:
        from sklearn.base import clone

        out = cross_validate(clone(fitted.best_estimator_), X_, y_, cv=folds, scoring=metrics,
                             n_jobs=n_jobs)
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
