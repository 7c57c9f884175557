"""Merging a cache's files as it grows: the newest segments into bigger ones, in tiers.

Every commit adds a segment file. Left alone, a long run would leave one file per batch, and
every lookup would look in each. Merges keep the files few, log-structured and size-tiered: a
file's *tier* is ``floor(log_F(rows / 32))`` (``F``, the fan-in, is
:attr:`featx.cache.EmbeddingCache.merge_fanin`, 16; 32 rows, a batch, is
:attr:`~featx.cache.EmbeddingCache.merge_base_rows`); when the newest ``F`` files are of one
tier (or smaller), they are merged into one file of the next tier, which takes the place of the
oldest of them. So a cache holds at most ``F - 1`` files per tier, O(log N) files in all, and
each row is rewritten once per tier it climbs, O(log N) times. The main file is one of the
files: it is rewritten (with the others folded in) only when the merge reaches it, that is when
the files after it add up to its own tier, which is when rewriting it is the cheaper step.

A merge runs under the cache's exclusive lock and never modifies a committed file: the merged
file is written under a temporary name, synced and renamed into place (``cache.merge_written``,
``cache.merge_committed`` are its crash points), and only then are its inputs deleted. A kill
in between leaves the inputs beside the merged file: the same rows twice, the first still
winning, folded together by the next merge. Rows are deduplicated with the files' key indexes
(the first file holding a key keeps it), vectors copied in blocks, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from featx._faults import fault_point
from featx.cache.failure import Failure
from featx.cache.files import (
    CacheFiles,
    FileIndex,
    check_room,
    create_group,
    fsync_dir,
    fsync_file,
    init_file,
    open_h5,
    reading,
    stamp_of,
    stored_groups,
    text,
    write_failures,
    writing,
)
from featx.cache.index import GroupIndex, digests_of, first_rows

__all__ = ["compact_all", "merge_newest", "plan_merge", "tier"]

#: Rows copied at a time when a merge moves vectors (16 MiB at width 1024).
_BLOCK = 4096


def tier(rows: int, fanin: int, base_rows: int) -> int:
    """A file's tier: ``floor(log_fanin(rows / base_rows))``, at least 0."""
    t = 0
    limit = base_rows * fanin
    while rows >= limit:
        t += 1
        limit *= fanin
    return t


def plan_merge(indexes: list[FileIndex], fanin: int, base_rows: int) -> list[FileIndex]:
    """The files to merge now, oldest first: the newest run of files no bigger than the newest
    file's tier, when it has at least ``fanin`` files; else nothing."""
    if len(indexes) < fanin:
        return []
    top = tier(indexes[-1].rows, fanin, base_rows)
    start = len(indexes)
    while start > 0 and tier(indexes[start - 1].rows, fanin, base_rows) <= top:
        start -= 1
    run = indexes[start:]
    return run if len(run) >= fanin else []


def merge_newest(files: CacheFiles, fanin: int, base_rows: int) -> int:
    """Merge while :func:`plan_merge` finds a run (exclusive lock); return the files merged away.

    Cheap when there is nothing to do: the plan is made from the indexes this object keeps,
    and the exclusive lock is taken only when it finds a run (and the plan is made again under
    it, since another process may have merged in between).
    """
    with files.locked(exclusive=False):
        if not plan_merge(files.indexes(), fanin, base_rows):
            return 0
    merged = 0
    with files.locked(exclusive=True):
        while True:
            run = plan_merge(files.indexes(), fanin, base_rows)
            if not run:
                break
            merged += _merge(files, run) - 1
        _set_aside_damaged(files)
    return merged


def compact_all(files: CacheFiles) -> int:
    """Fold every committed segment into the main file (exclusive lock); return how many."""
    with files.locked(exclusive=True):
        files.remove_orphans()
        segments = files.segments()
        if not segments:
            return 0
        indexes = files.indexes()  # refuses a damaged or foreign main file
        _fold_into_main(files, indexes)
        _set_aside_damaged(files)
        return len(segments)


def _merge(files: CacheFiles, run: list[FileIndex]) -> int:
    """Merge ``run`` (consecutive files, oldest first) into one; return how many went in."""
    if run[0].path == files.path:
        _fold_into_main(files, run)
    else:
        _merge_segments(files, run)
    return len(run)


def _merge_segments(files: CacheFiles, run: list[FileIndex]) -> None:
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    # The merged file takes the oldest input's place in the order (names sort by commit time).
    target = files.segment_dir / f"{run[0].path.name.split('-', 1)[0]}-{token}.h5"
    _write_merged(files, run, files.segment_dir / f".tmp-{token}.h5", target,
                  ("cache.merge_written", "cache.merge_committed"))


def _fold_into_main(files: CacheFiles, sources: list[FileIndex]) -> None:
    """Write the main file (if any) and segments as a new main file, and rename it into place."""
    tmp = files.path.with_name(f".{files.path.name}.compact-{os.getpid()}.tmp")
    _write_merged(files, sources, tmp, files.path,
                  ("cache.compact_copied", "cache.compact_replaced"))


def _write_merged(files: CacheFiles, sources: list[FileIndex], tmp: Path, target: Path,
                  points: tuple[str, str]) -> None:
    """Fold ``sources`` into ``tmp``, sync it, rename it to ``target`` (the commit), then delete
    the inputs; ``points`` are the crash points after the sync and after the rename."""
    nbytes = sum(index.stamp[1] for index in sources)
    check_room(files.path, nbytes)
    try:
        with writing(files.path, tmp, nbytes):
            with h5py.File(tmp, "w") as out:
                init_file(out)
                _fold(out, sources, {})
            fsync_file(tmp)
        fault_point(points[0])
        os.replace(tmp, target)
        fault_point(points[1])
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _done(files, target, [index.path for index in sources if index.path != target])


def _done(files: CacheFiles, target: Path, inputs: list[Path]) -> None:
    stamp = stamp_of(target)
    if stamp is not None:
        files.bytes_written += stamp[1]
    for path in inputs:
        if path != target:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    files.forget([*inputs, target])


def _fold(out: h5py.File, sources: list[FileIndex], have: dict[str, list[GroupIndex]]) -> None:
    """Append each source's rows whose keys no earlier file (``have``) holds, and its failures."""
    for index in sources:
        with open_h5(index.path, "r") as f, reading(index.path):
            for fp, src in stored_groups(f).items():
                group = index.groups.get(fp)
                if group is None:
                    continue
                earlier = have.setdefault(fp, [])
                take = first_rows(group, earlier)
                dst = out.get(f"embeddings/{fp}")
                if dst is None:
                    dst = create_group(out, fp, group.width, group.fields, group.label,
                                       chunk_rows=256)
                _copy_rows(src, dst, take)
                _copy_failures(src, dst, earlier, group)
                earlier.append(group)


def _copy_rows(src: h5py.Group, dst: h5py.Group, take: np.ndarray) -> None:
    if not len(take):
        return
    start = int(dst.attrs["count"])
    stop = start + len(take)
    for name in ("keys", "vectors", "sources"):
        dst[name].resize(stop, axis=0)
    at = start
    for lo in range(0, int(take[-1]) + 1, _BLOCK):
        sel = take[(take >= lo) & (take < lo + _BLOCK)]
        if not len(sel):
            continue
        hi = int(sel[-1]) + 1
        end = at + len(sel)
        dst["keys"][at:end] = src["keys"][lo:hi][sel - lo]
        dst["vectors"][at:end] = src["vectors"][lo:hi][sel - lo]
        sources = src["sources"][lo:hi]
        dst["sources"][at:end] = np.array([text(sources[i - lo]) for i in sel], dtype=object)
        at = end
    dst.attrs["count"] = stop


def _copy_failures(src: h5py.Group, dst: h5py.Group, earlier: list[GroupIndex],
                   group: GroupIndex) -> None:
    """Failures of ``src`` that no earlier file remembers and no earlier file has a row for."""
    if "failed_keys" not in src:
        return
    known = set(dst["failed_keys"][:]) if "failed_keys" in dst else set()
    rows = [(k, text(s), text(r)) for k, s, r in zip(
        src["failed_keys"][:], src["failed_sources"][:], src["failed_reasons"][:], strict=True)
        if k not in known]
    if not rows:
        return
    query = digests_of(np.array([k for k, _, _ in rows], dtype="S64"))
    stored = group.contains(query)
    for other in earlier:
        stored |= other.contains(query)
    new = [Failure(key=k.decode("ascii"), source=s, reason=r)
           for (k, s, r), has_row in zip(rows, stored, strict=True) if not has_row]
    if new:
        write_failures(dst, new)


def _set_aside_damaged(files: CacheFiles) -> None:
    """Move committed segments that could not be indexed aside (``.damaged``), for a person."""
    indexed = {index.path for index in files.indexes()}
    for seg in files.segments():
        if seg not in indexed:
            with contextlib.suppress(FileNotFoundError):
                seg.rename(seg.with_name(seg.name + ".damaged"))

