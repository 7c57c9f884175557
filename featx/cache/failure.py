"""One item that could not be embedded, as a record: :class:`Failure`.

The engine hands failures to the cache writer, the store remembers them in its files (by key, so
that a rerun does not try them again), and :class:`featx.embed.engine.EmbeddingReport` lists
them (by position in the input). One record with named fields for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Failure"]


@dataclass(frozen=True, kw_only=True)
class Failure:
    """An item that could not be read or decoded.

    Attributes
    ----------
    source : str
        A printable name of the item (its path, or a description such as ``"array[3]"``).
    reason : str
        What went wrong. In a report, a failure remembered from an earlier run also says how to
        try it again.
    key : str or None
        The item's content key, where it was read (the cache remembers failures by key).
    index : int or None
        The item's position in the input, in a report.

    Examples
    --------
    >>> from featx.cache.failure import Failure
    >>> f = Failure(source="a.png", reason="truncated", index=3)
    >>> f.index, f.source, f.reason
    (3, 'a.png', 'truncated')
    """

    source: str
    reason: str
    key: str | None = None
    index: int | None = None
