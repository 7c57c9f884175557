"""The key index of a cache file: each group's keys as sorted 32-byte digests, found in bulk.

A key is the sha256 of an item's content, stored in the file as 64 hex characters. In memory a
group's keys are their 32 raw bytes, sorted by their first 8 bytes (a ``uint64``), with the row
each one is stored at: finding a batch of keys is one ``np.searchsorted`` and one comparison of
the full digests, whatever the size of the file. A million keys take 48 MB (32 bytes of digest,
8 of prefix and 8 of row each), against some 150 MB for a Python dict of hex strings.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Digests", "GroupIndex", "digests_of", "first_rows", "hex_keys", "prefix_of"]

#: Digest bytes per key.
DIGEST = 32


@dataclass(frozen=True)
class Digests:
    """A batch of keys as raw digests ``(n, 32) uint8`` and their 8-byte prefixes ``(n,)``."""

    raw: np.ndarray
    prefix: np.ndarray

    def __len__(self) -> int:
        return len(self.raw)

    def take(self, positions: np.ndarray) -> Digests:
        return Digests(self.raw[positions], self.prefix[positions])


def prefix_of(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw[:, :8]).view(np.uint64).ravel()


def digests_of(keys: Sequence[str] | np.ndarray) -> Digests:
    """The digests of hex keys (a sequence of str, or an ``S64`` array as stored).

    Raises
    ------
    ValueError
        If a key is not 64 hexadecimal characters.
    """
    n = len(keys)
    if isinstance(keys, np.ndarray) and keys.dtype == np.dtype("S64"):
        text = keys.tobytes()
    else:
        if any(len(k) != 2 * DIGEST for k in keys):
            bad = next(k for k in keys if len(k) != 2 * DIGEST)
            raise ValueError(f"cache keys are 64 hexadecimal characters (a sha256); got {bad!r}")
        text = "".join(keys).encode("ascii", "replace")
    try:
        raw = np.frombuffer(binascii.unhexlify(text), np.uint8).reshape(n, DIGEST)
    except (binascii.Error, ValueError):
        raise ValueError(
            "cache keys are 64 hexadecimal characters (a sha256); got a key that is not"
        ) from None
    return Digests(raw, prefix_of(raw))


def hex_keys(raw: np.ndarray) -> np.ndarray:
    """Digests ``(n, 32) uint8`` back to the stored form, an ``S64`` array of hex keys."""
    text = binascii.hexlify(np.ascontiguousarray(raw).tobytes())
    return np.frombuffer(text, dtype="S64").copy() if len(raw) else np.zeros(0, "S64")


class GroupIndex:
    """One group of one file: its settings, its keys (sorted digests) and remembered failures.

    Parameters
    ----------
    width, fields, label
        The group's attributes.
    keys : Digests
        The group's keys in row order (row i holds ``keys.raw[i]``).
    failed : dict, optional
        Hex key -> reason, for items that could not be decoded (few: kept as a dict).
    """

    def __init__(self, width: int, fields: dict[str, Any], label: str, keys: Digests,
                 failed: dict[str, str] | None = None):
        self.width = width
        self.fields = fields
        self.label = label
        self.failed = failed or {}
        order = np.argsort(keys.prefix, kind="stable")  # equal prefixes keep their row order
        self._prefix = keys.prefix[order]
        self._raw = keys.raw[order]
        self._rows = order.astype(np.int64)

    @property
    def n(self) -> int:
        """The number of rows."""
        return len(self._rows)

    def find(self, query: Digests) -> np.ndarray:
        """The row of each queried key, or -1 where the group does not hold it (first row wins)."""
        rows = np.full(len(query), -1, dtype=np.int64)
        if not self.n or not len(query):
            return rows
        pos = np.searchsorted(self._prefix, query.prefix, side="left")
        at = np.minimum(pos, self.n - 1)
        same_prefix = self._prefix[at] == query.prefix
        hit = same_prefix & (self._raw[at] == query.raw).all(axis=1)
        rows[hit] = self._rows[at[hit]]
        # Two different keys sharing 8 bytes (about 1 in 10^7 at ten million keys): look on.
        for j in np.flatnonzero(same_prefix & ~hit):
            p = int(pos[j]) + 1
            while p < self.n and self._prefix[p] == query.prefix[j]:
                if (self._raw[p] == query.raw[j]).all():
                    rows[j] = self._rows[p]
                    break
                p += 1
        return rows

    def contains(self, query: Digests) -> np.ndarray:
        """Which queried keys the group holds (a boolean mask)."""
        return self.find(query) >= 0

    def digests_in_row_order(self) -> np.ndarray:
        """Every key's digest, row 0 first: ``(n, 32) uint8``."""
        out = np.empty_like(self._raw)
        out[self._rows] = self._raw
        return out

    @property
    def nbytes(self) -> int:
        """Memory held by the index (not counting failures)."""
        return self._prefix.nbytes + self._raw.nbytes + self._rows.nbytes


def first_rows(group: GroupIndex, earlier: list[GroupIndex]) -> np.ndarray:
    """The rows of ``group`` whose keys no earlier file holds, each key's first row only: what
    a reader sees of this file (first file wins) and what a merge copies of it."""
    raw = group.digests_in_row_order()
    query = Digests(raw, prefix_of(raw))
    keep = group.find(query) == np.arange(group.n)
    for other in earlier:
        keep &= ~other.contains(query)
    return np.flatnonzero(keep)
