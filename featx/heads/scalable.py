"""Linear heads that train by blocks: what scales to a million rows and past.

:class:`SGDHead` standardises (``StandardScaler.partial_fit``, one pass), optionally maps the
rows through an RBF kernel approximation (:class:`~featx.heads.kernel_map.RBFMap`, fitted on a
seeded sample),
and trains scikit-learn's ``SGDClassifier`` by ``partial_fit`` over blocks, several epochs in
a new seeded order each, stopping when the held-out score stops improving (the best epoch is
kept). The rows come from a :class:`~featx.heads.rows.BlockSource`: an array in memory, or a
cache group read by blocks, so memory is one block however many rows there are.

It is an ordinary scikit-learn classifier as well: ``fit(X, y)`` on arrays (holding out
``validation_fraction`` of them, stratified, for early stopping), ``predict``,
``decision_function``, ``predict_proba`` for the logistic loss, ``clone``, pickling and skops.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from featx.exceptions import FeatxError
from featx.heads.rows import DEFAULT_BLOCK_ROWS, ArrayBlocks, BlockSource

__all__ = ["SGDHead", "BudgetExceeded", "fit_scaler"]


class BudgetExceeded(FeatxError):
    """A head's time ran out before it had trained on anything."""


def fit_scaler(source: BlockSource, deadline: float | None = None) -> Any:
    """A ``StandardScaler`` fitted by ``partial_fit`` over one pass of ``source``."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for X, _ in source.blocks(seed=None):
        scaler.partial_fit(X)
        if deadline is not None and time.monotonic() > deadline:
            raise BudgetExceeded(
                "the time budget ran out while standardising (one pass over the rows); "
                "give a larger budget or fewer heads."
            )
    if not hasattr(scaler, "mean_"):
        raise FeatxError("no rows to train on: the source handed out no block.")
    return scaler


class SGDHead(ClassifierMixin, BaseEstimator):
    """Standardise, optionally approximate an RBF kernel, then an SGD linear classifier by blocks.

    Parameters
    ----------
    loss : {"log_loss", "hinge", "modified_huber"}, default="log_loss"
        ``"log_loss"``: logistic regression (with ``predict_proba``); ``"hinge"``: a linear SVM.
    alpha : float, default=1e-4
        L2 regularisation strength (``SGDClassifier``'s).
    kernel : {None, "rbf"}, default=None
        ``"rbf"``: the rows are mapped by :class:`~featx.heads.kernel_map.RBFMap` (a float32
        Nystroem map on the top principal axes, its landmarks and axes from a seeded sample
        of the standardised rows) first: the scalable stand-in for ``SVC(kernel="rbf")``.
    n_components : int, default=1024
        Landmarks of the kernel map (with ``kernel="rbf"``).
    gamma : float or None, default=None
        The RBF kernel's gamma; ``None``: ``1 / n_features`` (scikit-learn's ``"scale"`` on
        standardised rows).
    max_epochs : int, default=8
        Passes over the rows at most.
    n_iter_no_change : int, default=2
        Stop after this many epochs without a held-out improvement of more than ``tol``.
    tol : float, default=1e-3
    validation_fraction : float, default=0.1
        ``fit(X, y)`` holds out this fraction (stratified) for early stopping; ``0`` trains
        ``max_epochs`` on every row. :meth:`fit_stream` takes its held-out rows as ``valid``.
    block_rows : int, default=8192
        Rows per block.
    n_jobs : int or None, default=None
        Threads for the one-versus-rest classes.
    random_state : int, default=0

    Attributes
    ----------
    classes_, n_features_in_
    scaler_ : StandardScaler
    kernel_ : RBFMap or None
    clf_ : SGDClassifier
        The best epoch's classifier.
    n_epochs_ : int
        Epochs run.
    valid_scores_ : list of float
        Held-out accuracy after each epoch (empty without held-out rows).
    stopped_ : str
        Why training ended: ``"converged"``, ``"max_epochs"`` or ``"budget"``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 100)
    >>> X = rng.normal(size=(300, 8)) + 2 * np.eye(3, 8)[y]
    >>> head = SGDHead(max_epochs=5).fit(X, y)
    >>> head.score(X, y) > 0.85, head.predict_proba(X[:2]).shape
    (True, (2, 3))
    """

    def __init__(
        self,
        loss: str = "log_loss",
        *,
        alpha: float = 1e-4,
        kernel: str | None = None,
        n_components: int = 1024,
        gamma: float | None = None,
        max_epochs: int = 8,
        n_iter_no_change: int = 2,
        tol: float = 1e-3,
        validation_fraction: float = 0.1,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        n_jobs: int | None = None,
        random_state: int = 0,
    ):
        self.loss = loss
        self.alpha = alpha
        self.kernel = kernel
        self.n_components = n_components
        self.gamma = gamma
        self.max_epochs = max_epochs
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.validation_fraction = validation_fraction
        self.block_rows = block_rows
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> SGDHead:
        """Train on arrays (a held-out ``validation_fraction`` stops the epochs)."""
        from sklearn.utils.validation import check_X_y

        X, y = check_X_y(X, y, dtype=np.float32)
        if self.validation_fraction and len(y) >= 20:
            from sklearn.model_selection import train_test_split

            classes, counts = np.unique(y, return_counts=True)
            n_valid = max(len(classes), int(round(self.validation_fraction * len(y))))
            if counts.min() >= 2 and n_valid < len(y) - len(classes):
                fit_rows, valid_rows = train_test_split(
                    np.arange(len(y)), test_size=n_valid, stratify=y,
                    random_state=self.random_state)
                return self.fit_stream(
                    ArrayBlocks(X[fit_rows], y[fit_rows], block_rows=self.block_rows),
                    valid=ArrayBlocks(X[valid_rows], y[valid_rows], block_rows=self.block_rows),
                    classes=np.unique(y))
        return self.fit_stream(ArrayBlocks(X, y, block_rows=self.block_rows))

    def fit_stream(
        self,
        source: BlockSource,
        *,
        valid: BlockSource | None = None,
        classes: np.ndarray | None = None,
        scaler: Any = None,
        deadline: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> SGDHead:
        """Train on rows that come by blocks.

        Parameters
        ----------
        source : BlockSource
            The training rows (read once to standardise, once per epoch).
        valid : BlockSource, optional
            Held-out rows scored after each epoch: the best epoch is kept, and training stops
            after ``n_iter_no_change`` epochs without improvement.
        classes : array, optional
            Every class (default: ``source.classes``).
        scaler : StandardScaler, optional
            Already fitted on ``source`` (a search shares one; skips the first pass).
        deadline : float, optional
            A ``time.monotonic()`` time: training stops at the first block past it (keeping
            the best epoch so far, or the current one during the first).
        progress : callable, optional
            Called with the number of rows of each block trained on.

        Raises
        ------
        BudgetExceeded
            If the deadline passes before one block was trained on.
        """
        from sklearn.linear_model import SGDClassifier

        self._check_params()
        classes = np.asarray(source.classes if classes is None else classes)
        if len(classes) < 2:
            raise FeatxError(f"expected at least 2 classes; got {classes.tolist()}.")
        self.classes_ = classes
        self.n_features_in_ = source.width
        self.scaler_ = scaler if scaler is not None else fit_scaler(source, deadline)
        self.kernel_ = self._fit_kernel(source)
        if deadline is not None and time.monotonic() > deadline:
            raise BudgetExceeded(
                "the time budget ran out while fitting the kernel map, before any training; "
                "give a larger budget or fewer heads."
            )
        clf = SGDClassifier(loss=self.loss, alpha=self.alpha, average=True,
                            n_jobs=self.n_jobs, random_state=self.random_state)
        best, best_score, stale = None, -np.inf, 0
        self.valid_scores_: list[float] = []
        self.stopped_ = "max_epochs"
        self.n_epochs_ = 0
        trained = False
        for epoch in range(self.max_epochs):
            for X, y in source.blocks(seed=self.random_state + epoch):
                if deadline is not None and time.monotonic() > deadline and trained:
                    self.stopped_ = "budget"
                    break
                clf.partial_fit(self._features(X), y, classes=classes)
                trained = True
                if progress is not None:
                    progress(len(y))
            if not trained:
                raise BudgetExceeded(
                    "the time budget ran out before the head trained on one block; give a "
                    "larger budget or fewer heads."
                )
            self.n_epochs_ = epoch + 1
            if valid is None:
                best = clf
                if self.stopped_ == "budget":
                    break
                continue
            self.clf_ = clf
            score = self._accuracy(valid)
            self.valid_scores_.append(score)
            if best is None or score > best_score + self.tol:
                best, best_score, stale = copy.deepcopy(clf), score, 0
            else:
                stale += 1
            if self.stopped_ == "budget":
                break
            if stale >= self.n_iter_no_change:
                self.stopped_ = "converged"
                break
        self.clf_ = best if best is not None else clf
        return self

    def _check_params(self) -> None:
        if self.loss not in ("log_loss", "hinge", "modified_huber"):
            raise FeatxError(f"loss={self.loss!r} is not valid; expected 'log_loss', 'hinge' or "
                             "'modified_huber'.")
        if self.kernel not in (None, "rbf"):
            raise FeatxError(f"kernel={self.kernel!r} is not valid; expected None or 'rbf'.")
        if int(self.max_epochs) < 1 or int(self.block_rows) < 1:
            raise FeatxError(f"max_epochs and block_rows must be at least 1; got "
                             f"{self.max_epochs} and {self.block_rows}.")

    def _fit_kernel(self, source: BlockSource) -> Any:
        if self.kernel is None:
            return None
        from featx.heads.kernel_map import RBFMap

        n = max(8192, 4 * int(self.n_components))
        sample, _ = source.sample(n, seed=self.random_state)
        rbf = RBFMap(n_components=min(len(sample), int(self.n_components)), gamma=self.gamma,
                     random_state=self.random_state)
        return rbf.fit(self.scaler_.transform(sample))

    def _features(self, X: np.ndarray) -> np.ndarray:
        Z = self.scaler_.transform(np.asarray(X, dtype=np.float32))
        if self.kernel_ is not None:
            Z = self.kernel_.transform(Z)
        return np.asarray(Z, dtype=np.float32)

    def _accuracy(self, source: BlockSource) -> float:
        right = total = 0
        for X, y in source.blocks(seed=None):
            right += int((self.predict(X) == y).sum())
            total += len(y)
        return right / max(1, total)

    def _blocks_of(self, X: Any) -> Any:
        from sklearn.utils.validation import check_array

        check_is_fitted(self, "clf_")
        X = check_array(X, dtype=np.float32)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input.")
        step = int(self.block_rows)
        return (X[lo:lo + step] for lo in range(0, len(X), step))

    def decision_function(self, X: Any) -> np.ndarray:
        """The classifier's scores, computed a block at a time."""
        parts = [self.clf_.decision_function(self._features(b)) for b in self._blocks_of(X)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float64)

    def predict(self, X: Any) -> np.ndarray:
        parts = [self.clf_.predict(self._features(b)) for b in self._blocks_of(X)]
        return np.concatenate(parts) if parts else self.classes_[:0]

    def _has_proba(self) -> bool:
        return self.loss in ("log_loss", "modified_huber")

    @available_if(_has_proba)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (``loss="log_loss"`` or ``"modified_huber"``)."""
        parts = [self.clf_.predict_proba(self._features(b)) for b in self._blocks_of(X)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)))
