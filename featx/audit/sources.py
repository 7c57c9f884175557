"""What a cache remembers of its rows' origins: the source name stored with each content key."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featx.cache.files import CacheFiles, open_h5, reading, text
from featx.cache.index import digests_of

__all__ = ["cached_sources"]


def cached_sources(cache: str | os.PathLike[str] | Any, fingerprint: str,
                   keys: Sequence[str]) -> list[str | None]:
    """The source name (a path, ``"array[3]"``, ...) stored with each of ``keys`` in a group;
    ``None`` for a key the group does not hold. Reads the key indexes and only the rows asked
    for, never the group's sources column whole.

    Parameters
    ----------
    cache : path or EmbeddingCache
    fingerprint : str
        The group's full fingerprint.
    keys : sequence of str
        Content keys (64 hex characters).
    """
    path = Path(getattr(cache, "path", cache))
    out: list[str | None] = [None] * len(keys)
    if not len(keys):
        return out
    files = CacheFiles(path)
    if not files.exists():
        return out
    query = digests_of(list(keys))
    todo = np.arange(len(keys))
    with files.locked(exclusive=False):
        for index in files.indexes():
            grp = index.groups.get(fingerprint)
            if grp is None or not len(todo):
                continue
            rows = grp.find(query.take(todo))
            hit = rows >= 0
            if not hit.any():
                continue
            order = np.argsort(rows[hit])
            wanted = rows[hit][order]
            uniq, inverse = np.unique(wanted, return_inverse=True)
            with open_h5(index.path, "r") as f, reading(index.path):
                names = f[f"embeddings/{fingerprint}/sources"][uniq.tolist()]
            for at, name in zip(todo[hit][order].tolist(), names[inverse.ravel()], strict=True):
                out[at] = text(name)
            todo = todo[~hit]
    return out
