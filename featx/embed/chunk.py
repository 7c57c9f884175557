"""One chunk of the engine's work, in steps: :func:`content_keys`, :func:`lookup`,
:func:`to_compute` and :func:`deduplicate` before the network; :func:`failed_duplicates` and
:func:`assemble` after it.

Each step is a function of plain values (items, keys, a cache), so that each can be tested by
itself; :mod:`featx.embed.engine` runs them, with the network and the cache writers between.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from featx.cache.store import EmbeddingCache
from featx.embed.images import Item
from featx.exceptions import ImageLoadError
from featx.nets.backbones import BackboneConfig

__all__ = ["Lookup", "Plan", "assemble", "content_keys", "deduplicate", "failed_duplicates",
           "lookup", "safe_key", "to_compute"]


@dataclass
class Lookup:
    """What the cache holds of one chunk.

    Attributes
    ----------
    found : list of ndarray of bool
        Per configuration, which positions its group holds.
    hits : list of ndarray
        Per configuration, the rows of the positions found, in order (empty when rows are not
        read).
    remembered : list of ImageLoadError
        Positions whose content failed to decode in a run before (not tried again).
    """

    found: list[np.ndarray]
    hits: list[np.ndarray]
    remembered: list[ImageLoadError]

    @classmethod
    def nothing(cls, n: int, k: int) -> Lookup:
        """Nothing found: a run without a cache."""
        return cls([np.zeros(n, dtype=bool) for _ in range(k)],
                   [np.zeros((0, 0), np.float32)] * k, [])

    @property
    def found_all(self) -> np.ndarray:
        """The positions every group holds: cache hits."""
        return np.logical_and.reduce(self.found)


@dataclass
class Plan:
    """Which positions of a chunk go through the network.

    Attributes
    ----------
    todo : list of int
        The positions to compute: not in the cache, not failed.
    unique : list of int
        Of ``todo``, the first position of each content (and every position without a key).
    first_of : dict
        Content key -> the position that stands for it.
    """

    todo: list[int]
    unique: list[int]
    first_of: dict[str, int]

    def source(self, i: int, key: str | None) -> int:
        """The position whose row position ``i`` (of content ``key``) takes."""
        return self.first_of.get(key, i) if key is not None else i


def content_keys(
    items: Sequence[Item], pool: ThreadPoolExecutor
) -> tuple[list[str | None], list[ImageLoadError]]:
    """Each item's content key (None where it could not be read) and the errors of those that
    could not (``index`` their position), hashed in ``pool``'s threads."""
    keys: list[str | None] = []
    failed: list[ImageLoadError] = []
    for i, result in enumerate(pool.map(safe_key, items)):
        if isinstance(result, ImageLoadError):
            result.index = i
            failed.append(result)
            keys.append(None)
        else:
            keys.append(result)
    return keys, failed


def lookup(
    cache: EmbeddingCache,
    configs: Sequence[BackboneConfig],
    groups: Sequence[str],
    items: Sequence[Item],
    keys: Sequence[str | None],
    *,
    keep_rows: bool = True,
    retry_failed: bool = False,
) -> Lookup:
    """What ``cache`` holds of the items with ``keys``, per configuration's group (only whether,
    without ``keep_rows``: no vector is read); unless ``retry_failed``, the items it remembers
    failing on and no group holds fail again at once."""
    n = len(keys)
    known = [i for i in range(n) if keys[i] is not None]
    known_keys = [str(keys[i]) for i in known]
    found = [np.zeros(n, dtype=bool) for _ in configs]
    hits: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(configs)
    for c, (config, group) in enumerate(zip(configs, groups, strict=True)):
        if keep_rows:
            mask, hits[c] = cache.lookup(group, known_keys, fields=config.fingerprint_fields)
        else:
            mask = cache.contains(group, known_keys, fields=config.fingerprint_fields)
        found[c][np.asarray(known, dtype=np.int64)[mask]] = True
    remembered: list[ImageLoadError] = []
    if not retry_failed:
        missing = [i for i in known if not all(f[i] for f in found)]
        reasons: dict[str, str] = {}
        for group in groups:
            reasons.update(cache.failures(group, [str(keys[i]) for i in missing]))
        remembered = [ImageLoadError(items[i].name, reasons[str(keys[i])], i,
                                     retry_param="retry_failed")
                      for i in missing if keys[i] in reasons]
    return Lookup(found, hits, remembered)


def to_compute(held: Lookup, failed: Sequence[ImageLoadError]) -> list[int]:
    """The positions neither found in the cache nor failed already."""
    failed_at = {e.index for e in failed}
    return [i for i in np.flatnonzero(~held.found_all).tolist() if i not in failed_at]


def deduplicate(todo: Sequence[int], keys: Sequence[str | None]) -> Plan:
    """Each content computed once: the first position with a key stands for the rest."""
    first_of: dict[str, int] = {}
    unique: list[int] = []
    for i in todo:
        key = keys[i]
        if key is None or key not in first_of:
            if key is not None:
                first_of[key] = i
            unique.append(i)
    return Plan(list(todo), unique, first_of)


def failed_duplicates(items: Sequence[Item], keys: Sequence[str | None], plan: Plan,
                      failed: Sequence[ImageLoadError]) -> list[ImageLoadError]:
    """Duplicates of an item that failed fail too."""
    bad = {e.index for e in failed}
    return [ImageLoadError(items[i].name, "same content as a failed item", i)
            for i in plan.todo
            if (key := keys[i]) is not None and plan.first_of.get(key, i) in bad
            and i not in bad]


def assemble(widths: Sequence[int], held: Lookup, plan: Plan, keys: Sequence[str | None],
             rows: Sequence[dict[int, np.ndarray]]) -> list[np.ndarray]:
    """Each configuration's rows in input order: the cache's hits, then what the network gave
    (a duplicate takes its first position's row); NaN where nothing came."""
    n = len(keys)
    outs = [np.full((n, w), np.nan, dtype=np.float32) for w in widths]
    for out, found, hits, by_position in zip(outs, held.found, held.hits, rows, strict=True):
        if found.any():
            out[found] = hits
        for i in plan.todo:
            src = plan.source(i, keys[i])
            if src in by_position:
                out[i] = by_position[src]
    return outs


def safe_key(item: Item) -> str | ImageLoadError:
    """``item``'s content key, or the error reading it raised (for a thread pool's map)."""
    try:
        return item.key()
    except ImageLoadError as exc:
        return exc
