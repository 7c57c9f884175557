"""Committing embeddings to the cache on a thread of its own: :class:`CacheWriter`.

The engine (one writer per cut) and the Ray driver (one for the run) hand it batches of rows as
they come off the network; it commits them while the next batch runs.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from featx.cache.failure import Failure
from featx.cache.store import EmbeddingCache
from featx.nets.backbones import BackboneConfig

__all__ = ["CacheWriter"]


class CacheWriter:
    """Commits batches to the cache on a thread of its own, off the network's critical path.

    The queue is bounded, so a slow disk slows the run down rather than filling memory. Batches
    that queue up while a commit runs are committed together.

    Parameters
    ----------
    cache : EmbeddingCache
    group : str
        The cache group the rows go to (:func:`featx.embed.engine.cache_group`).
    config : BackboneConfig
        Whose fingerprint fields and label the group records.
    """

    def __init__(self, cache: EmbeddingCache, group: str, config: BackboneConfig):
        self._cache = cache
        self._group = group
        self._fields = config.fingerprint_fields
        self._label = config.label
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featx-cache-writer", daemon=True)
        self._thread.start()

    def put(self, keys: list[str], vectors: np.ndarray, sources: list[str],
            failed: list[Failure]) -> None:
        """Queue rows (``keys``, ``vectors``, ``sources``) and the failures to remember (each
        with its key) for commit; raise an earlier commit's error."""
        if self._error is not None:
            raise self._error
        if keys or failed:
            self._queue.put((keys, vectors, sources, failed))

    def _run(self) -> None:
        done = False
        while not done:
            batches = [self._queue.get()]
            while True:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batches[-1] is None:
                batches.pop()
                done = True
            if not batches or self._error is not None:
                continue
            try:
                self._cache.append(
                    self._group,
                    [k for b in batches for k in b[0]],
                    np.concatenate([b[1] for b in batches]),
                    [src for b in batches for src in b[2]],
                    fields=self._fields, label=self._label,
                    failed=[f for b in batches for f in b[3]],
                )
            except BaseException as exc:  # reported by close()
                self._error = exc

    def close(self) -> None:
        """Wait until every queued batch is committed; raise the first commit error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
