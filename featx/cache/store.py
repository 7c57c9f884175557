"""The HDF5 embedding cache: content-addressed rows, one group per backbone fingerprint.

:class:`EmbeddingCache` looks keys up and appends batches. A key is served from the first file
that holds it (the main file, then the segments oldest first); a group whose stored settings are
not the ones its fingerprint stands for is refused. The files themselves (the layout of
``docs/cache-format.md``, the per-file key index, locks, segment commits and compaction) are
:mod:`featx.cache.files`'s.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.cache.files import CACHE_FORMAT_VERSION, CacheFiles, FileIndex, GroupIndex, file_size
from featx.exceptions import CacheError

__all__ = ["EmbeddingCache", "GroupInfo", "CACHE_FORMAT_VERSION", "open_cache"]


@dataclass(frozen=True)
class GroupInfo:
    """What one fingerprint group of a cache holds."""

    fingerprint: str
    fields: dict[str, Any]
    label: str
    width: int
    rows: int
    failures: int = 0


class EmbeddingCache:
    """An HDF5 store of embeddings, addressed by content key within a backbone fingerprint.

    Parameters
    ----------
    path : str or path-like
        The main HDF5 file. It is created by the first write.

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

    #: Compact when the segments hold at least this fraction of the main file's rows ...
    compact_fraction = 0.25
    #: ... or when there are at least this many segment files.
    compact_segments = 64

    def __init__(self, path: str | os.PathLike[str]):
        self._files = CacheFiles(Path(path))
        self.path = self._files.path
        self.segment_dir = self._files.segment_dir

    def exists(self) -> bool:
        """True when the main file or any committed segment exists."""
        return self._files.exists()

    # ---- reading ------------------------------------------------------------

    def lookup(
        self, fingerprint: str, keys: Sequence[str], *, fields: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Find ``keys`` in the fingerprint's group.

        ``fields``, when given, are the settings the group must have been written for; a group
        of that name written for other settings raises :class:`CacheError` rather than serving
        rows that mean something else.

        Returns
        -------
        found : ndarray of bool, shape (len(keys),)
        vectors : ndarray of float32, shape (found.sum(), width)
            The stored rows of the found keys, in the order of ``keys``.
        """
        found = np.zeros(len(keys), dtype=bool)
        if not keys or not self.exists():
            return found, np.zeros((0, 0), np.float32)
        with self._files.locked(exclusive=False):
            files = self._files.indexes()
            if fields is not None:
                _check_fields(files, fingerprint, fields)
            where: list[tuple[int, int]] = []  # (file number, row) per found key
            for i, k in enumerate(keys):
                for n, index in enumerate(files):
                    grp = index.groups.get(fingerprint)
                    if grp is not None and k in grp.rows:
                        found[i] = True
                        where.append((n, grp.rows[k]))
                        break
            if not where:
                return found, np.zeros((0, 0), np.float32)
            width = files[where[0][0]].groups[fingerprint].width
            out = np.empty((len(where), width), np.float32)
            by_file: dict[int, list[int]] = {}
            for j, (n, _) in enumerate(where):
                by_file.setdefault(n, []).append(j)
            for n, positions in by_file.items():
                rows = np.array([where[j][1] for j in positions], dtype=np.int64)
                out[positions] = files[n].read(fingerprint, rows)[0]
            return found, out

    def failures(self, fingerprint: str, keys: Sequence[str]) -> dict[str, str]:
        """Reasons recorded for the ``keys`` that failed to decode before: key -> reason."""
        if not keys or not self.exists():
            return {}
        with self._files.locked(exclusive=False):
            failed: dict[str, str] = {}
            for index in self._files.indexes():
                grp = index.groups.get(fingerprint)
                if grp is not None:
                    for k, reason in grp.failed.items():
                        failed.setdefault(k, reason)
            return {k: failed[k] for k in keys if k in failed}

    def known_keys(
        self, fingerprint: str, *, fields: dict[str, Any] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """Every key the group stores a row for, and every remembered failure (key -> reason)
        whose key has no row; read from the key index, never from the vectors.

        For callers that look keys up elsewhere (the Ray workers get them once per run).
        ``fields`` as in :meth:`lookup`.
        """
        if not self.exists():
            return [], {}
        with self._files.locked(exclusive=False):
            files = self._files.indexes()
            if fields is not None:
                _check_fields(files, fingerprint, fields)
            keys: set[str] = set()
            failed: dict[str, str] = {}
            for index in files:
                grp = index.groups.get(fingerprint)
                if grp is not None:
                    keys.update(grp.rows)
                    for k, reason in grp.failed.items():
                        failed.setdefault(k, reason)
            return sorted(keys), {k: r for k, r in failed.items() if k not in keys}

    def groups(self) -> list[GroupInfo]:
        """Describe every group; rows are counted once across the main file and segments."""
        if not self.exists():
            return []
        with self._files.locked(exclusive=False):
            merged: dict[str, tuple[GroupIndex, set[str], set[str]]] = {}
            for index in self._files.indexes():
                for fp, grp in index.groups.items():
                    first, keys, failed = merged.setdefault(fp, (grp, set(), set()))
                    keys.update(grp.rows)
                    failed.update(grp.failed)
            return [
                GroupInfo(fingerprint=fp, fields=g.fields, label=g.label, width=g.width,
                          rows=len(keys), failures=len(failed - keys))
                for fp, (g, keys, failed) in merged.items()
            ]

    def read_group(self, fingerprint: str) -> tuple[list[str], np.ndarray, list[str]]:
        """Return every stored ``keys``, ``vectors`` and ``sources`` of one group, each key once."""
        with self._files.locked(exclusive=False):
            every = self._files.indexes()
            files = [i for i in every if fingerprint in i.groups]
            if not files:
                known = sorted({fp for i in every for fp in i.groups})
                raise CacheError(
                    f"cache {str(self.path)!r} has no group {fingerprint!r}; it has {known}."
                )
            keys: list[str] = []
            parts: list[np.ndarray] = []
            sources: list[str] = []
            seen: set[str] = set()
            for index in files:
                # The index holds each key's first row, in the order of the rows.
                take = {k: i for k, i in index.groups[fingerprint].rows.items() if k not in seen}
                if take:
                    seen.update(take)
                    keys += list(take)
                    rows = np.fromiter(take.values(), dtype=np.int64, count=len(take))
                    vectors, names = index.read(fingerprint, rows, sources=True)
                    parts.append(vectors)
                    sources += names
            width = files[0].groups[fingerprint].width
            vectors = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
            return keys, vectors.astype(np.float32, copy=False), sources

    # ---- writing ------------------------------------------------------------

    def append(
        self,
        fingerprint: str,
        keys: Sequence[str],
        vectors: np.ndarray,
        sources: Sequence[str],
        *,
        fields: dict[str, Any] | None = None,
        label: str = "",
        failed: Sequence[tuple[str, str, str]] = (),
    ) -> int:
        """Commit one batch: rows for ``keys`` not yet stored, and ``failed`` (key, source, reason).

        Returns the number of rows written. The batch is durable when this returns.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if (len(keys) and (vectors.ndim != 2 or len(vectors) != len(keys))) or len(sources) != len(
            keys
        ):
            raise ValueError(
                f"append needs as many keys ({len(keys)}), sources ({len(sources)}) and vector "
                f"rows ({vectors.shape}) as each other"
            )
        with self._files.locked(exclusive=False):
            known: set[str] = set()
            known_failed: set[str] = set()
            width = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] > 0 else None
            files = self._files.indexes()
            if fields:
                _check_fields(files, fingerprint, fields)
            for index in files:
                grp = index.groups.get(fingerprint)
                if grp is not None:
                    if width is not None and grp.width != width:
                        raise CacheError(
                            f"cache group {fingerprint} stores vectors of width {grp.width}; got "
                            f"width {width}. The backbone changed without its fingerprint "
                            "changing."
                        )
                    width = grp.width
                    known.update(grp.rows)
                    known_failed.update(grp.failed)
            keep, seen = [], set()
            for i, k in enumerate(keys):
                if k not in known and k not in seen:
                    keep.append(i)
                    seen.add(k)
            new_failed = [f for f in failed if f[0] not in known and f[0] not in known_failed]
            if not keep and not new_failed:
                return 0
            if width is None:
                raise ValueError("append of failures alone needs vectors of shape (0, width)")
            self._files.write_segment(
                fingerprint,
                [keys[i] for i in keep],
                vectors[keep] if keep else np.zeros((0, width), np.float32),
                [sources[i] for i in keep],
                fields or {},
                label,
                new_failed,
            )
            return len(keep)

    def needs_compaction(self) -> bool:
        """True when the segments are numerous or large enough to be worth folding in."""
        segments = self._files.segments()
        if not segments:
            return False
        if len(segments) >= self.compact_segments:
            return True
        main = file_size(self.path)
        seg_bytes = sum(size for size in map(file_size, segments) if size is not None)
        return main is None or seg_bytes >= self.compact_fraction * main

    def compact(self) -> int:
        """Fold every committed segment into the main file, keeping each key once.

        The main file is copied, the segments are appended to the copy, and the copy replaces
        the main file atomically; a crash at any point loses nothing. Returns the number of
        segments folded in.
        """
        return self._files.compact()

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r})"


def _normal(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True)


def _check_fields(files: list[FileIndex], fingerprint: str, fields: dict[str, Any]) -> None:
    """Refuse a group whose stored settings are not the ones its name stands for."""
    want = _normal(fields)
    for index in files:
        grp = index.groups.get(fingerprint)
        if grp is not None and grp.fields and _normal(grp.fields) != want:
            raise CacheError(
                f"cache file {str(index.path)!r}: group {fingerprint} holds embeddings made with "
                f"{_normal(grp.fields)}, not with {want}. The file was edited or written by "
                "another program; move it aside or pass another cache= path."
            )


_CACHES: dict[str, EmbeddingCache] = {}
_CACHES_LOCK = threading.Lock()


def open_cache(path: str | os.PathLike[str]) -> EmbeddingCache:
    """Return this process's :class:`EmbeddingCache` for ``path`` (one per file, index shared)."""
    key = os.path.abspath(os.fspath(path))
    with _CACHES_LOCK:
        if key not in _CACHES:
            _CACHES[key] = EmbeddingCache(key)
        return _CACHES[key]
