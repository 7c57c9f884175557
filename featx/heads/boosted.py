"""Gradient boosting that streams: XGBoost's external memory over the blocks, the ``hist_gb``
preset's maths on every row.

:class:`BoostedHead` hands the rows to XGBoost a block at a time (an ``xgboost.DataIter``):
XGBoost sketches each feature's quantiles and keeps the rows as their bin numbers in pages on
disk (``ExtMemQuantileDMatrix``, a folder of its own in the temporary folder or ``cache_dir``,
removed after the fit), reading them back a page at a time every boosting round. The float32
matrix is never in memory; what is, is a page, the gradients (8 bytes a row and class) and the
trees. A held-out block stops the rounds (``early_stopping_rounds``), a deadline stops them too
(keeping the trees so far). The fitted model is XGBoost's own bytes (UBJSON), an array: pickled
and saved with skops as data.

Measured: ``python -m benchmarks.heads_scale --parts accuracy`` (against ``hist_gb`` on the
same rows in memory) and the README's table.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.exceptions import FeatxError
from featx.heads.rows import (
    DEFAULT_BLOCK_ROWS,
    ArrayBlocks,
    BlockSource,
    all_rows,
    class_codes,
)
from featx.heads.scalable import BudgetExceeded

__all__ = ["BoostedHead", "xgboost_module"]


def xgboost_module() -> Any:
    """xgboost (3.0 or later: ``ExtMemQuantileDMatrix``), or an error that names the extra."""
    try:
        import xgboost
    except ImportError as exc:
        raise ImportError(
            f"the streaming gradient-boosting head (gb_xgb) needs XGBoost, which could not be "
            f"imported ({exc}). Install it: pip install 'featx[boost]' (or xgboost>=3.0)"
        ) from None
    if not hasattr(xgboost, "ExtMemQuantileDMatrix"):
        raise ImportError(f"the streaming gradient-boosting head (gb_xgb) needs XGBoost 3.0 or "
                          f"later (external memory); this is {xgboost.__version__}. Upgrade "
                          "it: pip install -U 'featx[boost]'")
    return xgboost


class BoostedHead(ClassifierMixin, BaseEstimator):
    """Histogram gradient boosting (XGBoost) trained from blocks kept on disk as bin numbers.

    Parameters
    ----------
    n_estimators : int, default=200
        The most boosting rounds (one tree per class and round).
    learning_rate : float, default=0.1
    max_leaf_nodes : int, default=31
        Leaves per tree, grown best-first (XGBoost's ``lossguide``), as ``hist_gb``'s trees.
    max_bin : int, default=256
        Quantile bins per feature (XGBoost's default; ``hist_gb`` has 255).
    l2_regularization : float, default=0.0
    early_stopping_rounds : int, default=10
        Rounds without a better log-loss on the held-out rows before stopping (the best
        round's trees are kept). Without held-out rows every round runs.
    validation_fraction : float, default=0.1
        :meth:`fit` on arrays holds out this stratified share for early stopping (0: none).
    block_rows : int, default=8192
        Rows per block handed to XGBoost and per prediction.
    cache_dir : str or None, default=None
        Where XGBoost's pages go during a fit (a folder of its own, removed afterwards);
        ``None``: the system's temporary folder. A million rows of width 1,024 take about 1 GB.
    n_jobs : int or None, default=None
        Threads; ``None``: the cores this process may use.
    random_state : int, default=0

    Attributes
    ----------
    classes_ : ndarray
    n_features_in_ : int
    model_ : ndarray of uint8
        The booster, as XGBoost's UBJSON bytes.
    n_iter_ : int
        Boosting rounds kept.
    stopped_by_ : {"rounds", "early_stopping", "deadline"}

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 100)
    >>> X = rng.normal(size=(200, 4)) + 2 * y[:, None]
    >>> head = BoostedHead(n_estimators=20).fit(X, y)
    >>> round(head.score(X, y), 2) >= 0.9
    True
    """

    _parameter_constraints: dict = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_leaf_nodes": [Interval(Integral, 2, None, closed="left")],
        "max_bin": [Interval(Integral, 2, 256, closed="both")],
        "l2_regularization": [Interval(Real, 0, None, closed="left")],
        "early_stopping_rounds": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "block_rows": [Interval(Integral, 1, None, closed="left")],
        "cache_dir": [str, os.PathLike, None],
        "n_jobs": [Integral, None],
        "random_state": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, n_estimators: int = 200, *, learning_rate: float = 0.1,
                 max_leaf_nodes: int = 31, max_bin: int = 256, l2_regularization: float = 0.0,
                 early_stopping_rounds: int = 10, validation_fraction: float = 0.1,
                 block_rows: int = DEFAULT_BLOCK_ROWS,
                 cache_dir: str | os.PathLike[str] | None = None, n_jobs: int | None = None,
                 random_state: int = 0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.max_bin = max_bin
        self.l2_regularization = l2_regularization
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.block_rows = block_rows
        self.cache_dir = cache_dir
        self.n_jobs = n_jobs
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> BoostedHead:
        """Train on arrays (a held-out ``validation_fraction`` stops the rounds)."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, counts = np.unique(y, return_counts=True)
        n_valid = max(len(classes), int(round(self.validation_fraction * len(y))))
        if self.validation_fraction and counts.min() >= 2 and n_valid < len(y) - len(classes):
            from sklearn.model_selection import train_test_split

            fit_rows, valid_rows = train_test_split(np.arange(len(y)), test_size=n_valid,
                                                    stratify=y, random_state=self.random_state)
            return self.fit_stream(
                ArrayBlocks(X, y, rows=fit_rows, block_rows=self.block_rows),
                valid=ArrayBlocks(X, y, rows=valid_rows, block_rows=self.block_rows),
                classes=classes)
        return self.fit_stream(ArrayBlocks(X, y, block_rows=self.block_rows), classes=classes)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_stream(self, source: BlockSource, *, valid: BlockSource | None = None,
                   classes: np.ndarray | None = None, deadline: float | None = None,
                   progress: Callable[[int], Any] | None = None) -> BoostedHead:
        """Train on rows that come by blocks.

        Parameters
        ----------
        source : BlockSource
            The training rows: read once (XGBoost's quantile sketch and pages), in stored order.
        valid : BlockSource, optional
            Held-out rows (in memory: a validation block) for early stopping.
        classes : array, optional
            Every class (default: ``source.classes``).
        deadline : float, optional
            A ``time.monotonic()`` time: boosting stops at the first round past it, keeping the
            trees so far.
        progress : callable, optional
            Called with the rows of each boosting round (and of the first pass).

        Raises
        ------
        BudgetExceeded
            If the deadline passes before one round was trained.
        """
        xgb = xgboost_module()
        classes = np.asarray(source.classes if classes is None else classes)
        if len(classes) < 2:  # a ValueError, as scikit-learn's classifiers raise
            raise ValueError(f"expected at least 2 classes to train on; got one class, "
                             f"{classes.tolist()}.")
        n_jobs = self._threads()
        if deadline is not None and time.monotonic() > deadline:
            raise BudgetExceeded("its time share ran out before the rows were read")
        params = {
            "tree_method": "hist", "grow_policy": "lossguide", "max_depth": 0,
            "max_leaves": int(self.max_leaf_nodes), "max_bin": int(self.max_bin),
            "eta": float(self.learning_rate), "lambda": float(self.l2_regularization),
            "seed": int(self.random_state), "nthread": n_jobs, "verbosity": 0,
            **({"objective": "binary:logistic", "eval_metric": "logloss"}
               if len(classes) == 2 else
               {"objective": "multi:softprob", "num_class": len(classes),
                "eval_metric": "mlogloss"}),
        }
        stop = _deadline_callback(xgb)(deadline, progress, source.n_rows)
        folder = tempfile.mkdtemp(prefix="featx-xgb-", dir=self.cache_dir)
        try:
            booster = self._boost(xgb, params, source, valid, classes, folder, stop, progress)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        best = getattr(booster, "best_iteration", None)
        kept = booster.num_boosted_rounds() if best is None else int(best) + 1
        if kept < booster.num_boosted_rounds():
            booster = booster[:kept]
        self.model_ = np.frombuffer(bytes(booster.save_raw("ubj")), np.uint8).copy()
        self._booster = booster
        self.n_iter_ = kept
        self.stopped_by_ = ("deadline" if stop.stopped else "early_stopping"
                            if kept < int(self.n_estimators) else "rounds")
        self.classes_, self.n_features_in_ = classes, int(source.width)
        return self

    def _boost(self, xgb: Any, params: dict[str, Any], source: BlockSource,
               valid: BlockSource | None, classes: np.ndarray, folder: str, stop: Any,
               progress: Callable[[int], Any] | None) -> Any:
        """The boosting rounds on XGBoost's pages in ``folder``; every reference to the pages
        dropped before returning or raising (XGBoost removes its files when they go)."""
        rows: Any = None
        train: Any = None
        evals: list[tuple[Any, str]] | None = None
        try:
            rows = _data_iter(xgb)(source, classes, os.path.join(folder, "pages"), progress)
            train = xgb.ExtMemQuantileDMatrix(rows, max_bin=params["max_bin"],
                                              nthread=params["nthread"])
            evals = []
            if valid is not None and valid.n_rows:
                Xv, yv = all_rows(valid)
                labels = class_codes(yv, classes).astype(np.float32)
                evals = [(xgb.QuantileDMatrix(Xv, labels, ref=train,
                                              max_bin=params["max_bin"],
                                              nthread=params["nthread"]), "valid")]
                del Xv, yv
            booster = xgb.train(
                params, train, num_boost_round=int(self.n_estimators), evals=evals,
                early_stopping_rounds=int(self.early_stopping_rounds) if evals else None,
                callbacks=[stop], verbose_eval=False)
            if booster.num_boosted_rounds() == 0:
                raise BudgetExceeded("its time share ran out before one boosting round")
            return booster
        finally:
            rows = train = evals = None
            gc.collect()

    def _threads(self) -> int:
        return int(self.n_jobs or len(os.sched_getaffinity(0)))

    def _booster_of(self) -> Any:
        booster = getattr(self, "_booster", None)
        if booster is None:
            booster = xgboost_module().Booster()
            booster.load_model(bytearray(self.model_.tobytes()))
            booster.set_param({"nthread": self._threads()})
            self._booster = booster
        return booster

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, a block at a time; columns follow ``classes_``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        booster, parts = self._booster_of(), []
        for lo in range(0, len(X), int(self.block_rows)):
            p = np.asarray(booster.inplace_predict(X[lo:lo + int(self.block_rows)]))
            parts.append(np.column_stack([1 - p, p]) if p.ndim == 1 else p)
        return (np.concatenate(parts) if parts
                else np.zeros((0, len(self.classes_)), np.float32)).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_booster", None)  # rebuilt from model_ (XGBoost's bytes) when first needed
        return state


def _data_iter(xgb: Any) -> type:
    """The class of an ``xgboost.DataIter`` over a source's blocks (xgboost is imported late)."""

    class Blocks(xgb.DataIter):
        def __init__(self, source: BlockSource, classes: np.ndarray, prefix: str,
                     progress: Callable[[int], Any] | None):
            self._source, self._classes, self._progress = source, classes, progress
            self._it: Iterator[tuple[np.ndarray, np.ndarray]] | None = None
            self._passes = 0
            super().__init__(cache_prefix=prefix, release_data=True)

        def next(self, input_data: Callable[..., None]) -> bool:
            if self._it is None:
                self._it = iter(self._source.blocks(seed=None))
                self._passes += 1
            try:
                X, y = next(self._it)
            except StopIteration:
                return False
            if not np.isfinite(X).all():
                raise FeatxError("a block of rows holds NaN or infinite values; re-embed the "
                                 "images that failed, or drop their rows.")
            input_data(data=np.ascontiguousarray(X, np.float32),
                       label=class_codes(y, self._classes).astype(np.float32))
            if self._progress is not None and self._passes == 1:
                self._progress(len(y))
            return True

        def reset(self) -> None:
            self._it = None

    return Blocks


def _deadline_callback(xgb: Any) -> type:
    """The class of a training callback that reports each round and stops past a deadline."""

    class Deadline(xgb.callback.TrainingCallback):
        def __init__(self, deadline: float | None, progress: Callable[[int], Any] | None,
                     n_rows: int):
            self.deadline, self.progress, self.n_rows = deadline, progress, n_rows
            self.stopped = False
            super().__init__()

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            if self.progress is not None:
                self.progress(self.n_rows)
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.stopped = True
            return self.stopped

    return Deadline
