"""Reading a cache group by blocks: every row once, in bounded memory, shuffled on request.

A group's rows lie in the main file and the segments, a key in the first file that holds it.
:func:`plan_pieces` lists what a reader sees of each file as *pieces*, runs of up to 256
consecutive first-occurrence rows (one HDF5 chunk of the ``vectors`` dataset: a piece is one
contiguous read); :func:`read_blocks` reads pieces into blocks of up to ``block_rows`` rows.
With a seed, the pieces come in a seeded random order from every file and each block's rows are
shuffled: a class written folder by folder is spread over every block, at the cost of reading
whole chunks, never a scattered row at a time.

The files are opened once, under the shared lock, when reading starts: a merge that replaces a
file meanwhile does not disturb the reader (an open file stays readable after its name is
removed), so one pass sees one consistent snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featx.cache.files import CacheFiles, UnreadableFile, open_h5, reading
from featx.cache.index import first_rows, hex_keys
from featx.exceptions import CacheError

__all__ = ["Block", "Piece", "plan_pieces", "read_blocks", "PIECE_ROWS"]

#: Rows per piece: the ``vectors`` datasets are chunked by 256 rows.
PIECE_ROWS = 256


@dataclass(frozen=True)
class Block:
    """Rows of one group: their content keys (``S64``), vectors (float32, ``(n, width)``) and,
    when asked for (``sources=True``), the source each row was stored with (an object array of
    ``str``: a path, ``array[3]``, ...); otherwise ``sources`` is ``None``."""

    keys: np.ndarray
    vectors: np.ndarray
    sources: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class Piece:
    """A run of rows of one file that a reader sees (first occurrences), and their keys."""

    path: Path
    rows: np.ndarray  # int64, increasing
    digests: np.ndarray  # (n, 32) uint8, the rows' keys


def plan_pieces(files: CacheFiles, fingerprint: str, piece_rows: int = PIECE_ROWS) -> list[Piece]:
    """What a reader sees of the group, file by file, as pieces of up to ``piece_rows`` rows.

    Costs O(N) in time and 40 bytes a row (the rows' numbers and digests); no vector is read.

    Raises
    ------
    CacheError
        If no file holds the group (the message lists the groups there are).
    """
    with files.locked(exclusive=False):
        every = files.indexes()
    holding = [i for i in every if fingerprint in i.groups]
    if not holding:
        known = sorted({fp for i in every for fp in i.groups})
        raise CacheError(
            f"cache {str(files.path)!r} has no group {fingerprint!r}; it has {known}."
        )
    groups = [i.groups[fingerprint] for i in holding]
    pieces = []
    for n, index in enumerate(holding):
        rows = first_rows(groups[n], groups[:n])
        if not len(rows):
            continue
        digests = groups[n].digests_in_row_order()[rows]
        # A run breaks where rows are not consecutive, or every piece_rows rows.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.unique(np.concatenate([[0], breaks, np.arange(0, len(rows), piece_rows)]))
        ends = np.append(starts[1:], len(rows))
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            pieces.append(Piece(index.path, rows[lo:hi], digests[lo:hi]))
    return pieces


def read_blocks(
    files: CacheFiles,
    fingerprint: str,
    pieces: list[Piece],
    *,
    block_rows: int,
    seed: int | None = None,
    sources: bool = False,
) -> Iterator[Block]:
    """Read ``pieces`` into blocks of up to ``block_rows`` rows (see the module docstring), with
    each row's stored source when ``sources`` is true.

    Raises
    ------
    CacheError
        If a file cannot be read (damaged since it was indexed): the message names the file and
        how to go on.
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be at least 1; got {block_rows}.")
    order = (np.arange(len(pieces)) if seed is None
             else np.random.default_rng(seed).permutation(len(pieces)))
    rng = None if seed is None else np.random.default_rng([seed, 1])
    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}
        with files.locked(exclusive=False):
            for path in dict.fromkeys(p.path for p in pieces):
                handles[path] = stack.enter_context(_opened(path))
        taken: list[Piece] = []
        size = 0
        for i in order.tolist():
            taken.append(pieces[i])
            size += len(pieces[i].rows)
            if size >= block_rows:
                yield from _split(_read(handles, fingerprint, taken, sources), block_rows, rng)
                taken, size = [], 0
        if taken:
            yield from _split(_read(handles, fingerprint, taken, sources), block_rows, rng)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    try:
        f = open_h5(path, "r")
    except UnreadableFile as exc:
        raise _unreadable(path, exc.reason) from None
    try:
        yield f
    finally:
        f.close()


def _read(handles: dict[Path, Any], fingerprint: str, pieces: list[Piece],
          sources: bool = False) -> Block:
    """The pieces' rows (and their sources, when asked), in the order given."""
    n = sum(len(p.rows) for p in pieces)
    first = handles[pieces[0].path][f"embeddings/{fingerprint}/vectors"]
    out = np.empty((n, first.shape[1]), np.float32)
    names = np.empty(n, object) if sources else None
    at = 0
    for p in pieces:
        lo, hi = int(p.rows[0]), int(p.rows[-1]) + 1
        try:
            with reading(p.path):
                group = handles[p.path][f"embeddings/{fingerprint}"]
                data = group["vectors"][lo:hi]
                if names is not None:
                    names[at:at + len(p.rows)] = group["sources"].asstr()[lo:hi][p.rows - lo]
        except UnreadableFile as exc:
            raise _unreadable(p.path, exc.reason) from None
        out[at:at + len(p.rows)] = data[p.rows - lo]
        at += len(p.rows)
    return Block(hex_keys(np.concatenate([p.digests for p in pieces])), out, names)


def _split(block: Block, block_rows: int, rng: np.random.Generator | None) -> Iterator[Block]:
    """A block of pieces as blocks of at most ``block_rows`` rows, shuffled when seeded."""
    order = np.arange(len(block)) if rng is None else rng.permutation(len(block))
    for lo in range(0, len(order), block_rows):
        rows = order[lo:lo + block_rows]
        names = None if block.sources is None else block.sources[rows]
        yield Block(block.keys[rows], block.vectors[rows], names)


def _unreadable(path: Path, reason: str) -> CacheError:
    return CacheError(
        f"cache file {str(path)!r} could not be read while reading a group by blocks ({reason}). "
        "Move it aside (featx embed embeds its rows again) and run again."
    )
