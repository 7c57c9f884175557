"""Items listed lazily: :class:`ItemStream`, the face every large source shows the engine.

A stream is re-iterable (each pass reads its source again) and never holds a list of its
items: a folder is walked one folder at a time, a tar shard read member by member, a Parquet
file a record batch at a time. It splits into :meth:`ItemStream.parts`: small, picklable
references (one shard, one Parquet part, the whole of a listing) that another process can
iterate by itself, reading the storage on its own (what Ray workers are sent).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

from featx.embed.item import Item

__all__ = ["ItemStream", "ChainedStream", "ItemList", "known_count"]


class ItemStream(ABC):
    """Items read from their source when iterated, in a fixed order.

    Attributes
    ----------
    count : int or None
        How many items a pass yields, when that is known without reading them (a table's rows,
        a Parquet file's footer); None otherwise (tar shards, folders).
    """

    _count: int | None = None

    @property
    def count(self) -> int | None:
        return self._count

    @abstractmethod
    def __iter__(self) -> Iterator[Item]:
        """Read the source: its items, in order."""

    def parts(self) -> Iterator[ItemStream]:
        """Independent pieces whose items, in order, are this stream's; each a small,
        picklable reference that reads its own storage. By default the stream is one part."""
        yield self

    @abstractmethod
    def describe(self) -> str:
        """The source in a few words, for messages."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class ChainedStream(ItemStream):
    """Several streams one after another (``featx predict A B``)."""

    def __init__(self, streams: Sequence[ItemStream]):
        self.streams = list(streams)
        counts = [s.count for s in self.streams]
        self._count = None if any(c is None for c in counts) else sum(c for c in counts if c)

    def __iter__(self) -> Iterator[Item]:
        for stream in self.streams:
            yield from stream

    def parts(self) -> Iterator[ItemStream]:
        for stream in self.streams:
            yield from stream.parts()

    def describe(self) -> str:
        return " + ".join(s.describe() for s in self.streams)


class ItemList(ItemStream):
    """Items already made (one image file, a short list), as a stream."""

    def __init__(self, items: Iterable[Item], what: str):
        self.items = list(items)
        self._count = len(self.items)
        self.what = what

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def describe(self) -> str:
        return self.what


def known_count(items: Iterable[Item]) -> int | None:
    """How many items ``items`` holds, when that is known without reading them."""
    if isinstance(items, ItemStream):
        return items.count
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
