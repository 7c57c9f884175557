"""Labelled rows in blocks: what the heads that scale train on.

A :class:`BlockSource` hands out its rows a block at a time, as many times as asked (one pass
per epoch), in a seeded shuffled order, and a seeded sample in memory (to fit what needs one:
k-means centroids, a kernel approximation's landmarks). Two kinds:

- :class:`ArrayBlocks`, rows already in memory (an array and its labels), sliced;
- :class:`CachedBlocks`, a cache group's rows read by blocks (:meth:`EmbeddingCache.blocks
  <featx.cache.EmbeddingCache.blocks>`), each row's label and part (fit, validation, test)
  found by its content key: the float32 matrix is never in memory whole.

The heads of :mod:`featx.heads.scalable` take either; their ``fit(X, y)`` wraps arrays in an
:class:`ArrayBlocks`, so they are ordinary scikit-learn estimators too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["BlockSource", "ArrayBlocks", "CachedBlocks", "DEFAULT_BLOCK_ROWS", "PARTS", "all_rows",
           "class_codes"]

#: Rows per block: 8,192 rows of width 1,024 are 32 MB of float32.
DEFAULT_BLOCK_ROWS = 8192

#: The parts a labelled row can belong to (codes in :attr:`CachedBlocks.part`).
PARTS = {"fit": 0, "valid": 1, "test": 2}


class BlockSource(Protocol):
    """Labelled rows that a head reads in blocks, a pass at a time."""

    @property
    def n_rows(self) -> int: ...

    @property
    def width(self) -> int: ...

    @property
    def classes(self) -> np.ndarray: ...

    def blocks(self, seed: int | None = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row once, as ``(X, y)`` blocks (float32, labels); seeded order (``None``:
        stored order)."""
        ...

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """At most ``n`` rows drawn uniformly (seeded), in memory."""
        ...


def all_rows(source: BlockSource) -> tuple[np.ndarray, np.ndarray]:
    """Every row of a small source in memory (a validation block, a head that does not
    stream)."""
    xs, ys = zip(*source.blocks(seed=None), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def class_codes(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each label's position in the sorted ``classes`` (int32).

    Raises
    ------
    FeatxError
        If a label is not among ``classes``.
    """
    code = np.minimum(np.searchsorted(classes, y), len(classes) - 1)
    if np.any(classes[code] != y):
        raise FeatxError(f"a block holds labels {np.setdiff1d(y, classes).tolist()[:5]} that are "
                         f"not among the classes {classes.tolist()[:20]}; a source's classes must "
                         "list every label its blocks hold.")
    return code.astype(np.int32)


class ArrayBlocks:
    """Rows in memory, handed out in blocks.

    Parameters
    ----------
    X : array of shape (n, width)
    y : array of shape (n,)
    rows : array of int, optional
        The rows of ``X`` this source hands out (a part of it, without copying it); default
        every row.
    block_rows : int, default=8192

    Examples
    --------
    >>> import numpy as np
    >>> rows = ArrayBlocks(np.arange(10.0).reshape(5, 2), np.array([0, 1, 0, 1, 1]), block_rows=2)
    >>> [len(y) for _, y in rows.blocks(seed=0)], rows.classes.tolist()
    ([2, 2, 1], [0, 1])
    """

    def __init__(self, X: Any, y: Any, *, rows: np.ndarray | None = None,
                 block_rows: int = DEFAULT_BLOCK_ROWS):
        self.X = X if hasattr(X, "shape") else np.asarray(X)
        self.y = np.asarray(y)
        if len(self.X.shape) != 2 or len(self.y) != self.X.shape[0]:
            raise FeatxError(
                f"expected X of shape (n, width) and one label per row; got X {self.X.shape} "
                f"and y {self.y.shape}."
            )
        self.rows = np.arange(len(self.y)) if rows is None else np.asarray(rows, np.int64)
        self.block_rows = int(block_rows)
        self._classes = np.unique(self.y[self.rows])

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return int(self.X.shape[1])

    @property
    def classes(self) -> np.ndarray:
        return self._classes

    def blocks(self, seed: int | None = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = (self.rows if seed is None
                 else self.rows[np.random.default_rng(seed).permutation(len(self.rows))])
        for lo in range(0, len(order), self.block_rows):
            rows = order[lo:lo + self.block_rows]
            yield np.asarray(self.X[rows], dtype=np.float32), self.y[rows]

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows
        if n < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
        return np.asarray(self.X[rows], dtype=np.float32), self.y[rows]


class CachedBlocks:
    """One part (fit, validation or test) of labelled images' rows in a cache group, by blocks.

    Build the three parts at once with :meth:`split`. The labelled images are known by their
    content keys; a block of the group's rows (read in a seeded shuffled order) keeps the rows
    whose key is labelled and in this part. Memory: the labelled keys' digests (48 bytes a key)
    plus one block of rows.

    Parameters
    ----------
    cache : path or EmbeddingCache
    fingerprint : str
        The group.
    keys : sequence of str or ``S64`` array
        The labelled images' content keys (each image once).
    labels : array of shape (len(keys),)
    part : array of int8, shape (len(keys),), optional
        Each key's part code (:data:`PARTS`); ``None``: every key is in this source.
    want : int, default=0
        The part this source hands out.
    block_rows : int, default=8192
    """

    def __init__(
        self,
        cache: Any,
        fingerprint: str,
        keys: Sequence[str] | np.ndarray,
        labels: Any,
        *,
        part: np.ndarray | None = None,
        want: int = 0,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        _index: Any = None,
    ):
        from featx.cache.index import GroupIndex, digests_of
        from featx.cache.store import EmbeddingCache, open_cache

        self.store = cache if isinstance(cache, EmbeddingCache) else open_cache(cache)
        self.fingerprint = fingerprint
        self.labels = np.asarray(labels)
        self.part = np.zeros(len(self.labels), np.int8) if part is None else np.asarray(part)
        self.want = int(want)
        self.block_rows = int(block_rows)
        if _index is None:
            if len(keys) != len(self.labels):
                raise FeatxError(f"expected one label per key; got {len(keys)} keys and "
                                 f"{len(self.labels)} labels.")
            _index = GroupIndex(0, {}, "", digests_of(keys))
        self._index = _index
        self._mine = self.part == self.want
        self._n = int(self._mine.sum())
        self._classes = np.unique(self.labels[self._mine])
        self._width: int | None = None

    @classmethod
    def split(
        cls,
        cache: Any,
        fingerprint: str,
        keys: Sequence[str] | np.ndarray,
        labels: Any,
        part: np.ndarray,
        *,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> dict[str, CachedBlocks]:
        """The parts that hold rows, by name (``"fit"``, ``"valid"``, ``"test"``), sharing one
        key index."""
        first = cls(cache, fingerprint, keys, labels, part=part, want=0, block_rows=block_rows)
        out = {"fit": first}
        for name, code in PARTS.items():
            if code and (np.asarray(part) == code).any():
                out[name] = cls(first.store, fingerprint, keys, labels, part=part, want=code,
                                block_rows=block_rows, _index=first._index)
        return out

    @property
    def n_rows(self) -> int:
        return self._n

    @property
    def width(self) -> int:
        if self._width is None:
            for info in self.store.groups():
                if info.fingerprint == self.fingerprint:
                    self._width = info.width
            if self._width is None:
                raise FeatxError(f"cache {str(self.store.path)!r} has no group "
                                 f"{self.fingerprint}.")
        return self._width

    @property
    def classes(self) -> np.ndarray:
        return self._classes

    def _labelled(self, keys: np.ndarray) -> np.ndarray:
        """Positions of a block's keys among the labelled keys in this part, or -1."""
        from featx.cache.index import digests_of

        pos = self._index.find(digests_of(keys))
        ok = pos >= 0
        pos[ok & ~self._mine[np.maximum(pos, 0)]] = -1
        return pos

    def blocks(self, seed: int | None = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in self.store.blocks(self.fingerprint, block_rows=self.block_rows, seed=seed):
            pos = self._labelled(block.keys)
            keep = pos >= 0
            if keep.any():
                yield block.vectors[keep], self.labels[pos[keep]]

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """At most ``n`` rows of this part: each row kept with probability n / n_rows, over one
        seeded pass (reads the group once, holds only the sample, filled in place: a k-means
        sample of 80,000 rows of width 1,024 is 330 MB, and gathering it in pieces then joining
        them held it twice)."""
        n = int(min(n, self._n))
        rate = min(1.0, n / max(1, self._n))
        rng = np.random.default_rng(seed)
        X_out: np.ndarray | None = None
        y_out = self.labels[:0]
        at = 0
        for X, y in self.blocks(seed=seed):
            keep = rng.random(len(y)) < rate
            take = min(int(keep.sum()), n - at)
            if X_out is None:
                X_out, y_out = np.empty((n, X.shape[1]), np.float32), np.empty(n, y.dtype)
            X_out[at:at + take] = X[keep][:take]
            y_out[at:at + take] = y[keep][:take]
            at += take
            if at == n:
                break
        if X_out is None:
            return np.zeros((0, self.width), np.float32), self.labels[:0]
        return X_out[:at], y_out[:at]
