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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.cache.blocks import Block, plan_pieces, read_blocks
from featx.cache.failure import Failure
from featx.cache.files import CACHE_FORMAT_VERSION, CacheFiles, FileIndex, UnreadableFile
from featx.cache.index import Digests, digests_of, first_rows, hex_keys
from featx.cache.merge import compact_all, merge_newest
from featx.exceptions import CacheError

__all__ = ["EmbeddingCache", "GroupInfo", "CACHE_FORMAT_VERSION", "open_cache"]


def _env_int(name: str, default: int, minimum: int) -> int:
    """An integer setting from the environment, or ``default``."""
    text = os.environ.get(name, "")
    if not text:
        return default
    if not text.isdigit() or int(text) < minimum:
        raise CacheError(
            f"{name}={text!r} is not valid; expected an integer of at least {minimum}."
        )
    return int(text)


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

    #: How many files of one tier are merged into one of the next (see
    #: :mod:`featx.cache.merge`): at most ``merge_fanin - 1`` files per tier stay on disk. 16:
    #: a million rows in batches of 32 were written 4.65 times in all (10: 5.83 times,
    #: measured with ``python -m benchmarks.scale``), in at most 61 files.
    #: ``$FEATX_MERGE_FANIN`` sets it for a process (the crash tests merge every 2 files), as
    #: ``$FEATX_MERGE_BASE_ROWS`` sets the next.
    merge_fanin = _env_int("FEATX_MERGE_FANIN", 16, 2)
    #: The rows of a tier-0 file (a batch); tier t holds files of ``base * fanin**t`` rows.
    merge_base_rows = _env_int("FEATX_MERGE_BASE_ROWS", 32, 1)
    #: Merge as commits go (False keeps every segment until :meth:`compact`; for tests).
    merge = True

    def __init__(self, path: str | os.PathLike[str]):
        self._files = CacheFiles(Path(path))
        self.path = self._files.path
        self.segment_dir = self._files.segment_dir

    def exists(self) -> bool:
        """True when the main file or any committed segment exists."""
        return self._files.exists()

    @property
    def bytes_written(self) -> int:
        """Bytes this object committed to disk (segments and merges), for benchmarks."""
        return self._files.bytes_written

    # ---- reading ------------------------------------------------------------

    def lookup(
        self, fingerprint: str, keys: Sequence[str], *, fields: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Find ``keys`` in the fingerprint's group.

        ``fields``, when given, are the settings the group must have been written for; a group
        of that name written for other settings raises :class:`CacheError` rather than serving
        rows that mean something else. Costs O(len(keys) x log N), whatever the cache's size.

        Returns
        -------
        found : ndarray of bool, shape (len(keys),)
        vectors : ndarray of float32, shape (found.sum(), width)
            The stored rows of the found keys, in the order of ``keys``.
        """
        found = np.zeros(len(keys), dtype=bool)
        if not len(keys) or not self.exists():
            return found, np.zeros((0, 0), np.float32)
        query = digests_of(keys)
        with self._files.locked(exclusive=False):
            files = self._files.indexes()
            if fields is not None:
                _check_fields(files, fingerprint, fields)
            where = _where(files, fingerprint, query)
            found = where[:, 0] >= 0
            if not found.any():
                return found, np.zeros((0, 0), np.float32)
            hits = np.flatnonzero(found)
            width = next(f.groups[fingerprint].width for f in files if fingerprint in f.groups)
            out = np.empty((len(hits), width), np.float32)
            readable = np.ones(len(hits), dtype=bool)
            for n in np.unique(where[hits, 0]).tolist():
                mine = np.flatnonzero(where[hits, 0] == n)
                try:
                    out[mine] = files[n].read(fingerprint, where[hits[mine], 1])[0]
                except UnreadableFile as exc:  # damaged on disk since it was indexed
                    if files[n].path == self.path:
                        raise
                    self._files.drop_damaged(files[n], exc)
                    readable[mine] = False
            if not readable.all():
                found[hits[~readable]] = False
                out = out[readable]
            return found, out

    def contains(
        self, fingerprint: str, keys: Sequence[str], *, fields: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Which of ``keys`` the group stores a row for; reads no vector. ``fields`` as in
        :meth:`lookup`."""
        if not len(keys) or not self.exists():
            return np.zeros(len(keys), dtype=bool)
        query = digests_of(keys)
        with self._files.locked(exclusive=False):
            files = self._files.indexes()
            if fields is not None:
                _check_fields(files, fingerprint, fields)
            return _stored(files, fingerprint, query)

    def failures(self, fingerprint: str, keys: Sequence[str]) -> dict[str, str]:
        """Reasons recorded for the ``keys`` that failed to decode before: key -> reason."""
        if not keys or not self.exists():
            return {}
        with self._files.locked(exclusive=False):
            out: dict[str, str] = {}
            groups = [f.groups[fingerprint] for f in self._files.indexes()
                      if fingerprint in f.groups and f.groups[fingerprint].failed]
            for k in keys:
                for grp in groups:
                    if k in grp.failed:
                        out.setdefault(k, grp.failed[k])
                        break
            return out

    def known_keys(
        self, fingerprint: str, *, fields: dict[str, Any] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """Every key the group stores a row for (sorted), and every remembered failure (key ->
        reason) whose key has no row; read from the key index, never from the vectors.

        For callers that look keys up elsewhere (the Ray workers get them once per run); see
        :meth:`known_key_array` for the same keys as one array. ``fields`` as in :meth:`lookup`.
        """
        keys, failed = self.known_key_array(fingerprint, fields=fields)
        return [k.decode("ascii") for k in keys], failed

    def known_key_array(
        self, fingerprint: str, *, fields: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, str]]:
        """:meth:`known_keys` as a sorted ``S64`` array (64 bytes a key, no Python strings)."""
        if not self.exists():
            return np.zeros(0, "S64"), {}
        with self._files.locked(exclusive=False):
            files = self._files.indexes()
            if fields is not None:
                _check_fields(files, fingerprint, fields)
            parts = [f.groups[fingerprint].digests_in_row_order() for f in files
                     if fingerprint in f.groups]
            keys = np.unique(hex_keys(np.concatenate(parts))) if parts else np.zeros(0, "S64")
            return keys, _failures_without_rows(files, fingerprint)

    def groups(self) -> list[GroupInfo]:
        """Describe every group; rows are counted once across the main file and segments.

        Costs O(N): each file's keys are looked up in the files before it.
        """
        if not self.exists():
            return []
        with self._files.locked(exclusive=False):
            files = self._files.indexes()
            out: dict[str, GroupInfo] = {}
            for fp in dict.fromkeys(fp for f in files for fp in f.groups):
                mine = [f.groups[fp] for f in files if fp in f.groups]
                rows = sum(len(first_rows(g, mine[:i])) for i, g in enumerate(mine))
                first = mine[0]
                out[fp] = GroupInfo(fingerprint=fp, fields=first.fields, label=first.label,
                                    width=first.width, rows=rows,
                                    failures=len(_failures_without_rows(files, fp)))
            return list(out.values())

    def read_group(self, fingerprint: str) -> tuple[list[str], np.ndarray, list[str]]:
        """Return every stored ``keys``, ``vectors`` and ``sources`` of one group, each key once.

        The whole group in memory: to read more than fits, see ``docs/cache-format.md``.
        """
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
            groups = [f.groups[fingerprint] for f in files]
            for i, index in enumerate(files):
                rows = first_rows(groups[i], groups[:i])
                if len(rows):
                    raw = groups[i].digests_in_row_order()[rows]
                    keys += [k.decode("ascii") for k in hex_keys(raw)]
                    vectors, names = index.read(fingerprint, rows, sources=True)
                    parts.append(vectors)
                    sources += names
            width = groups[0].width
            vectors = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
            return keys, vectors.astype(np.float32, copy=False), sources

    def blocks(
        self, fingerprint: str, *, block_rows: int = 8192, seed: int | None = None,
        sources: bool = False,
    ) -> Iterator[Block]:
        """Every row of one group once, as :class:`~featx.cache.blocks.Block` s of at most
        ``block_rows`` rows (keys, vectors and, with ``sources=True``, each row's stored source),
        never the whole group in memory.

        Without a seed the rows come file by file in stored order; with one, in a seeded
        shuffled order (chunks of 256 rows drawn from every file, then each block shuffled):
        what a head that trains by blocks needs. The pass reads one snapshot of the files
        (opened when it starts), whatever merges happen meanwhile. Memory: one block, plus 40
        bytes a row for the plan (:func:`featx.cache.blocks.plan_pieces`).

        Raises
        ------
        CacheError
            If the group is not in the cache, or a file cannot be read (the message names it).

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> cache = EmbeddingCache(os.path.join(tempfile.mkdtemp(), "emb.h5"))
        >>> keys = [f"{i:064x}" for i in range(5)]
        >>> cache.append("fp0", keys, np.eye(5, dtype=np.float32), [f"{i}.png" for i in range(5)])
        5
        >>> [len(b) for b in cache.blocks("fp0", block_rows=2, seed=0)]
        [2, 2, 1]
        >>> block = next(cache.blocks("fp0", block_rows=2, sources=True))
        >>> block.keys[1][-4:], block.vectors[1].tolist(), block.sources.tolist()
        (b'0001', [0.0, 1.0, 0.0, 0.0, 0.0], ['0.png', '1.png'])
        """
        pieces = plan_pieces(self._files, fingerprint)
        return read_blocks(self._files, fingerprint, pieces, block_rows=block_rows, seed=seed,
                           sources=sources)

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
        failed: Sequence[Failure] = (),
    ) -> int:
        """Commit one batch: rows for ``keys`` not yet stored, and ``failed``, the items that could
        not be decoded (each :class:`~featx.cache.failure.Failure` with its ``key``).

        Returns the number of rows written. The batch is durable when this returns. Costs
        O(len(keys) x log N) plus the write; then the newest files are merged when they make a
        full tier (:mod:`featx.cache.merge`), which costs O(log N) per row over a run.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if (len(keys) and (vectors.ndim != 2 or len(vectors) != len(keys))) or len(sources) != len(
            keys
        ):
            raise ValueError(
                f"append needs as many keys ({len(keys)}), sources ({len(sources)}) and vector "
                f"rows ({vectors.shape}) as each other"
            )
        query = digests_of(keys)
        with self._files.locked(exclusive=False):
            width = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] > 0 else None
            files = self._files.indexes()
            if fields:
                _check_fields(files, fingerprint, fields)
            known_failed: set[str] = set()
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
                    if grp.failed:
                        known_failed.update(f.key for f in failed if f.key in grp.failed)
            stored = _stored(files, fingerprint, query)
            keep, seen = [], set()
            for i in np.flatnonzero(~stored).tolist():
                k = keys[i]
                if k not in seen:
                    keep.append(i)
                    seen.add(k)
            new_failed = []
            if failed:
                failed_stored = _stored(files, fingerprint, digests_of([_key(f) for f in failed]))
                new_failed = [f for f, has_row in zip(failed, failed_stored, strict=True)
                              if not has_row and f.key not in known_failed]
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
        if self.merge:
            merge_newest(self._files, self.merge_fanin, self.merge_base_rows)
        return len(keep)

    def maintain(self) -> int:
        """Merge the newest files while they make a full tier; return how many were merged.

        :meth:`append` does this after each commit (unless :attr:`merge` is False).
        """
        return merge_newest(self._files, self.merge_fanin, self.merge_base_rows)

    def compact(self) -> int:
        """Fold every committed segment into the main file, keeping each key once.

        The main file and the segments are written to a new file that replaces the main file
        atomically; a crash at any point loses nothing. Returns the number of segments folded
        in. Rarely needed: commits merge as they go, keeping O(log N) files.
        """
        return compact_all(self._files)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r})"


def _key(failure: Failure) -> str:
    """The key the cache remembers ``failure`` by (a failure without one cannot be stored)."""
    if failure.key is None:
        raise ValueError(f"the cache remembers failures by content key; {failure} has none")
    return failure.key


def _stored(files: list[FileIndex], fingerprint: str, query: Digests) -> np.ndarray:
    """Which queried keys some file holds a row for."""
    return _where(files, fingerprint, query)[:, 0] >= 0


def _failures_without_rows(files: list[FileIndex], fingerprint: str) -> dict[str, str]:
    """Every remembered failure (key -> its first reason) whose key no file has a row for."""
    failed: dict[str, str] = {}
    for f in files:
        grp = f.groups.get(fingerprint)
        if grp is not None:
            for k, reason in grp.failed.items():
                failed.setdefault(k, reason)
    if not failed:
        return failed
    stored = _stored(files, fingerprint, digests_of(list(failed)))
    return {k: r for (k, r), has_row in zip(failed.items(), stored, strict=True) if not has_row}


def _where(files: list[FileIndex], fingerprint: str, query: Digests) -> np.ndarray:
    """``(len(query), 2)``: the first file (by number) holding each key and its row there, or
    -1, -1."""
    where = np.full((len(query), 2), -1, dtype=np.int64)
    todo = np.arange(len(query))
    for n, index in enumerate(files):
        grp = index.groups.get(fingerprint)
        if grp is None or not len(todo):
            continue
        rows = grp.find(query.take(todo))
        hit = rows >= 0
        where[todo[hit], 0] = n
        where[todo[hit], 1] = rows[hit]
        todo = todo[~hit]
    return where


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
