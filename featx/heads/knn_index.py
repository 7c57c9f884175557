"""The k-nearest-neighbours head on a faiss index: the ``knn`` preset's maths at a million rows.

:class:`IndexKNNClassifier` standardises the rows (a :class:`~sklearn.preprocessing.StandardScaler`
fitted by ``partial_fit``, one pass over the blocks) and keeps them in a faiss index, filled one
block at a time, so the float32 matrix is never in memory whole:

- below ``exact_below`` rows, an exact ``IndexFlatL2`` (4 bytes a value): the same neighbours as
  ``make_pipeline(StandardScaler(), KNeighborsClassifier())``, up to float32 rounding;
- from ``exact_below`` rows on, an inverted file of ``nlist`` k-means cells, ``nprobe`` of them
  searched per query, whose rows are held twice, compactly: 4-bit product-quantisation codes
  scanned with SIMD (faiss's "fast scan", half a byte per 4 values) find ``refine`` times ``k``
  candidates, which 8-bit scalar-quantised copies of the rows (1 byte a value) re-rank
  (``IndexRefine(IndexIVFPQFastScan, IndexScalarQuantizer)``).

Measured as recall@10 against the exact index and queries a second (AMD EPYC, 2 cores, loaded
by other work; 200,000 resampled MobileNet rows of width 1,024, 1,024 cells, 32 searched):
8-bit codes alone 0.978 at 336 queries/s; 4-bit codes re-ranked from 8-bit ones, ``refine=4``
0.80 at 7,300/s, 8: 0.915, 16: 0.963 at 3,300/s, 32: 0.976 at 2,200/s, 64: 0.978 at 590/s.
The cells searched matter little once the 4-bit codes rank (32 or 64 of 1,024: 0.802 and 0.803
at ``refine=4``). At 1,000,000 such rows (2,048 cells; quiet machine; built in 119 s; 10,000
queries): 64 cells searched, ``refine=32`` 0.930 in 3.8 s, ``refine=64`` 0.961 in 4.9 s; 128
cells 0.929 and 0.961 in 5.6 and 6.8 s; 32 cells at 64: 0.952 in 3.7 s. Hence ``refine=64``.
Earlier, with 8-bit codes alone: MobileNet embeddings of 18,000 Fashion-MNIST
images (1,024 wide, 256 cells) 0.978 at 16 cells, 0.992 at 32; structured rows 256 wide, 1,000,000
rows (4,096 cells) 0.945 at 32, 0.970 at 64, 0.983 at 128.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from featx.audit.faiss_tools import auto_nlist, auto_nprobe, faiss_module, subquantizers
from featx.exceptions import FeatxError
from featx.heads.rows import DEFAULT_BLOCK_ROWS, ArrayBlocks, BlockSource
from featx.heads.scalable import BudgetExceeded, fit_scaler

__all__ = ["IndexKNNClassifier", "auto_nlist", "auto_nprobe"]


class _Steps:
    """The blocks added to the index: reports them to ``progress``, enforces the deadline."""

    def __init__(self, n_rows: int, deadline: float | None,
                 progress: Callable[[int], Any] | None):
        self.total, self.done = n_rows, 0
        self.deadline, self.progress, self.start = deadline, progress, time.monotonic()

    def check(self, what: str) -> None:
        """Raise if the deadline has passed (called before each step)."""
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            raise BudgetExceeded(
                f"the kNN index was not finished by the deadline ({what}; {self.done:,} of "
                f"{self.total:,} rows added in {now - self.start:.1f} s). A kNN index cannot be "
                "half-built, so nothing was kept: give it a later deadline, or fewer rows (a "
                "sample of them; or an exact index, exact_below above the rows, which needs no "
                "k-means)."
            )

    def tick(self, rows: int) -> None:
        self.done += rows
        if self.progress is not None:
            self.progress(rows)


class IndexKNNClassifier(ClassifierMixin, BaseEstimator):
    """k nearest neighbours (Euclidean, on standardised rows) searched in a faiss index.

    Parameters
    ----------
    n_neighbors : int, default=10
    weights : {"uniform", "distance"}, default="uniform"
        ``"distance"``: each neighbour counts ``1 / distance`` (a row at distance 0 takes all the
        weight), as :class:`~sklearn.neighbors.KNeighborsClassifier`.
    scale : bool, default=True
        Standardise the features first (a ``StandardScaler`` fitted over the blocks).
    exact_below : int, default=100_000
        Fewer rows: exact search (``IndexFlatL2``); more: IVF, 4-bit codes re-ranked by 8-bit
        ones.
    nlist : int, default=None
        IVF cells; ``None``: :func:`auto_nlist`. Capped at the k-means training rows / 39.
    nprobe : int, default=None
        IVF cells searched per query; ``None``: :func:`auto_nprobe`.
    refine : int, default=64
        With an IVF index: candidates found by the 4-bit codes per neighbour asked for, re-ranked
        by the 8-bit codes (recall against speed, measured above: at 1,000,000 rows 64 gave
        recall@10 0.961 where 32 gave 0.930, for 1.3 times the query time).
    n_pca : int or None, default=None
        With an IVF index, rows wider than this are projected on their top ``n_pca`` principal
        axes first (faiss's ``PCAMatrix``, trained on the k-means sample): a million rows of
        1,024 take 256 MB instead of 1 GB at ``n_pca=256``, and a query scans a quarter of the
        bytes. It changes the neighbours: on 8,000 real MobileNet embeddings of Fashion-MNIST
        (2,000 queries) recall@10 against exact search fell from 0.988 (full width) to 0.83 at
        256 and 0.73 at 128, while accuracy rose (0.8675 at 256 against 0.857 exact); on a
        million noisy resampled rows, 0.32. ``None`` (the default): the full width.
    block_rows : int, default=8192
        Rows per block when fitting on arrays and when searching.
    random_state : int, RandomState or None, default=0
        Seeds the k-means sample and initialisation.

    Attributes
    ----------
    classes_ : ndarray
        The sorted labels.
    n_features_in_ : int
    scaler_ : StandardScaler or None
    index_ : faiss.Index
        Pickled as ``faiss.serialize_index``'s bytes; a ``.featx`` file holds it as a member of
        its own (:meth:`write_index`), streamed, not inside the head's skops bytes.
    labels_ : ndarray of int
        Each indexed row's class code (position in ``classes_``), in the source's stored order.
    index_kind_ : {"flat", "ivf-pq4-sq8", "pca<n>-ivf-pq4-sq8"}
    nlist_ : int
        IVF cells (0 for a flat index).
    nprobe_ : int
        Cells searched per query (0 for a flat index); assign to trade recall for speed.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50)
    >>> X = rng.normal(size=(100, 8)) + 3 * y[:, None]
    >>> head = IndexKNNClassifier(n_neighbors=5).fit(X, y)
    >>> head.index_kind_, head.score(X, y)
    ('flat', 1.0)
    """

    _parameter_constraints: dict = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "weights": [StrOptions({"uniform", "distance"})],
        "scale": ["boolean"],
        "exact_below": [Interval(Integral, 0, None, closed="left")],
        "nlist": [Interval(Integral, 1, None, closed="left"), None],
        "nprobe": [Interval(Integral, 1, None, closed="left"), None],
        "refine": [Interval(Integral, 1, None, closed="left")],
        "n_pca": [Interval(Integral, 1, None, closed="left"), None],
        "block_rows": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, n_neighbors: int = 10, *, weights: str = "uniform", scale: bool = True,
                 exact_below: int = 100_000, nlist: int | None = None, nprobe: int | None = None,
                 refine: int = 64, n_pca: int | None = None,
                 block_rows: int = DEFAULT_BLOCK_ROWS, random_state: Any = 0):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.scale = scale
        self.exact_below = exact_below
        self.nlist = nlist
        self.nprobe = nprobe
        self.refine = refine
        self.n_pca = n_pca
        self.block_rows = block_rows
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> IndexKNNClassifier:
        """Index the rows ``X`` with their labels ``y`` (as :meth:`fit_stream` on arrays)."""
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64])
        check_classification_targets(y)
        return self.fit_stream(ArrayBlocks(X, y, block_rows=self.block_rows))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_stream(self, source: BlockSource, *, deadline: float | None = None,
                   progress: Callable[[int], Any] | None = None) -> IndexKNNClassifier:
        """Index the rows of ``source`` block by block (memory: the index and one block).

        Parameters
        ----------
        source : BlockSource
            Read in its stored order (``blocks(seed=None)``): neighbour indices are positions in
            it. Two passes with ``scale=True`` (the scaler, then the index), one without.
        deadline : float, optional
            A ``time.monotonic()`` time, checked between blocks: an index cannot be half-built,
            so past it nothing is kept (the estimator stays as it was).
        progress : callable, optional
            Called with the number of rows of each block added to the index (the scaler's pass
            is not counted).

        Returns
        -------
        self

        Raises
        ------
        BudgetExceeded
            If the deadline passes before the index is complete.
        """
        faiss = faiss_module()
        n, width, classes = int(source.n_rows), int(source.width), np.asarray(source.classes)
        if n < 1 or len(classes) < 1:
            raise FeatxError(f"expected labelled rows to index; the source holds {n} rows and "
                             f"{len(classes)} classes.")
        steps = _Steps(n, deadline, progress)
        steps.check("before starting")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        scaler = fit_scaler(source, deadline) if self.scale else None
        index, nlist, nprobe = self._new_index(faiss, source, width, scaler, seed, steps)
        labels = _add_rows(index, source, classes, scaler, steps)
        # Set only now: a fit stopped by the deadline leaves the estimator as it was.
        self.scaler_, self.index_, self.labels_ = scaler, index, labels
        self.nlist_, self.nprobe_ = nlist, nprobe
        dim = self._indexed_width(width)
        self.index_kind_ = ("flat" if nlist == 0 else "ivf-pq4-sq8" if dim == width
                            else f"pca{dim}-ivf-pq4-sq8")
        self.classes_, self.n_features_in_ = classes, width
        return self

    def _indexed_width(self, width: int) -> int:
        """The width an IVF index holds: ``n_pca`` principal axes when the rows are wider."""
        return width if self.n_pca is None or width <= self.n_pca else int(self.n_pca)

    def _new_index(self, faiss: Any, source: BlockSource, width: int, scaler: Any, seed: int,
                   steps: _Steps) -> tuple[Any, int, int]:
        """An empty index (trained when IVF), its cells and the cells searched."""
        if source.n_rows < self.exact_below:
            return faiss.IndexFlatL2(width), 0, 0
        want = self.nlist or auto_nlist(source.n_rows)
        sample, _ = source.sample(min(source.n_rows, max(39 * want, 20_000)), seed=seed)
        nlist = int(max(1, min(want, len(sample) // 39)))
        dim = self._indexed_width(width)
        ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(dim), dim, nlist, subquantizers(dim),
                                       4, faiss.METRIC_L2)
        ivf.cp.seed = seed
        ivf.cp.niter = 10  # faiss's default 25 costs 2.5x for no recall measured here
        refined = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2))
        refined.k_factor = float(self.refine)
        # Rows projected on their top principal axes (trained on the same sample): 4x less
        # memory and 4x less to scan per query at 1,024 -> 256.
        index = (refined if dim == width
                 else faiss.IndexPreTransform(faiss.PCAMatrix(width, dim), refined))
        steps.check("training the k-means cells")
        sample = _scaled(_finite(sample), scaler)
        index.train(sample)
        del sample
        ivf.nprobe = int(min(nlist, self.nprobe or auto_nprobe(nlist)))
        return index, nlist, int(ivf.nprobe)

    def kneighbors(self, X: Any, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The nearest indexed rows of each row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        n_neighbors : int, default=None
            ``None``: ``self.n_neighbors``.

        Returns
        -------
        distances : ndarray of float32, shape (n_samples, n_neighbors)
            Euclidean distances in the standardised space (the square roots of faiss's squared
            L2), nearest first; an IVF search that finds fewer rows pads with ``inf``.
        indices : ndarray of int64, shape (n_samples, n_neighbors)
            Positions in the fitted rows (the source's stored order); ``-1`` where padded.
        """
        check_is_fitted(self, "index_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        k = self.n_neighbors if n_neighbors is None else int(n_neighbors)
        if not 1 <= k <= len(self.labels_):
            raise ValueError(f"expected 1 <= n_neighbors <= {len(self.labels_)} (the rows "
                             f"fitted); got n_neighbors={k}. Pass a smaller n_neighbors.")
        faiss = faiss_module()
        if self.nprobe_:
            faiss.extract_index_ivf(self.index_).nprobe = self.nprobe_
        dist = np.empty((len(X), k), np.float32)
        ind = np.empty((len(X), k), np.int64)
        for lo in range(0, len(X), self.block_rows):
            rows = slice(lo, lo + self.block_rows)
            dist[rows], ind[rows] = self.index_.search(_scaled(X[rows], self.scaler_), k)
        found = ind >= 0
        return np.where(found, np.sqrt(np.maximum(dist, 0)), np.inf), ind

    def predict_proba(self, X: Any) -> np.ndarray:
        """The neighbours' (weighted) share per class; columns follow ``classes_``. A row whose
        IVF search found no neighbour gets the classes' shares of the fitted rows."""
        dist, ind = self.kneighbors(X)
        if self.weights == "uniform":
            w = (ind >= 0).astype(np.float64)
        else:  # 1 / distance (padding: 0); rows at distance 0 share all the weight, as sklearn
            with np.errstate(divide="ignore"):
                w = 1.0 / dist.astype(np.float64)
            zero = np.isinf(w)
            w[zero.any(axis=1)] = zero[zero.any(axis=1)]
        n, n_classes = len(ind), len(self.classes_)
        cells = np.arange(n)[:, None] * n_classes + self.labels_[np.maximum(ind, 0)]
        proba = np.bincount(cells.ravel(), w.ravel(), n * n_classes).reshape(n, n_classes)
        total = proba.sum(axis=1, keepdims=True)
        prior = np.bincount(self.labels_, minlength=n_classes) / len(self.labels_)
        return np.where(total > 0, proba / np.where(total > 0, total, 1), prior)

    def predict(self, X: Any) -> np.ndarray:
        """The class of largest :meth:`predict_proba` (a tie goes to the first in ``classes_``,
        as scikit-learn's)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def write_index(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted index to ``path`` with ``faiss.write_index``: streamed to the file,
        no copy of the index in memory (how a ``.featx`` file stores it, as a member of its own)."""
        check_is_fitted(self, "index_")
        faiss_module().write_index(self.index_, os.fspath(path))

    def read_index(self, path: str | os.PathLike[str]) -> None:
        """Load the index :meth:`write_index` wrote (faiss parses the file; it runs no code)."""
        self.index_ = faiss_module().read_index(os.fspath(path))

    @contextmanager
    def index_detached(self, member: str) -> Iterator[None]:
        """Within the block the estimator holds no index, only ``index_member_ = member`` (the
        name of the file that holds it): what the saved model writes with skops, so that the
        index is never copied into skops's bytes."""
        check_is_fitted(self, "index_")
        index = self.index_
        self.index_, self.index_member_ = None, member
        try:
            yield
        finally:
            self.index_ = index
            del self.index_member_

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # object.__getstate__ gives __dict__ itself
        if state.get("index_") is not None:
            state["index_"] = faiss_module().serialize_index(state["index_"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("index_"), np.ndarray):
            state = {**state, "index_": faiss_module().deserialize_index(state["index_"])}
        super().__setstate__(state)


def _add_rows(index: Any, source: BlockSource, classes: np.ndarray, scaler: Any, steps: _Steps
              ) -> np.ndarray:
    """Add the source's blocks to ``index`` in stored order; each row's class code."""
    codes = []
    for X, y in source.blocks(seed=None):
        steps.check("adding rows to the index")
        code = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
        if np.any(classes[code] != y):
            raise FeatxError(f"a block holds labels {np.setdiff1d(y, classes).tolist()[:5]} "
                             f"that are not among the source's classes {classes.tolist()[:20]}; "
                             "a source's classes must list every label its blocks hold.")
        index.add(_scaled(_finite(X), scaler))
        codes.append(code.astype(np.int32))
        steps.tick(len(X))
    if not codes:
        raise FeatxError(f"the source says it holds {source.n_rows:,} rows but its blocks gave "
                         "none; nothing to index.")
    return np.concatenate(codes)


def _scaled(X: np.ndarray, scaler: Any) -> np.ndarray:
    X = X if scaler is None else scaler.transform(X)
    return np.ascontiguousarray(X, dtype=np.float32)


def _finite(X: np.ndarray) -> np.ndarray:
    if not np.isfinite(X).all():
        raise FeatxError("a block of rows holds NaN or infinite values; a kNN index needs finite "
                         "rows. Drop those rows (or re-embed the images that failed).")
    return X
