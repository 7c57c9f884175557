"""A nearest-neighbour index over embeddings: cosine similarity in faiss, from an array or a cache.

:class:`EmbeddingIndex` holds L2-normalised float32 rows (optionally centred first: the mean row
subtracted, which spreads the directions apart where every embedding points the same way) in a
faiss inner-product index, so a search returns cosine similarities:

- below ``exact_below`` rows an exact ``IndexFlatIP`` (4 bytes a value);
- from ``exact_below`` rows on, an inverted file of spherical k-means cells, ``nprobe`` of them
  searched per query, whose rows are held twice, compactly: 4-bit product-quantisation codes
  scanned with SIMD (faiss's "fast scan") find ``refine`` times ``k`` candidates that 8-bit
  scalar-quantised copies (1 byte a value) re-rank (``IndexRefine(IndexIVFPQFastScan,
  IndexScalarQuantizer)``, the kNN head's layout: 6.5 times the queries a second of 8-bit codes
  alone at the same recall, measured there). At 100,000 resampled MobileNet rows 8-bit codes
  alone took 574 s to search every row against the others on a loaded 2-core machine.

Built from a cache group (:meth:`EmbeddingIndex.from_cache`) it is filled one block at a time, so
the float32 matrix is never in memory twice (an exact index holds it once), and it is kept beside
the cache (:mod:`featx.audit.index_files`): reused while the group's files are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featx.audit.faiss_tools import auto_nlist, auto_nprobe, faiss_module, subquantizers
from featx.exceptions import CacheError, FeatxError

__all__ = ["EmbeddingIndex", "auto_nlist", "auto_nprobe", "normalised", "DEFAULT_EXACT_BELOW"]

#: Fewer rows than this: exact search.
DEFAULT_EXACT_BELOW = 100_000
#: Rows read from a cache (or searched) per block.
DEFAULT_BLOCK_ROWS = 8192


def normalised(X: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """``X`` as float32 rows of unit length (the ``mean`` row subtracted first when given); an
    all-zero row stays zero. A new array: ``X`` is not modified.

    Raises
    ------
    FeatxError
        If ``X`` is not 2-D or holds NaN or infinity.
    """
    Z = np.array(X, dtype=np.float32, copy=True, ndmin=2)
    if Z.ndim != 2:
        raise FeatxError(f"expected a 2-D array of rows (n_rows, width); got shape {Z.shape}.")
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        raise FeatxError(
            f"{int(bad.sum())} of {len(Z)} rows hold NaN or infinity (first: row "
            f"{int(np.flatnonzero(bad)[0])}); drop them before indexing (an embedder with "
            "on_error='nan' marks failed images this way)."
        )
    if mean is not None:
        Z -= mean
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    np.divide(Z, norms, out=Z, where=norms > 0)
    return Z


class EmbeddingIndex:
    """Cosine nearest neighbours among embeddings, in a faiss index.

    Build one with :meth:`from_array` or :meth:`from_cache`; the constructor takes a built faiss
    index and is for those two and :mod:`featx.audit.index_files`.

    Parameters
    ----------
    index : faiss.Index
        An inner-product index over normalised rows.
    ids : ndarray
        One id per indexed row, in the index's order: row numbers, the caller's ids, or a cache
        group's content keys (``S64``).
    mean : ndarray or None
        The row subtracted before normalising (``center=True``), applied to queries too.
    fingerprint : str or None
        The cache group the rows came from.
    nprobe : int
        Cells searched per query (0: an exact index).

    Attributes
    ----------
    kind : {"flat", "ivf-pq4-sq8"}
    fingerprint : str or None
    path : Path or None
        The file it was loaded from or saved to (beside a cache).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    >>> index = EmbeddingIndex.from_array(X, ids=["a", "b", "c"])
    >>> sims, ids = index.search(X[:1], k=2)
    >>> ids.tolist(), len(index)
    ([['a', 'b']], 3)
    >>> index.search(X, k=1, exclude_self=True)[1].tolist()
    [['b'], ['a'], ['b']]
    """

    def __init__(self, index: Any, ids: np.ndarray, *, mean: np.ndarray | None = None,
                 fingerprint: str | None = None, nprobe: int = 0):
        if index.ntotal != len(ids):
            raise ValueError(f"the index holds {index.ntotal} rows but {len(ids)} ids were given")
        self._index = index
        self._ids = np.asarray(ids)
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.fingerprint = fingerprint
        self.nprobe = int(nprobe)
        self.kind = ("flat" if self.nprobe == 0
                     else "ivf-pq4-sq8" if hasattr(index, "k_factor") else "ivf-sq8")
        self.path: Path | None = None

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def from_array(cls, X: Any, ids: Sequence[Any] | np.ndarray | None = None, *,
                   center: bool = False, exact_below: int = DEFAULT_EXACT_BELOW,
                   nlist: int | None = None, nprobe: int | None = None, refine: int = 32,
                   block_rows: int = DEFAULT_BLOCK_ROWS, seed: int = 0) -> EmbeddingIndex:
        """Index the rows of ``X`` (n_rows, width).

        Parameters
        ----------
        X : array-like of shape (n_rows, width)
        ids : sequence, optional
            One id per row, returned by :meth:`search`; default the row numbers.
        center : bool, default=False
            Subtract the mean row (of up to the k-means sample's rows) before normalising.
        exact_below : int, default=100_000
            Fewer rows: exact search; more: IVF, 4-bit codes re-ranked by 8-bit ones.
        nlist, nprobe : int, optional
            IVF cells and cells searched per query (:func:`auto_nlist`, :func:`auto_nprobe`).
        refine : int, default=32
            IVF: candidates the 4-bit codes find per neighbour asked for, re-ranked by the
            8-bit codes.
        block_rows : int, default=8192
            Rows normalised and added at a time (memory: the index and one block).
        seed : int, default=0
            Seeds the k-means sample and initialisation.
        """
        X = np.asarray(X)
        if X.ndim != 2 or len(X) < 1:
            raise FeatxError(f"expected a 2-D array with at least one row; got shape {X.shape}.")
        ids_ = np.arange(len(X)) if ids is None else np.asarray(ids)
        if len(ids_) != len(X):
            raise FeatxError(f"expected one id per row: {len(X)} rows, {len(ids_)} ids.")

        def blocks() -> Iterator[np.ndarray]:
            for lo in range(0, len(X), block_rows):
                yield X[lo:lo + block_rows]

        rng = np.random.default_rng(seed)
        want = _sample_rows(len(X), exact_below, nlist)
        pick = np.sort(rng.choice(len(X), size=min(want, len(X)), replace=False))
        sample = np.asarray(X[pick], np.float32)
        index, mean, probe = _new_index(len(X), X.shape[1], sample, center=center,
                                        exact_below=exact_below, nlist=nlist, nprobe=nprobe,
                                        refine=refine, seed=seed)
        del sample
        for block in blocks():
            index.add(normalised(block, mean))
        return cls(index, ids_, mean=mean, nprobe=probe)

    @classmethod
    def from_cache(cls, cache: Any, group: str | None = None, *,
                   keys: Iterable[str] | None = None, block_rows: int = DEFAULT_BLOCK_ROWS,
                   center: bool = False, exact_below: int = DEFAULT_EXACT_BELOW,
                   nlist: int | None = None, nprobe: int | None = None, refine: int = 32,
                   seed: int = 0, save: bool = True) -> EmbeddingIndex:
        """Index a cache group's rows, read by blocks; kept beside the cache and reused.

        Parameters
        ----------
        cache : path or EmbeddingCache
        group : str, optional
            A fingerprint prefix choosing the group (as :func:`featx.cache.choose_group`); not
            needed when the cache holds one group.
        keys : iterable of str, optional
            Index only these content keys (each must be in the group).
        block_rows : int, default=8192
        center, exact_below, nlist, nprobe, refine, seed
            As :meth:`from_array`.
        save : bool, default=True
            Keep the index beside the cache (``<cache>.index/``) and reuse a kept one whose
            group, rows, files and settings are unchanged.

        Returns
        -------
        EmbeddingIndex
            ``ids`` are the rows' content keys; ``fingerprint`` the group's.

        Raises
        ------
        CacheGroupError
            If the cache holds no group, or ``group`` does not choose one.
        CacheError
            If ``keys`` names keys the group does not hold.
        """
        from featx.audit.index_files import IndexFiles
        from featx.cache.groups import choose_group
        from featx.cache.store import EmbeddingCache

        store = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
        info = choose_group(store, group, offer_backbone=False)
        wanted = None if keys is None else np.unique(np.asarray(list(keys), dtype="S64"))
        settings: dict[str, Any] = {"center": bool(center), "exact_below": int(exact_below),
                                    "nlist": nlist, "nprobe": nprobe, "refine": int(refine),
                                    "seed": int(seed)}
        files = IndexFiles(store, info, wanted, settings)
        if save:
            kept = files.load(cls)
            if kept is not None:
                return kept
        built = cls._build_from_cache(store, info, wanted, block_rows=block_rows, **settings)
        if save:
            files.save(built)
        return built

    @classmethod
    def _build_from_cache(cls, store: Any, info: Any, wanted: np.ndarray | None, *,
                          block_rows: int, center: bool, exact_below: int, nlist: int | None,
                          nprobe: int | None, refine: int, seed: int) -> EmbeddingIndex:
        fp = info.fingerprint
        n = info.rows if wanted is None else len(wanted)
        if n < 1:
            raise CacheError(f"cache group {fp} holds no rows to index.")
        want = min(n, _sample_rows(n, exact_below, nlist))
        sample = _cache_sample(store, fp, wanted, want, block_rows, seed)
        index, mean, probe = _new_index(n, info.width, sample, center=center,
                                        exact_below=exact_below, nlist=nlist, nprobe=nprobe,
                                        refine=refine, seed=seed)
        del sample
        ids = np.empty(n, "S64")
        at = 0
        for block in store.blocks(fp, block_rows=block_rows):
            keys, vectors = block.keys, block.vectors
            if wanted is not None:
                keep = _member(keys, wanted)
                keys, vectors = keys[keep], vectors[keep]
            if not len(keys):
                continue
            if at + len(keys) > n:  # rows were added since the group was described
                raise CacheError(f"cache group {fp} changed while it was indexed; run again.")
            index.add(normalised(vectors, mean))
            ids[at:at + len(keys)] = keys
            at += len(keys)
        if at != n:
            if wanted is not None:
                raise CacheError(
                    f"{n - at} of the {n} keys asked for are not in cache group {fp} of "
                    f"{str(store.path)!r}; embed those images into it first (featx embed SRC "
                    f"--cache {store.path}, or ImageEmbedder(..., cache=...).transform)."
                )
            raise CacheError(f"cache group {fp} changed while it was indexed; run again.")
        return cls(index, ids, mean=mean, fingerprint=fp, nprobe=probe)

    # ---- what it holds ----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return f"EmbeddingIndex({len(self)} rows, width {self.width}, {self.kind})"

    @property
    def width(self) -> int:
        return int(self._index.d)

    @property
    def ids(self) -> np.ndarray:
        """Each row's id: row numbers, the ids given, or content keys (as ``str``)."""
        return _readable(self._ids)

    @property
    def faiss_index(self) -> Any:
        """The faiss index itself (inner product over normalised rows)."""
        return self._index

    def vectors(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Indexed rows ``lo:hi`` as the index holds them (normalised; decoded from 8-bit codes
        in an IVF index)."""
        hi = len(self) if hi is None else min(int(hi), len(self))
        if self.kind == "ivf-sq8":  # an inverted file alone needs its direct map to reconstruct
            faiss = faiss_module()
            ivf = faiss.extract_index_ivf(self._index)
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map()
        return self._index.reconstruct_n(int(lo), int(hi - lo))

    # ---- searching --------------------------------------------------------------------------

    def search(self, queries: Any, k: int = 10, *, exclude_self: bool = False,
               block_rows: int = DEFAULT_BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar indexed rows of each query row.

        Parameters
        ----------
        queries : array-like of shape (n_queries, width)
            Embeddings (as the index's rows: centred and normalised here).
        k : int, default=10
        exclude_self : bool, default=False
            The queries are the indexed rows themselves, in order (query ``i`` is row ``i``):
            each row's own entry is left out of its neighbours.

        Returns
        -------
        similarities : ndarray of float32, shape (n_queries, k)
            Cosine similarities, most similar first; ``-inf`` where fewer than ``k`` rows were
            found (an IVF search, or a small index).
        ids : ndarray, shape (n_queries, k)
            The neighbours' ids (see :attr:`ids`); padding repeats the first id with ``-inf``.
        """
        sims, rows = self.search_rows(queries, k, exclude_self=exclude_self,
                                      block_rows=block_rows)
        return sims, _readable(self._ids[np.maximum(rows, 0)])

    def search_rows(self, queries: Any, k: int = 10, *, exclude_self: bool = False,
                    block_rows: int = DEFAULT_BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` with neighbours as row numbers of the index (``-1`` where padded)."""
        Q = np.asarray(queries)
        if Q.ndim != 2 or Q.shape[1] != self.width:
            raise FeatxError(f"expected query rows of width {self.width} (n, {self.width}); "
                             f"got shape {Q.shape}.")
        if exclude_self and len(Q) != len(self):
            raise FeatxError(
                f"exclude_self=True takes the indexed rows themselves as queries ({len(self)} "
                f"rows); got {len(Q)}. Use search_self() to search every indexed row."
            )
        sims = np.empty((len(Q), k), np.float32)
        rows = np.empty((len(Q), k), np.int64)
        for lo in range(0, len(Q), block_rows):
            part = normalised(Q[lo:lo + block_rows], self.mean)
            sims[lo:lo + len(part)], rows[lo:lo + len(part)] = self._search_normalised(
                part, k, lo if exclude_self else None)
        return sims, rows

    def search_self(self, k: int = 10, *, block_rows: int = DEFAULT_BLOCK_ROWS
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Every indexed row's ``k`` nearest other rows, from the rows the index holds (no
        array or cache needed): ``(similarities, rows)`` of shape ``(len(self), k)``."""
        n = len(self)
        sims = np.empty((n, k), np.float32)
        rows = np.empty((n, k), np.int64)
        for lo in range(0, n, block_rows):
            part = self.vectors(lo, lo + block_rows)
            sims[lo:lo + len(part)], rows[lo:lo + len(part)] = self._search_normalised(
                part, k, lo)
        return sims, rows

    def search_images(self, images: Any, k: int = 10, *, embedder: Any,
                      exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for images (paths, arrays, anything ``embedder`` takes), embedded by
        ``embedder`` (an :class:`~featx.ImageEmbedder`; its cache is used as usual).

        Raises
        ------
        FeatxError
            If the embedder makes other embeddings than the indexed cache group's.
        """
        if self.fingerprint is not None:
            mine = embedder.backbone_config().fingerprint
            if mine != self.fingerprint:
                raise FeatxError(
                    f"the embedder's backbone settings make cache group {mine}, but the index "
                    f"holds group {self.fingerprint}; pass the embedder that made the cache "
                    "(featx.cache.embedder_params_from_cache gives its parameters)."
                )
        return self.search(embedder.transform(images), k, exclude_self=exclude_self)

    def _search_normalised(self, Z: np.ndarray, k: int, self_start: int | None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Search rows already in the index's space; ``self_start``: Z[i] is row self_start+i,
        left out of its own results."""
        if self.nprobe:
            faiss_module().extract_index_ivf(self._index).nprobe = self.nprobe
        extra = 0 if self_start is None else 1
        want = min(k + extra, len(self))
        sims, rows = self._index.search(np.ascontiguousarray(Z, np.float32), want)
        if self_start is not None:
            own = np.arange(self_start, self_start + len(Z))[:, None]
            is_own = rows == own
            # Drop the row's own entry; where it was not found, drop the last one.
            drop = np.where(is_own.any(axis=1), is_own.argmax(axis=1), want - 1)
            keep = np.ones(rows.shape, bool)
            keep[np.arange(len(Z)), drop] = False
            sims = sims[keep].reshape(len(Z), want - 1)
            rows = rows[keep].reshape(len(Z), want - 1)
        if sims.shape[1] < k:
            pad = k - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        sims = np.where(rows >= 0, sims, -np.inf).astype(np.float32)
        return sims, rows


def _readable(ids: np.ndarray) -> np.ndarray:
    """Content keys stored as bytes come back as text."""
    return ids.astype(str) if ids.dtype.kind == "S" else ids


def _sample_rows(n: int, exact_below: int, nlist: int | None) -> int:
    """Rows to draw: the k-means sample of an IVF index (39 a cell, at least 20,000), or the rows
    a flat index's mean is taken from."""
    if n < exact_below:
        return 20_000
    return max(39 * (nlist or auto_nlist(n)), 20_000)


def _new_index(n: int, width: int, sample: np.ndarray, *, center: bool, exact_below: int,
               nlist: int | None, nprobe: int | None, refine: int, seed: int
               ) -> tuple[Any, np.ndarray | None, int]:
    """An empty index (trained when IVF), the mean to subtract, the cells searched per query."""
    faiss = faiss_module()
    mean = np.asarray(sample, np.float64).mean(axis=0).astype(np.float32) if center else None
    if n < exact_below:
        return faiss.IndexFlatIP(width), mean, 0
    sample = normalised(sample, mean)
    cells = int(max(1, min(nlist or auto_nlist(n), len(sample) // 39)))
    ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(width), width, cells,
                                   subquantizers(width), 4, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.cp.niter = 10
    ivf.cp.spherical = True
    index = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(
        width, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT))
    index.k_factor = float(refine)
    index.train(sample)
    probe = int(min(cells, nprobe or auto_nprobe(cells)))
    ivf.nprobe = probe
    return index, mean, probe


def _cache_sample(store: Any, fp: str, wanted: np.ndarray | None, size: int, block_rows: int,
                  seed: int) -> np.ndarray:
    """Up to ``size`` rows of the group (of ``wanted`` keys), from seeded shuffled blocks."""
    parts: list[np.ndarray] = []
    got = 0
    for block in store.blocks(fp, block_rows=block_rows, seed=seed):
        vectors = block.vectors if wanted is None else block.vectors[_member(block.keys, wanted)]
        parts.append(vectors[:size - got])
        got += len(parts[-1])
        if got >= size:
            break
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts)


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Which of ``keys`` are in ``sorted_keys`` (a sorted unique ``S64`` array)."""
    at = np.searchsorted(sorted_keys, keys)
    at = np.minimum(at, len(sorted_keys) - 1)
    return sorted_keys[at] == keys if len(sorted_keys) else np.zeros(len(keys), bool)
