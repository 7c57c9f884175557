"""Classical heads on embeddings: the presets.

A *head* is a scikit-learn classifier that trains on embeddings. :data:`HEADS` holds presets,
each a :class:`~sklearn.pipeline.Pipeline` (with a ``StandardScaler`` where the head needs
comparable feature scales) and a small default search grid; :func:`make_head` builds one.

Tuning is in :mod:`featx.heads.tuning` (:func:`tune_heads`, :func:`cached_embeddings`) and the
ranked results in :mod:`featx.heads.leaderboard` (:class:`HeadResult`, :class:`Leaderboard`);
``from featx.heads import tune_heads, Leaderboard`` reaches all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from featx.exceptions import FeatxError

__all__ = [
    "HeadPreset",
    "HEADS",
    "DEFAULT_HEADS",
    "SCALABLE_HEADS",
    "list_heads",
    "make_head",
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
    streams : bool
        Whether the head trains by blocks (``fit_stream``): it reads rows from the cache a block
        at a time, so it runs on every training row however many there are.
    max_rows : int or None
        For a head that does not stream: the most training rows it is fitted on above
        :data:`~featx.heads.tuning.EXACT_ROWS` (a seeded sample; chosen so that one fit takes
        about a minute on 2 cores, from its measured growth). ``None`` for a streaming head.
    scale_grid : dict or None
        The grid searched on a held-out block above :data:`~featx.heads.tuning.EXACT_ROWS`
        (each candidate is a pass over every row); ``None``: ``grid``.
    """

    name: str
    description: str
    build: Callable[[int | None], Any] = field(repr=False)
    grid: dict[str, list[Any]]
    scaled: bool
    streams: bool = False
    max_rows: int | None = None
    scale_grid: dict[str, list[Any]] | None = None

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


def _logreg_sgd(random_state: int | None) -> Any:
    from featx.heads.scalable import SGDHead

    return SGDHead("log_loss", random_state=random_state or 0)


def _linear_svm_sgd(random_state: int | None) -> Any:
    from featx.heads.scalable import SGDHead

    return SGDHead("hinge", random_state=random_state or 0)


def _rbf_svm_approx(random_state: int | None) -> Any:
    from featx.heads.scalable import SGDHead

    return SGDHead("hinge", kernel="rbf", alpha=1e-3, random_state=random_state or 0)


def _knn_faiss(random_state: int | None) -> Any:
    from featx.heads.knn_index import IndexKNNClassifier

    return IndexKNNClassifier(random_state=random_state or 0)


def _gb_xgb(random_state: int | None) -> Any:
    from featx.heads.boosted import BoostedHead

    return BoostedHead(random_state=random_state or 0)


#: The presets, by name. Each grid was chosen to bracket what works on frozen ImageNet features
#: (1,000-2,000 wide, a few thousand samples) while staying cheap to search.
HEADS: dict[str, HeadPreset] = {
    p.name: p
    for p in [
        HeadPreset("logreg", "standardise + logistic regression", _logreg,
                   {"clf__C": [0.01, 0.1, 1.0]}, True, max_rows=50_000),
        HeadPreset("linear_svm", "standardise + linear SVM", _linear_svm,
                   {"clf__C": [0.0001, 0.001, 0.01]}, True, max_rows=20_000),
        HeadPreset("rbf_svm", "standardise + RBF-kernel SVM", _rbf_svm,
                   {"clf__C": [1.0, 3.0, 10.0, 30.0]}, True, max_rows=20_000),
        HeadPreset("hist_gb", "histogram gradient boosting (no scaling needed)", _hist_gb,
                   {"clf__learning_rate": [0.05, 0.1], "clf__max_leaf_nodes": [15, 31]}, False,
                   max_rows=20_000),
        HeadPreset("knn", "standardise + k nearest neighbours", _knn,
                   {"clf__n_neighbors": [3, 5, 10, 20], "clf__weights": ["uniform", "distance"]},
                   True, max_rows=50_000),
        HeadPreset("mlp", "standardise + MLP, one hidden layer of 256, early stopping", _mlp,
                   {"clf__alpha": [0.0001, 0.01, 1.0]}, True, max_rows=50_000),
        HeadPreset("logreg_sgd", "standardise + logistic regression by SGD over blocks",
                   _logreg_sgd, {"alpha": [1e-5, 1e-4, 1e-3]}, True, streams=True,
                   scale_grid={"alpha": [1e-5, 1e-4]}),
        HeadPreset("linear_svm_sgd", "standardise + linear SVM (hinge loss) by SGD over blocks",
                   _linear_svm_sgd, {"alpha": [1e-5, 1e-4, 1e-3]}, True, streams=True,
                   scale_grid={"alpha": [1e-5, 1e-4]}),
        HeadPreset("rbf_svm_approx", "standardise + RBF kernel approximation + SGD over blocks",
                   _rbf_svm_approx, {"alpha": [1e-4, 3e-4, 1e-3]}, True, streams=True,
                   scale_grid={"alpha": [1e-3]}),
        HeadPreset("knn_faiss", "standardise + k nearest neighbours on a faiss index",
                   _knn_faiss, {"n_neighbors": [5, 10, 20]}, True, streams=True,
                   scale_grid={"n_neighbors": [10]}),
        HeadPreset("gb_xgb", "gradient boosting (XGBoost) from blocks kept on disk as bins "
                   "(the boost extra)", _gb_xgb,
                   {"learning_rate": [0.05, 0.1], "max_leaf_nodes": [15, 31]}, False,
                   streams=True, scale_grid={"learning_rate": [0.1], "max_leaf_nodes": [31]}),
    ]
}

#: The heads :func:`tune_heads` tunes when none are named: every preset but gradient boosting,
#: which costs tens of seconds per fit on 1,000-wide embeddings (name it to include it).
DEFAULT_HEADS: tuple[str, ...] = ("logreg", "linear_svm", "rbf_svm", "knn", "mlp")

#: The heads :func:`tune_heads` tunes when none are named and the training rows are more than
#: :data:`~featx.heads.tuning.EXACT_ROWS`: the ones that stream, each trained on every row.
SCALABLE_HEADS: tuple[str, ...] = ("logreg_sgd", "linear_svm_sgd", "rbf_svm_approx", "knn_faiss")


def list_heads() -> list[str]:
    """The names of the preset heads.

    Examples
    --------
    >>> from featx import list_heads
    >>> list_heads()  # doctest: +NORMALIZE_WHITESPACE
    ['gb_xgb', 'hist_gb', 'knn', 'knn_faiss', 'linear_svm', 'linear_svm_sgd', 'logreg',
     'logreg_sgd', 'mlp', 'rbf_svm', 'rbf_svm_approx']
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

