"""What the Ray driver hands a worker: :class:`Unit` s of the input, made lazily by :class:`Plan`.

A unit is either

- **listed items**: up to ``shard_size`` items the driver listed itself, as references (paths,
  URLs; or whatever a list given in memory holds), with their positions; or
- **a part read on the worker**: one tar shard or one Parquet file of a stream
  (:meth:`featx.embed.stream.ItemStream.parts`: its URL and options, a few hundred bytes),
  with an item range ``[lo, hi)`` (``hi`` unknown, ``None``, until a worker has read it). The
  worker opens the part itself (from object storage: no shared file system) and reads its items;
  the driver never reads an image's bytes.

The input is cut into *segments*: the whole list, or one per part of a stream. A position is
counted within its segment; segment lengths become known as units finish (a tar shard's length
is known once read), and :meth:`Plan.position` turns ``(segment, position)`` into the position
in the whole input at the end, for the report. Nothing here holds more than the units in flight
and one length per segment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from featx.embed.item import Item
from featx.embed.shards import TarShards
from featx.embed.stream import ItemStream
from featx.embed.tables import ParquetImages, is_arrow_table

__all__ = ["Plan", "Unit", "read_on_worker"]


@dataclass
class Unit:
    """Items a worker embeds in one call (see the module docstring)."""

    segment: int
    positions: list[int] = field(default_factory=list)
    items: list[Item] | None = None
    part: ItemStream | None = None
    lo: int = 0
    hi: int | None = None
    attempts: int = 0

    @property
    def listed(self) -> bool:
        return self.items is not None

    def size(self) -> int | None:
        """Items in the unit; None for a part not read yet."""
        if self.items is not None:
            return len(self.items)
        return None if self.hi is None else self.hi - self.lo

    def halves(self, size: int) -> tuple[Unit, Unit]:
        """The unit (of ``size`` items, at least 2) as two, each tried once more."""
        half = (size + 1) // 2
        if self.items is not None:
            return (Unit(self.segment, self.positions[:half], self.items[:half],
                         attempts=self.attempts),
                    Unit(self.segment, self.positions[half:], self.items[half:],
                         attempts=self.attempts))
        mid = self.lo + half
        return (Unit(self.segment, part=self.part, lo=self.lo, hi=mid, attempts=self.attempts),
                Unit(self.segment, part=self.part, lo=mid, hi=self.lo + size,
                     attempts=self.attempts))

    def first_position(self) -> int:
        return self.positions[0] if self.items is not None else self.lo

    def describe(self) -> str:
        if self.part is None:
            return f"{len(self.positions)} items"
        end = "its end" if self.hi is None else f"item {self.hi}"
        return f"{self.part.describe()} from item {self.lo} to {end}"


def read_on_worker(part: ItemStream) -> bool:
    """Whether a part's items carry image bytes (tar members, Parquet rows in files): then the
    worker reads the part; otherwise (a folder or CSV listing: paths and URLs) the driver lists
    it and sends the references."""
    if isinstance(part, ParquetImages):
        return not is_arrow_table(part.source)
    return isinstance(part, TarShards)


class Plan:
    """The input as units, made as they are asked for; segment lengths as they are learnt.

    Parameters
    ----------
    source : sequence of Item or ItemStream
        What :func:`featx.embed.images.iter_items` returned.
    shard_size : int
        Items per unit of listed items.
    """

    def __init__(self, source: Sequence[Item] | ItemStream, shard_size: int):
        self.source = source
        self.shard_size = shard_size
        self.lengths: list[int | None] = []
        self.n_units = 0

    @property
    def total(self) -> int | None:
        """Items in the input, when known without reading it."""
        if isinstance(self.source, ItemStream):
            return self.source.count
        return len(self.source)

    def units(self) -> Iterator[Unit]:
        """Every unit, in input order (a stream's parts are listed as they are reached)."""
        if not isinstance(self.source, ItemStream):
            yield from self._listed(iter(self.source))
            return
        for part in self.source.parts():
            if read_on_worker(part):
                self.lengths.append(None)  # learnt from the worker (no footer read here)
                self.n_units += 1
                yield Unit(len(self.lengths) - 1, part=part)
            else:
                yield from self._listed(iter(part))

    def _listed(self, items: Iterator[Item]) -> Iterator[Unit]:
        segment = len(self.lengths)
        self.lengths.append(None)
        n = 0
        while True:
            chunk: list[Item] = []
            for item in items:
                chunk.append(item)
                if len(chunk) == self.shard_size:
                    break
            if not chunk:
                break
            self.n_units += 1
            yield Unit(segment, list(range(n, n + len(chunk))), chunk)
            n += len(chunk)
        self.lengths[segment] = n

    def learn(self, unit: Unit, n_items: int) -> None:
        """A part's unit read to the part's end: the segment's length is now known."""
        if unit.part is not None and unit.hi is None:
            self.lengths[unit.segment] = unit.lo + n_items

    def n_items(self) -> int:
        """Items in the whole input (every unit done)."""
        return sum(n or 0 for n in self.lengths)

    def offsets(self) -> list[int]:
        """Where each segment starts in the whole input (every unit done): a position ``at``
        of segment ``s`` is ``offsets()[s] + at`` there."""
        out, at = [], 0
        for n in self.lengths:
            out.append(at)
            at += n or 0
        return out
