"""Choosing an adapter and its settings without target labels.

A search over adapters (:mod:`featx.adapt.adapters`) has the source's labels and the target's rows,
not the target's labels. This module holds what such a search needs:

- :class:`TargetData`, the target rows wrapped so that a search passes them whole. With
  scikit-learn's metadata routing off (its default), a search slices every fit parameter whose
  length equals the number of training rows, along with the rows; an ``X_target`` that happens
  to have as many rows as ``X`` would be cut into folds too::

      search.fit(X_source, y_source, X_target=TargetData(X_target))

- :class:`ReverseValidationScorer` (Zhong et al. 2010) labels the target with the candidate,
  trains the same candidate back from the target onto the source validation fold, and scores
  that reverse model's accuracy on the fold's true labels.
- :class:`PredictionEntropyScorer` scores the mean entropy of the target's predicted
  probabilities (lower is better, so the score is its negative).

Both scorers are ``scoring=`` callables for a search. Everything here is exported by
:mod:`featx.adapt.adapters`, the place to import it from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import has_fit_parameter

from featx.exceptions import AdaptationError

__all__ = ["TargetData", "ReverseValidationScorer", "PredictionEntropyScorer"]


class TargetData:
    """Unlabelled target-domain rows, which a cross-validated search passes on whole.

    scikit-learn's searches slice any fit parameter that is array-like and as long as ``X``. This
    wrapper is not array-like (no ``len``, ``shape`` or ``__array__``), so ``X_target`` reaches
    every fold's fit complete, whatever its length.

    Parameters
    ----------
    X : array-like of shape (n_target, n_features)
        The target rows (embeddings from the same backbone as the source's).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.adapt import TargetData
    >>> TargetData(np.zeros((3, 2)))
    TargetData(3 rows)
    """

    def __init__(self, X: Any):
        self.X = X

    def __repr__(self) -> str:
        rows = getattr(self.X, "shape", (None,))[0]
        return f"TargetData({rows} rows)"



def _refuse_nonfinite(X: np.ndarray, what: str) -> None:
    finite = np.isfinite(X).all(axis=1)
    if not finite.all():
        raise AdaptationError(
            f"{what} has {int((~finite).sum())} of {len(X)} rows with NaN or inf values (images "
            "that failed to embed with on_error='nan'?); expected finite embeddings. Leave those "
            "rows out first: X[np.isfinite(X).all(axis=1)]."
        )



def _target_rows(X_target: Any) -> np.ndarray:
    if isinstance(X_target, TargetData):
        X_target = X_target.X
    Xt = np.asarray(X_target)
    if Xt.ndim != 2 or Xt.dtype.kind not in "fiu" or len(Xt) < 2:
        raise AdaptationError(
            f"X_target must be a 2-D numeric array of at least 2 target embeddings; got "
            f"{Xt.dtype} of shape {Xt.shape}."
        )
    _refuse_nonfinite(Xt.astype(np.float64, copy=False), "X_target")
    return Xt


class ReverseValidationScorer:
    """Reverse validation: how well the target, labelled by the candidate, teaches the source.

    Called by a search as ``scorer(estimator, X_val, y_val)`` with a fitted candidate and a
    source validation fold: the candidate labels the target rows; a clone of it is fitted on
    the target with those labels (adapting to ``X_val`` as its target when it is an adapter,
    that is when its ``fit`` takes ``X_target``); the score is that reverse model's accuracy on
    ``X_val``'s true labels (Zhong et al., ECML 2010). It uses no target label, needs only
    ``predict``, and is an accuracy, so it compares heads of any kind. Higher is better.

    Parameters
    ----------
    X_target : array-like of shape (n_target, n_features) or TargetData
        The unlabelled target embeddings.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import GridSearchCV
    >>> from featx.adapt import CORAL, ReverseValidationScorer, TargetData
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 60)
    >>> Xs = rng.normal(size=(120, 3)) + 2 * y[:, None]
    >>> Xt = (rng.normal(size=(120, 3)) + 2 * y[:, None]) * [0.5, 0.5, 2] + 3
    >>> search = GridSearchCV(CORAL(), {"align_mean": [False, True]}, cv=3,
    ...                       scoring=ReverseValidationScorer(Xt))
    >>> search.fit(Xs, y, X_target=TargetData(Xt)).best_params_
    {'align_mean': True}
    >>> search.best_estimator_.score(Xt, y) > 0.9
    True
    """

    def __init__(self, X_target: Any):
        self.X_target = X_target

    def __call__(self, estimator: Any, X: Any, y: Any = None) -> float:
        if y is None:
            raise AdaptationError(
                "reverse validation scores a source validation fold against its labels; got "
                "y=None. Use it as a search's scoring=, which passes the fold's labels."
            )
        Xt = _target_rows(self.X_target)
        y = np.asarray(y)
        pseudo = np.asarray(estimator.predict(Xt))
        if len(np.unique(pseudo)) < 2:
            # One class for the whole target: the reverse model can only say that class.
            return float(np.mean(y == pseudo[0]))
        reverse = clone(estimator)
        if has_fit_parameter(reverse, "X_target"):  # an adapter: X_val is its target now
            reverse.fit(Xt, pseudo, X_target=TargetData(np.asarray(X)))
        else:
            reverse.fit(Xt, pseudo)
        return float(np.mean(np.asarray(reverse.predict(X)) == y))

    def __repr__(self) -> str:
        return "ReverseValidationScorer()"


class PredictionEntropyScorer:
    """Minus the mean entropy of the candidate's predicted probabilities on the target.

    A confident head on the target (low entropy) scores high. It needs ``predict_proba`` and
    favours over-confident candidates (little regularisation), so compare candidates of one head
    with it; :class:`ReverseValidationScorer` compares heads of any kind. Higher is better.

    Parameters
    ----------
    X_target : array-like of shape (n_target, n_features) or TargetData
        The unlabelled target embeddings.

    Examples
    --------
    >>> import numpy as np
    >>> from featx.adapt import CORAL, PredictionEntropyScorer
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> X = rng.normal(size=(100, 2)) + 3 * y[:, None]
    >>> score = PredictionEntropyScorer(X)(CORAL().fit(X, y), X, y)
    >>> -np.log(2) < score <= 0
    True
    """

    def __init__(self, X_target: Any):
        self.X_target = X_target

    def __call__(self, estimator: Any, X: Any = None, y: Any = None) -> float:
        if not hasattr(estimator, "predict_proba"):
            raise AdaptationError(
                f"prediction entropy needs class probabilities, but {type(estimator).__name__} "
                "has no predict_proba; use ReverseValidationScorer, or a head with "
                "probabilities (logreg, knn, mlp, hist_gb)."
            )
        proba = np.clip(np.asarray(estimator.predict_proba(_target_rows(self.X_target))),
                        1e-12, 1.0)
        return float(np.mean(np.sum(proba * np.log(proba), axis=1)))

    def __repr__(self) -> str:
        return "PredictionEntropyScorer()"
