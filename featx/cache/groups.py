"""Which backbone made a cache's embeddings: choose a group, rebuild the embedder's settings.

Every group of an embedding cache stores the fields of the fingerprint it was written for
(backbone, weights, cut layer, pooling, input size, resize policy, preprocessing, precision).
:func:`embedder_params_from_cache` turns them back into :class:`featx.ImageEmbedder` parameters,
so that a command run after ``featx embed`` (``featx heads``, ``featx probe``) needs the cache
alone: with one group it is used; with several, :class:`~featx.exceptions.CacheGroupError`
lists them and a fingerprint prefix (``group=``, as ``featx info`` shows it) picks one.

The rebuilt parameters are checked: they must resolve to the group's own fingerprint, so they
can never silently describe other embeddings. Nothing here builds a network.
"""

from __future__ import annotations

import os
from typing import Any

from featx.cache.store import EmbeddingCache, GroupInfo
from featx.exceptions import CacheGroupError, FeatxError

__all__ = [
    "choose_group",
    "describe_group",
    "embedder_params_from_group",
    "embedder_params_from_cache",
]


def choose_group(
    cache: str | os.PathLike[str] | EmbeddingCache,
    group: str | None = None,
    *,
    offer_backbone: bool = True,
) -> GroupInfo:
    """The group of ``cache`` to use: its only group, or the one ``group`` names.

    Parameters
    ----------
    cache : path or EmbeddingCache
        An embedding cache file.
    group : str or None, default=None
        A fingerprint, or a prefix of one that matches exactly one group (``featx info FILE``
        prints them). ``None`` when the cache holds one group.
    offer_backbone : bool, default=True
        Whether the errors offer naming the backbone instead of a group; ``False`` where only a
        group can choose (:func:`featx.cached_embeddings`).

    Returns
    -------
    GroupInfo

    Raises
    ------
    CacheGroupError
        When the cache is missing or empty, holds several groups and ``group`` is ``None``, or
        ``group`` matches no group or several. Its ``groups`` attribute lists the cache's groups.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from featx.cache.store import EmbeddingCache
    >>> path = os.path.join(tempfile.mkdtemp(), "emb.h5")
    >>> EmbeddingCache(path).append("ab12", ["a" * 64], np.ones((1, 3), np.float32), ["x.png"])
    1
    >>> choose_group(path).fingerprint
    'ab12'
    """
    store = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    path = store.path
    groups = sorted(store.groups(), key=lambda g: (-g.rows, g.fingerprint)) if store.exists() \
        else []
    listing = "; ".join(describe_group(g) for g in groups)
    if not groups:
        what = "does not exist" if not store.exists() else "holds no embeddings"
        why, instead = (
            (", so it cannot say which backbone to use", ", or name the backbone") if offer_backbone
            else ("", " (featx embed, or ImageEmbedder(..., cache=...).transform)")
        )
        raise CacheGroupError(
            f"cache file {str(path)!r} {what}{why}. Embed the images into it first{instead}.",
            cache=str(path), groups=groups,
        )
    if group is None:
        if len(groups) == 1:
            return groups[0]
        backbone = " or the backbone parameters" if offer_backbone else ""
        raise CacheGroupError(
            f"cache {str(path)!r} holds {len(groups)} groups (one per backbone configuration); "
            f"pass group= (a fingerprint or a unique prefix of one){backbone} to choose: "
            f"{listing}.", cache=str(path), groups=groups,
        )
    matches = [g for g in groups if g.fingerprint.startswith(group.strip())]
    if len(matches) != 1 or not group.strip():
        what = "no group" if not matches else f"{len(matches)} groups"
        raise CacheGroupError(
            f"group {group!r} matches {what} of cache {str(path)!r}; expected one. Its groups: "
            f"{listing}.", cache=str(path), groups=groups, prefix=group,
        )
    return matches[0]


def describe_group(group: GroupInfo) -> str:
    """One line: fingerprint, label and rows (how listings and errors show a group)."""
    return f"{group.fingerprint} ({group.label}; {group.rows} rows)"


def embedder_params_from_group(group: GroupInfo) -> dict[str, Any]:
    """The :class:`featx.ImageEmbedder` parameters that made a cache group's embeddings.

    Parameters
    ----------
    group : GroupInfo
        A group of a cache (:meth:`featx.EmbeddingCache.groups`, :func:`choose_group`).

    Returns
    -------
    dict
        ``backbone``, ``weights``, ``layer``, ``pooling``, ``input_size``, ``resize``,
        ``preprocess`` and ``precision`` (and ``engine`` in reduced precision): pass them to
        ``ImageEmbedder(**params, cache=...)``. They resolve to the group's fingerprint.

    Raises
    ------
    FeatxError
        When the stored fields cannot be turned back into parameters that give the same
        fingerprint: a model file that is no longer where it was (or changed), a weights file,
        an in-memory model or function, a custom preprocessing function, or embeddings made by
        another Keras version or featx embedding format. The message says what to pass instead.

    Examples
    --------
    >>> from featx.nets.backbones import resolve_backbone
    >>> from featx.cache.store import GroupInfo
    >>> cfg = resolve_backbone("mobilenet", input_size=160, pooling="max")
    >>> info = GroupInfo(cfg.fingerprint, cfg.fingerprint_fields, cfg.label, 1024, 10)
    >>> params = embedder_params_from_group(info)
    >>> params["backbone"], params["input_size"], params["pooling"], params["weights"]
    ('mobilenet', 160, 'max', 'imagenet')
    """
    from featx.nets.backbones import resolve_backbone
    from featx.nets.fingerprint import Fingerprint
    from featx.nets.options import EMBEDDER_OPTIONS, KEEP, Stored

    fields = dict(group.fields)
    where = f"cache group {describe_group(group)}"
    if not fields:
        raise FeatxError(f"{where} stores no fingerprint fields; name the backbone yourself.")
    stored = Stored(Fingerprint.from_fields(fields), group.label, where)
    params: dict[str, Any] = {}
    for option in EMBEDDER_OPTIONS:
        value = option.stored(stored) if option.stored is not None else KEEP
        if value is not KEEP:
            params[option.name] = value
    config = resolve_backbone(**params)
    if config.fingerprint != group.fingerprint or config.fingerprint_fields != fields:
        now = config.fingerprint_fields
        differ = ", ".join(
            f"{k}: {fields.get(k)!r} in the cache, {now.get(k)!r} here"
            for k in sorted(set(fields) | set(now)) if fields.get(k) != now.get(k)
        )
        unnamed = "its name is not its fields' digest"
        raise FeatxError(
            f"{where} cannot be used as it is: {differ or unnamed}. "
            "Its embeddings were made by another version (Keras, or featx's embedding format); "
            "embed the images again with this one."
        )
    return params


def embedder_params_from_cache(
    cache: str | os.PathLike[str], *, group: str | None = None
) -> dict[str, Any]:
    """The :class:`featx.ImageEmbedder` parameters that made the embeddings in ``cache``.

    :func:`choose_group` then :func:`embedder_params_from_group`: what ``featx heads`` (and
    ``featx probe``) use when no backbone is named.

    Parameters
    ----------
    cache : path
        An embedding cache file.
    group : str or None, default=None
        A fingerprint prefix choosing one of several groups.

    Returns
    -------
    dict
        Parameters for ``ImageEmbedder(**params, cache=cache)``.

    Raises
    ------
    CacheGroupError
        When no group, or more than one, fits (see :func:`choose_group`).
    FeatxError
        When the group's fields cannot be rebuilt (see :func:`embedder_params_from_group`).
    """
    return embedder_params_from_group(choose_group(cache, group))
