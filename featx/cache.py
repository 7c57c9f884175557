"""The HDF5 embedding cache: content-addressed rows, one group per backbone fingerprint.

Layout (documented in ``docs/cache-format.md``, readable with h5py alone)::

    /                              attrs: featx_cache_format, file_id
    /embeddings/<fingerprint>/     attrs: fingerprint (JSON), label, width, count
        keys      (n,)        |S64     sha256 of the item's content, hex
        vectors   (n, width)  float32  chunked, resizable
        sources   (n,)        str      the item's name when it was stored (a path, ...)

Rows ``[0, count)`` are committed; ``count`` is written last, after a batch's rows, so rows past
it (from a write that died half-way) are never read. The file is opened only for the length of
one lookup or one batch append, under a lock on a sidecar file ``<cache>.lock`` (shared for
reading, exclusive for writing), so that several processes can use one cache file.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx.exceptions import CacheError

__all__ = ["EmbeddingCache", "GroupInfo", "CACHE_FORMAT_VERSION", "open_cache"]

CACHE_FORMAT_VERSION = 1
_KEY_DTYPE = "S64"
_CHUNK_ROWS = 256


@dataclass(frozen=True)
class GroupInfo:
    """What one fingerprint group of a cache holds."""

    fingerprint: str
    fields: dict[str, Any]
    label: str
    width: int
    rows: int


try:  # POSIX advisory locks; on other systems a process-local lock is the best we have.
    import fcntl

    def _lock_fd(fd: int, exclusive: bool) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)

    def _unlock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover

    def _lock_fd(fd: int, exclusive: bool) -> None:
        pass

    def _unlock_fd(fd: int) -> None:
        pass


class EmbeddingCache:
    """An HDF5 file of embeddings, addressed by content key within a backbone fingerprint.

    Parameters
    ----------
    path : str or path-like
        The HDF5 file. It is created on the first write.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> cache = EmbeddingCache(os.path.join(tempfile.mkdtemp(), "emb.h5"))
    >>> cache.append("fp0", ["a" * 64], np.ones((1, 3), np.float32), ["x.png"])
    1
    >>> found, vectors = cache.lookup("fp0", ["a" * 64, "b" * 64])
    >>> found.tolist(), vectors.shape
    ([True, False], (1, 3))
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._mutex = threading.RLock()
        # In-memory index per group: key -> row, extended incrementally as the file grows.
        self._index: dict[str, dict[str, int]] = {}
        self._indexed: dict[str, int] = {}
        self._file_id: str | None = None

    # ---- locking and opening ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        with self._mutex:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _lock_fd(fd, exclusive)
                yield
            finally:
                _unlock_fd(fd)
                os.close(fd)

    def _open(self, mode: str) -> h5py.File:
        try:
            f = h5py.File(self.path, mode)
        except OSError as exc:
            raise CacheError(
                f"cache file {str(self.path)!r} cannot be opened as HDF5 ({exc}). It may be "
                "truncated or not a featx cache; move it aside or pass another cache= path."
            ) from None
        try:
            self._check_file(f, writing=mode != "r")
        except BaseException:
            f.close()
            raise
        return f

    def _check_file(self, f: h5py.File, *, writing: bool) -> None:
        version = f.attrs.get("featx_cache_format")
        if version is None:
            if writing and len(f.keys()) == 0:
                f.attrs["featx_cache_format"] = CACHE_FORMAT_VERSION
                f.attrs["file_id"] = uuid.uuid4().hex
                version = CACHE_FORMAT_VERSION
            elif len(f.keys()) == 0:
                return
            else:
                raise CacheError(
                    f"{str(self.path)!r} is an HDF5 file but not a featx cache (no "
                    "'featx_cache_format' attribute). Pass another cache= path."
                )
        if int(version) > CACHE_FORMAT_VERSION:
            raise CacheError(
                f"cache file {str(self.path)!r} has format {int(version)}, written by a newer "
                f"featx; this featx reads format {CACHE_FORMAT_VERSION}. Upgrade featx."
            )
        file_id = str(f.attrs.get("file_id", ""))
        if file_id != self._file_id:  # another file now lives at this path: forget the index
            self._index.clear()
            self._indexed.clear()
            self._file_id = file_id

    # ---- the index ----------------------------------------------------------------------------

    def _refresh(self, f: h5py.File, fingerprint: str) -> dict[str, int]:
        grp = f.get(f"embeddings/{fingerprint}")
        index = self._index.setdefault(fingerprint, {})
        if grp is None:
            index.clear()
            self._indexed[fingerprint] = 0
            return index
        count = int(grp.attrs["count"])
        done = self._indexed.get(fingerprint, 0)
        if count < done:  # the group shrank: rebuild
            index.clear()
            done = 0
        if count > done:
            new_keys = grp["keys"][done:count]
            for offset, k in enumerate(new_keys):
                index.setdefault(k.decode("ascii"), done + offset)
        self._indexed[fingerprint] = count
        return index

    # ---- public API ---------------------------------------------------------------------------

    def lookup(self, fingerprint: str, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Find ``keys`` in the fingerprint's group.

        Returns
        -------
        found : ndarray of bool, shape (len(keys),)
        vectors : ndarray of float32, shape (found.sum(), width)
            The stored rows of the found keys, in the order of ``keys``.
        """
        found = np.zeros(len(keys), dtype=bool)
        if not self.path.exists():
            return found, np.zeros((0, 0), np.float32)
        with self._locked(exclusive=False), self._open("r") as f:
            index = self._refresh(f, fingerprint)
            rows = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
            found = rows >= 0
            if not found.any():
                return found, np.zeros((0, 0), np.float32)
            return found, _read_rows(f[f"embeddings/{fingerprint}/vectors"], rows[found])

    def append(
        self,
        fingerprint: str,
        keys: Sequence[str],
        vectors: np.ndarray,
        sources: Sequence[str],
        *,
        fields: dict[str, Any] | None = None,
        label: str = "",
    ) -> int:
        """Store one batch and commit it; keys already present are not stored again.

        Returns the number of rows written.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(keys) or len(sources) != len(keys):
            raise ValueError(
                f"append needs as many keys ({len(keys)}), sources ({len(sources)}) and vector "
                f"rows ({vectors.shape}) as each other"
            )
        with self._locked(exclusive=True), self._open("a") as f:
            grp = f.get(f"embeddings/{fingerprint}")
            if grp is None:
                grp = _create_group(f, fingerprint, vectors.shape[1], fields or {}, label)
            width = int(grp.attrs["width"])
            if vectors.shape[1] != width:
                raise CacheError(
                    f"cache group {fingerprint} stores vectors of width {width}; got width "
                    f"{vectors.shape[1]}. The backbone changed without its fingerprint changing."
                )
            index = self._refresh(f, fingerprint)
            keep, seen = [], set()
            for i, k in enumerate(keys):
                if k not in index and k not in seen:
                    keep.append(i)
                    seen.add(k)
            if not keep:
                return 0
            start = int(grp.attrs["count"])
            stop = start + len(keep)
            for name in ("keys", "vectors", "sources"):
                grp[name].resize(stop, axis=0)
            grp["keys"][start:stop] = np.array([keys[i] for i in keep], dtype=_KEY_DTYPE)
            grp["vectors"][start:stop] = vectors[keep]
            grp["sources"][start:stop] = np.array([sources[i] for i in keep], dtype=object)
            f.flush()
            grp.attrs["count"] = stop  # the commit point
            f.flush()
            for offset, i in enumerate(keep):
                index[keys[i]] = start + offset
            self._indexed[fingerprint] = stop
            return len(keep)

    def groups(self) -> list[GroupInfo]:
        """Describe every fingerprint group in the file."""
        if not self.path.exists():
            return []
        with self._locked(exclusive=False), self._open("r") as f:
            out = []
            for fp, grp in f.get("embeddings", {}).items():
                out.append(
                    GroupInfo(
                        fingerprint=fp,
                        fields=json.loads(grp.attrs.get("fingerprint", "{}")),
                        label=str(grp.attrs.get("label", "")),
                        width=int(grp.attrs["width"]),
                        rows=int(grp.attrs["count"]),
                    )
                )
            return out

    def read_group(self, fingerprint: str) -> tuple[list[str], np.ndarray, list[str]]:
        """Return all committed ``keys``, ``vectors`` and ``sources`` of one group."""
        with self._locked(exclusive=False), self._open("r") as f:
            grp = f.get(f"embeddings/{fingerprint}")
            if grp is None:
                known = list(f.get("embeddings", {}).keys())
                raise CacheError(
                    f"cache {str(self.path)!r} has no group {fingerprint!r}; it has {known}."
                )
            n = int(grp.attrs["count"])
            keys = [k.decode("ascii") for k in grp["keys"][:n]]
            sources = [s.decode() if isinstance(s, bytes) else s for s in grp["sources"][:n]]
            return keys, grp["vectors"][:n], sources

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r})"


def _create_group(
    f: h5py.File, fingerprint: str, width: int, fields: dict[str, Any], label: str
) -> h5py.Group:
    grp = f.require_group("embeddings").create_group(fingerprint)
    grp.attrs["fingerprint"] = json.dumps(fields, sort_keys=True)
    grp.attrs["label"] = label
    grp.attrs["width"] = width
    grp.attrs["count"] = 0
    grp.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=_KEY_DTYPE,
                       chunks=(_CHUNK_ROWS * 4,))
    grp.create_dataset("vectors", shape=(0, width), maxshape=(None, width), dtype="float32",
                       chunks=(_CHUNK_ROWS, width))
    grp.create_dataset("sources", shape=(0,), maxshape=(None,),
                       dtype=h5py.string_dtype("utf-8"), chunks=(_CHUNK_ROWS * 4,))
    return grp


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read ``dataset[rows]`` for any order of ``rows`` (h5py wants increasing, unique indices)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    lo, hi = int(unique[0]), int(unique[-1]) + 1
    if len(unique) * 4 >= hi - lo:  # dense enough: one contiguous read is faster
        block = dataset[lo:hi]
        data = block[unique - lo]
    else:
        data = dataset[unique]
    return np.asarray(data[inverse], dtype=np.float32)


_CACHES: dict[str, EmbeddingCache] = {}
_CACHES_LOCK = threading.Lock()


def open_cache(path: str | os.PathLike[str]) -> EmbeddingCache:
    """Return this process's :class:`EmbeddingCache` for ``path`` (one per file, index shared)."""
    key = os.path.abspath(os.fspath(path))
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = EmbeddingCache(key)
        return _CACHES[key]
