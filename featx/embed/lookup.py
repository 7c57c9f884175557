"""Reading images' rows from an embedding cache by content, embedding nothing.

:func:`cached_embeddings` gives the rows of images in the order given; :func:`image_keys` hashes
images into their content keys a chunk at a time; :func:`require_keys` refuses keys a cache
group does not hold with one line naming the command that embeds them. The heads
(:func:`featx.tune_heads` on a cache file) and the audit (:func:`featx.audit`) read rows
through them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["cached_embeddings", "image_keys", "require_keys"]


def cached_embeddings(
    cache: str | os.PathLike[str], images: Any, *, group: str | None = None
) -> np.ndarray:
    """Read the embeddings of ``images`` from a cache file, by content; embed nothing.

    Parameters
    ----------
    cache : path
        An embedding cache written by :class:`featx.ImageEmbedder` or ``featx embed``.
    images : sequence of paths, or anything :class:`featx.ImageEmbedder` takes
        The images, in the order wanted. Each is hashed (a file is read, not decoded) and its
        row found in the cache.
    group : str or None, default=None
        The fingerprint (or a unique prefix of it) of the cache group to read; ``None`` when the
        cache holds one group. ``featx info FILE`` lists the groups.

    Returns
    -------
    embeddings : ndarray of float32, shape (len(images), width)

    Raises
    ------
    CacheGroupError
        If the cache does not exist or is empty, or the group is ambiguous or unknown (see
        :func:`featx.cache.groups.choose_group`; the message lists the groups).
    FeatxError
        If an image is not in the group (the message says how to embed it).
    """
    from featx.cache.groups import choose_group
    from featx.cache.store import EmbeddingCache
    from featx.embed.images import as_items

    store = EmbeddingCache(cache)
    chosen = choose_group(store, group, offer_backbone=False)
    items, _ = as_items(images)
    keys = [item.key() for item in items]
    found, vectors = store.lookup(chosen.fingerprint, keys)
    if not found.all():
        missing = np.flatnonzero(~found)
        names = ", ".join(items[i].name for i in missing[:3])
        raise FeatxError(
            f"{len(missing)} of {len(items)} images are not in cache group {chosen.fingerprint} "
            f"({chosen.label}) of {str(cache)!r}, e.g. {names}. Embed them first (featx embed "
            f"SRC --cache {cache}, or ImageEmbedder(..., cache=...).transform), or leave them "
            "out."
        )
    return vectors


def image_keys(images: Any, *, chunk: int = 4096) -> np.ndarray:
    """The content keys of ``images`` as an ``S64`` array (each file read, not decoded).

    Hashed a chunk at a time on the engine's decode threads: memory is the keys (64 bytes an
    image) plus one chunk of items, however many images there are.

    Raises
    ------
    FeatxError
        If an image cannot be read (the message names it).
    """
    from concurrent.futures import ThreadPoolExecutor

    from featx.embed.images import as_items
    from featx.exceptions import ImageLoadError

    out = np.empty(len(images), "S64")
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    with ThreadPoolExecutor(min(16, max(2, workers))) as pool:  # reading files: I/O-bound
        for lo in range(0, len(images), chunk):
            items, _ = as_items(images[lo:lo + chunk])
            try:
                out[lo:lo + len(items)] = list(pool.map(lambda item: item.key(), items))
            except ImageLoadError as exc:
                raise FeatxError(
                    f"{exc}; leave the image out (featx heads leaves out what featx embed "
                    "could not read) or replace it."
                ) from None
    return out


def require_keys(store: Any, fingerprint: str, keys: np.ndarray, cache: Any, label: str) -> None:
    """Refuse keys (``S64``) the group does not hold, naming the command that embeds them.

    The group's index answers a block of keys at a time, so memory stays the keys given.
    """
    missing = 0
    for lo in range(0, len(keys), 65536):
        missing += int((~store.contains(fingerprint, keys[lo:lo + 65536])).sum())
    if missing:
        raise FeatxError(
            f"{missing:,} of {len(keys):,} images are not in cache group {fingerprint} ({label}) "
            f"of {str(cache)!r}. Embed them first (featx embed SRC --cache {cache}), or leave "
            "them out."
        )
