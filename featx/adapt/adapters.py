"""Domain adaptation on embeddings: the adapters, CORAL and subspace alignment.

A head trained on one domain's embeddings (a scanner, a camera, a season) loses accuracy on
another's. On frozen embeddings, aligning the two domains' feature statistics is cheap and often
recovers much of the loss. Both adapters here are scikit-learn meta-estimators that wrap a head:

- :class:`CORAL` (Sun, Feng & Saenko 2016) recolours the source features to the target's
  covariance, then fits the head on them; target rows are predicted as they are.
- :class:`SubspaceAlignment` (Fernando et al. 2013) projects each domain onto its own principal
  subspace and maps the source subspace onto the target's, then fits the head there.

Both take the unlabelled target rows at fit time: ``fit(X_source, y_source, X_target=X_target)``,
then ``predict``/``predict_proba``/``score`` on target rows. :func:`adapted_head` wraps a head
and its grid in one of them by name (:data:`ADAPTERS`).

Choosing among adapters without target labels (:class:`TargetData`, which a search passes whole,
and the scorers :class:`ReverseValidationScorer` and :class:`PredictionEntropyScorer`) is
:mod:`featx.adapt.selection`'s; :mod:`featx.adapt` exports both.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, _fit_context, clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from featx.adapt.selection import (
    TargetData,
    _refuse_nonfinite,
)
from featx.exceptions import AdaptationError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CORAL",
    "SubspaceAlignment",
    "coral_matrix",
    "adapted_head",
    "ADAPTERS",
]


def _default_head() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def _estimator_has(attr: str) -> Any:
    def check(self: Any) -> bool:
        est = self.estimator_ if hasattr(self, "estimator_") else self.estimator
        return hasattr(_default_head() if est is None else est, attr)

    return check


class _Adapter(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """What both adapters share: validation, the target, fitting the head, delegating to it."""

    _min_target = 2
    _method = "the adapter"

    def _validate_source(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, ensure_all_finite=False, dtype=np.float64,
                             ensure_min_samples=2)
        _refuse_nonfinite(X, "X (the source)")
        return X, y

    def _validate_target(self, X_target: Any) -> np.ndarray | None:
        if X_target is None:
            return None
        if isinstance(X_target, TargetData):
            X_target = X_target.X
        try:
            Xt = check_array(X_target, ensure_all_finite=False, dtype=np.float64,
                             ensure_min_samples=0, ensure_min_features=0, input_name="X_target")
        except ValueError as exc:
            raise AdaptationError(
                f"X_target must be a 2-D numeric array of target embeddings (n_target, "
                f"{self.n_features_in_}); {exc}"
            ) from None
        if Xt.shape[1] != self.n_features_in_:
            raise AdaptationError(
                f"X_target has {Xt.shape[1]} features per row, but X (the source) has "
                f"{self.n_features_in_}; expected embeddings of the same width. Embed both "
                "domains with the same backbone, layer and pooling."
            )
        if len(Xt) < self._min_target:
            raise AdaptationError(
                f"X_target has {len(Xt)} row{'' if len(Xt) == 1 else 's'}; {self._method} needs "
                f"at least {self._min_target} target rows to estimate a covariance. Give it more "
                "unlabelled target images."
            )
        _refuse_nonfinite(Xt, "X_target")
        return Xt

    def _validate_predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite=False, dtype=np.float64)
        _refuse_nonfinite(X, "X")
        return X

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X: Any, y: Any, X_target: Any = None) -> Self:
        """Adapt the source ``X`` to ``X_target`` and fit the head on the adapted rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Source embeddings.
        y : array-like of shape (n_samples,)
            Source labels.
        X_target : array-like of shape (n_target, n_features), TargetData or None
            Unlabelled target embeddings (at least 2 rows). ``None``: nothing to adapt to
            (``n_target_`` is 0; the class says what is fitted then).

        Returns
        -------
        self
        """
        X, y = self._validate_source(X, y)
        Xt = self._validate_target(X_target)
        adapted = self._adapt_source(X, Xt)
        self.n_target_ = 0 if Xt is None else len(Xt)
        self.estimator_ = clone(_default_head() if self.estimator is None else self.estimator)
        self.estimator_.fit(adapted, y)
        return self

    def _adapt_source(self, X: np.ndarray, Xt: np.ndarray | None) -> np.ndarray:
        """The source rows the head is fitted on; sets what :meth:`_map_target` needs."""
        raise NotImplementedError

    def _map_target(self, X: np.ndarray) -> np.ndarray:
        """Rows to predict, as the head sees them."""
        return X

    def _call_head(self, method: str, X: Any) -> np.ndarray:
        """The fitted head's ``method`` on target rows ``X``, mapped as the head sees them."""
        X = self._map_target(self._validate_predict(X))
        return getattr(self.estimator_, method)(X)

    @property
    def classes_(self) -> np.ndarray:
        """The head's classes."""
        return self.estimator_.classes_

    def predict(self, X: Any) -> np.ndarray:
        """Predict the classes of target rows ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,)
        """
        return self._call_head("predict", X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of target rows ``X``, columns in the order of ``classes_``."""
        return self._call_head("predict_proba", X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities of target rows ``X``."""
        return self._call_head("predict_log_proba", X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """The head's decision function on target rows ``X``."""
        return self._call_head("decision_function", X)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


# ---- CORAL --------------------------------------------------------------------------------------


def _covariance(X: np.ndarray, reg: float, shrinkage: Any) -> np.ndarray:
    from sklearn.covariance import empirical_covariance, ledoit_wolf, shrunk_covariance

    if shrinkage == "ledoit_wolf":
        cov = ledoit_wolf(X)[0]
    else:
        cov = empirical_covariance(X)
        if shrinkage:
            cov = shrunk_covariance(cov, shrinkage=float(shrinkage))
    scale = float(np.trace(cov)) / cov.shape[0]
    if reg > 0:
        cov = cov + (reg * (scale if scale > 0 else 1.0)) * np.eye(cov.shape[0])
    return cov


def _matrix_power(cov: np.ndarray, power: float, what: str) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    floor = max(float(values.max()), 0.0) * cov.shape[0] * np.finfo(np.float64).eps
    if values.min() <= floor:
        rank = int((values > floor).sum())
        raise AdaptationError(
            f"the {what} covariance is singular (rank {rank} of {cov.shape[0]}): CORAL cannot "
            "whiten it without regularisation. Pass reg > 0 (e.g. reg=1.0) or "
            "shrinkage='ledoit_wolf'."
        )
    return (vectors * values**power) @ vectors.T


def coral_matrix(
    X_source: Any, X_target: Any, *, reg: float = 1.0, shrinkage: Any = None
) -> np.ndarray:
    """The CORAL map ``A = C_s^(-1/2) C_t^(1/2)``: ``X_source @ A`` has the target's covariance.

    Parameters
    ----------
    X_source, X_target : array-like of shape (n, n_features)
    reg : float, default=1.0
        Added to each covariance's diagonal as a multiple of its mean variance (``reg=1`` on
        standardised features is the paper's ``+ I``).
    shrinkage : {"ledoit_wolf"}, float in [0, 1] or None, default=None
        Shrink each covariance towards a scaled identity before ``reg`` is added: Ledoit-Wolf's
        estimate, or this fixed amount (:func:`sklearn.covariance.shrunk_covariance`).

    Returns
    -------
    A : ndarray of shape (n_features, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> from featx.adapt import coral_matrix
    >>> rng = np.random.default_rng(0)
    >>> Xs, Xt = rng.normal(size=(500, 3)), rng.normal(size=(500, 3)) * [1, 2, 3]
    >>> A = coral_matrix(Xs, Xt, reg=0.0)
    >>> np.allclose(np.cov(Xs @ A, rowvar=False), np.cov(Xt, rowvar=False))
    True
    """
    Xs = np.asarray(X_source, dtype=np.float64)
    Xt = np.asarray(X_target, dtype=np.float64)
    whiten = _matrix_power(_covariance(Xs, reg, shrinkage), -0.5, "source")
    recolour = _matrix_power(_covariance(Xt, reg, shrinkage), 0.5, "target")
    return whiten @ recolour


class CORAL(_Adapter):
    """CORrelation ALignment: fit a head on source features recoloured to the target's covariance.

    The source rows are whitened with their own regularised covariance and recoloured with the
    target's (Sun, Feng & Saenko, "Return of Frustratingly Easy Domain Adaptation", AAAI 2016);
    the head is fitted on them. Target rows are predicted as they are.

    Parameters
    ----------
    estimator : classifier, default=None
        The head (cloned at fit). ``None``: standardise + ``LogisticRegression(max_iter=1000)``.
    reg : float, default=1.0
        Added to both covariances' diagonals as a multiple of their mean variance, so that
        ``reg=1.0`` on standardised features is the paper's ``+ I`` and the value does not depend
        on the embeddings' scale. Larger: a gentler recolouring.
    shrinkage : {"ledoit_wolf"}, float in [0, 1] or None, default=None
        Shrink both covariances towards a scaled identity first: Ledoit-Wolf's estimate (then
        ``reg`` may be 0), or this fixed amount.
    align_mean : bool, default=True
        Also move the source's mean onto the target's (``(X_s - mu_s) A + mu_t``). The paper
        aligns second-order statistics only (``False``); a head that standardises its input with
        the source's statistics sees a shifted target unless the means are aligned too.

    Attributes
    ----------
    estimator_ : classifier
        The head, fitted on the recoloured source.
    classes_ : ndarray
    n_features_in_ : int
    n_target_ : int
        Target rows adapted to; 0 when fitted without ``X_target`` (then nothing is recoloured and
        the head is fitted on the source as it is).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.adapt import CORAL
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 100)
    >>> Xs = rng.normal(size=(200, 4)) + 2 * y[:, None]
    >>> Xt = (rng.normal(size=(200, 4)) + 2 * y[:, None]) * [0.5, 0.5, 2, 2] + 3  # rescaled, moved
    >>> CORAL().fit(Xs, y).score(Xt, y)  # source only: every target row looks like class 1
    0.5
    >>> CORAL().fit(Xs, y, X_target=Xt).score(Xt, y) > 0.9
    True
    """

    _method = "CORAL"
    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "reg": [Interval(Real, 0, None, closed="left")],
        "shrinkage": [StrOptions({"ledoit_wolf"}), Interval(Real, 0, 1, closed="both"), None],
        "align_mean": ["boolean"],
    }

    def __init__(
        self,
        estimator: Any = None,
        *,
        reg: float = 1.0,
        shrinkage: Any = None,
        align_mean: bool = True,
    ):
        self.estimator = estimator
        self.reg = reg
        self.shrinkage = shrinkage
        self.align_mean = align_mean

    def _adapt_source(self, X: np.ndarray, Xt: np.ndarray | None) -> np.ndarray:
        """Recolour ``X`` to ``Xt``'s covariance (and mean); no target: ``X`` as it is."""
        if Xt is None:
            return X
        A = coral_matrix(X, Xt, reg=self.reg, shrinkage=self.shrinkage)
        if self.align_mean:
            return (X - X.mean(axis=0)) @ A + Xt.mean(axis=0)
        return X @ A


# ---- subspace alignment -------------------------------------------------------------------------


def _subspace(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the top ``k`` principal directions (rows) of ``X``."""
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    # Fix each direction's sign (largest coordinate positive): the same data, the same basis.
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1
    return mean, (vt * signs[:, None])[:k]


class SubspaceAlignment(_Adapter):
    """Subspace alignment: map the source's principal subspace onto the target's, fit there.

    Each domain is centred and projected onto its own top ``n_components`` principal directions
    (``P_s``, ``P_t``); the source projection is aligned with ``M = P_s^T P_t`` (Fernando et al.,
    "Unsupervised Visual Domain Adaptation Using Subspace Alignment", ICCV 2013). The head is
    fitted on ``(X_s - mu_s) P_s M`` and predicts target rows as ``(X - mu_t) P_t``.

    Parameters
    ----------
    estimator : classifier, default=None
        The head (cloned at fit). ``None``: standardise + ``LogisticRegression(max_iter=1000)``.
    n_components : int, default=64
        The subspaces' dimension; at most ``min(n_source, n_target, n_features)`` are used
        (``n_components_`` says how many).

    Attributes
    ----------
    estimator_ : classifier
        The head, fitted on the aligned source.
    components_ : ndarray of shape (n_components_, n_features)
        The target's principal directions.
    mean_ : ndarray of shape (n_features,)
        The target's mean.
    n_components_ : int
    classes_ : ndarray
    n_features_in_ : int
    n_target_ : int
        Target rows adapted to; 0 when fitted without ``X_target`` (the source's own subspace is
        then used for both).

    Examples
    --------
    >>> import numpy as np
    >>> from featx.adapt import SubspaceAlignment
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 100)
    >>> Xs = rng.normal(size=(200, 4)) + 2 * y[:, None]
    >>> Xt = (rng.normal(size=(200, 4)) + 2 * y[:, None]) * [0.5, 0.5, 2, 2] + 3
    >>> sa = SubspaceAlignment(n_components=2).fit(Xs, y, X_target=Xt)
    >>> sa.components_.shape, sa.score(Xt, y) > 0.9
    ((2, 4), True)
    """

    _method = "subspace alignment"
    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict"]), None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, estimator: Any = None, *, n_components: int = 64):
        self.estimator = estimator
        self.n_components = n_components

    def _adapt_source(self, X: np.ndarray, Xt: np.ndarray | None) -> np.ndarray:
        """Project ``X`` onto its subspace aligned with ``Xt``'s; keep the target's for predict."""
        k = min(self.n_components, X.shape[1], len(X), len(X) if Xt is None else len(Xt))
        mean_s, Ps = _subspace(X, k)
        if Xt is None:
            self.mean_, self.components_ = mean_s, Ps
        else:
            self.mean_, self.components_ = _subspace(Xt, k)
        self.n_components_ = k
        return (X - mean_s) @ Ps.T @ (Ps @ self.components_.T)

    def _map_target(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.components_.T


# ---- adapting tuned heads -----------------------------------------------------------------------

#: The adapters :func:`featx.tune_heads` wraps heads in, by name, with their default grids.
ADAPTERS: dict[str, tuple[type[_Adapter], dict[str, list[Any]]]] = {
    "coral": (CORAL, {"reg": [1.0, 10.0]}),
    "subspace": (SubspaceAlignment, {"n_components": [16, 64]}),
}


def adapted_head(
    head: Any,
    grid: dict[str, list[Any]],
    method: str = "coral",
    adapter_grid: dict[str, list[Any]] | None = None,
) -> tuple[Any, dict[str, list[Any]]]:
    """Wrap a head and its search grid in an adapter: the head's keys get ``estimator__``.

    Parameters
    ----------
    head : classifier
    grid : dict
        The head's search grid (``{"clf__C": [...]}``).
    method : {"coral", "subspace"}, default="coral"
    adapter_grid : dict or None
        The adapter's own grid; ``None``: the default of :data:`ADAPTERS`.

    Returns
    -------
    (adapter, grid)

    Examples
    --------
    >>> from featx.adapt import adapted_head
    >>> from featx.heads import make_head
    >>> adapter, grid = adapted_head(make_head("logreg"), {"clf__C": [0.1, 1.0]})
    >>> type(adapter).__name__, grid
    ('CORAL', {'estimator__clf__C': [0.1, 1.0], 'reg': [1.0, 10.0]})
    """
    key = str(method).strip().lower()
    if key not in ADAPTERS:
        raise AdaptationError(
            f"adapt={method!r} is not known; expected one of {', '.join(sorted(ADAPTERS))}."
        )
    cls, default = ADAPTERS[key]
    out = {f"estimator__{k}": list(v) for k, v in grid.items()}
    out.update({k: list(v) for k, v in (default if adapter_grid is None else adapter_grid).items()})
    return cls(head), out
