"""The files of an embedding cache on disk: opening, indexing, locking, committing, compacting.

Layout (documented in ``docs/cache-format.md``, readable with h5py alone)::

    emb.h5                         the main file
    emb.h5.segments/*.h5           batches committed since the last compaction (same layout)
    emb.h5.lock                    an empty file, for flock

    /                              attrs: featx_cache_format, file_id
    /embeddings/<fingerprint>/     attrs: fingerprint (JSON), label, width, count
        keys      (n,)        |S64     sha256 of the item's content, hex
        vectors   (n, width)  float32  chunked
        sources   (n,)        str      the item's name when it was stored (a path, ...)
        failed_keys, failed_reasons, failed_sources   items that could not be decoded

No HDF5 file is ever modified once it has its final name. A batch is written to a temporary file
that is renamed into ``emb.h5.segments/`` when complete (the commit); compaction copies the main
file, folds the segments in, and renames the copy over the main file. A process killed at any
moment therefore leaves every committed batch intact and every file readable; it loses at most
the batch it was writing. Readers and segment writers hold a shared ``flock`` on the lock file,
compaction an exclusive one, so several processes can share one cache. ``docs/robustness.md``
says why (and what the alternatives lose); ``featx._faults`` names the points the crash tests
kill a process at.

:class:`featx.cache.EmbeddingCache` (lookups and appends) reads and writes through
:class:`CacheFiles`; nothing here knows what a lookup or an append is for.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx._faults import fault_point
from featx.exceptions import CacheError

__all__ = ["CACHE_FORMAT_VERSION", "CacheFiles", "FileIndex", "GroupIndex", "file_size"]

CACHE_FORMAT_VERSION = 1
_KEY_DTYPE = "S64"
_CHUNK_ROWS = 256
_STR = h5py.string_dtype("utf-8")


try:  # POSIX advisory locks; on other systems a process-local lock is the best we have.
    import fcntl

    def _lock_fd(fd: int, exclusive: bool) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)

    def _unlock_fd(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover

    def _lock_fd(fd: int, exclusive: bool) -> None:
        pass

    def _unlock_fd(fd: int) -> None:
        pass


@dataclass
class GroupIndex:
    """One group of one file: its settings, and each key's first row (insertion order = rows')."""

    width: int
    fields: dict[str, Any]
    label: str
    rows: dict[str, int]
    failed: dict[str, str]


class _UnreadableFile(CacheError):
    """A file that is not (or no longer) a readable HDF5 cache file: truncated or damaged."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class FileIndex:
    """The keys of one immutable HDF5 file, per group; valid while the file is unchanged."""

    def __init__(self, path: Path, stamp: tuple[int, int, int]):
        self.path = path
        self.stamp = stamp
        self.groups: dict[str, GroupIndex] = {}
        with _open_h5(path, "r") as f, _reading(path):
            for fp, grp in f.get("embeddings", {}).items():
                n = int(grp.attrs["count"])
                rows: dict[str, int] = {}
                for i, k in enumerate(grp["keys"][:n]):
                    rows.setdefault(k.decode("ascii"), i)
                failed: dict[str, str] = {}
                if "failed_keys" in grp:
                    for k, r in zip(grp["failed_keys"][:], grp["failed_reasons"][:], strict=True):
                        failed.setdefault(k.decode("ascii"), _text(r))
                self.groups[fp] = GroupIndex(
                    width=int(grp.attrs["width"]),
                    fields=json.loads(grp.attrs.get("fingerprint", "{}")),
                    label=str(grp.attrs.get("label", "")),
                    rows=rows,
                    failed=failed,
                )

    def read(
        self, fingerprint: str, rows: np.ndarray, *, sources: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """The vectors of ``rows`` (any order, repeats allowed) of one group, and their sources
        when asked (otherwise an empty list)."""
        with _open_h5(self.path, "r") as f, _reading(self.path):
            grp = f[f"embeddings/{fingerprint}"]
            vectors = _read_rows(grp["vectors"], rows)
            names: list[str] = []
            if sources:
                stored = grp["sources"][: int(grp.attrs["count"])]
                names = [_text(stored[i]) for i in rows]
            return vectors, names


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the errors h5py raises on a damaged file's contents into one clear CacheError."""
    try:
        yield
    except CacheError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise _UnreadableFile(
            f"cache file {str(path)!r} is damaged ({reason}). Move it aside (its rows will be "
            "embedded again) or pass another cache= path.",
            reason,
        ) from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def file_size(path: Path) -> int | None:
    """The size of ``path`` in bytes; None when it does not exist."""
    stamp = _stamp(path)
    return None if stamp is None else stamp[1]


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise _UnreadableFile(
            f"cache file {str(path)!r} cannot be opened as HDF5 ({exc}). It may be truncated or "
            "not a featx cache; move it aside or pass another cache= path.",
            str(exc),
        ) from None
    version = f.attrs.get("featx_cache_format")
    if version is None:
        if len(f.keys()) == 0:
            return f  # an empty HDF5 file reads as an empty cache
        f.close()
        raise CacheError(
            f"{str(path)!r} is an HDF5 file but not a featx cache (no 'featx_cache_format' "
            "attribute). Pass another cache= path."
        )
    if int(version) > CACHE_FORMAT_VERSION:
        f.close()
        raise CacheError(
            f"cache file {str(path)!r} has format {int(version)}, written by a newer featx; this "
            f"featx reads format {CACHE_FORMAT_VERSION}. Upgrade featx."
        )
    return f


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # pragma: no cover - os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class CacheFiles:
    """The main file, the committed segments and the lock file of one cache, and their indexes.

    Parameters
    ----------
    path : Path
        The main HDF5 file; the segments and the lock file are named after it.
    """

    def __init__(self, path: Path):
        self.path = path
        self.segment_dir = path.with_name(path.name + ".segments")
        self._lock_path = path.with_name(path.name + ".lock")
        self._mutex = threading.RLock()
        self._indexes: dict[Path, FileIndex] = {}
        self._damaged: set[tuple[Path, tuple[int, int, int]]] = set()

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the cache's ``flock`` (shared, or exclusive) and this object's mutex."""
        with self._mutex:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise CacheError(
                    f"cannot create the cache's lock file {str(self._lock_path)!r}: "
                    f"{exc.strerror or exc}. featx needs to write in the cache's folder; pass a "
                    "cache= path in a folder you can write to."
                ) from None
            try:
                _lock_fd(fd, exclusive)
                yield
            finally:
                _unlock_fd(fd)
                os.close(fd)

    def segments(self) -> list[Path]:
        """The committed segment files, oldest first (temporary files are never listed)."""
        if not self.segment_dir.is_dir():
            return []
        return sorted(p for p in self.segment_dir.glob("*.h5") if not p.name.startswith("."))

    def exists(self) -> bool:
        """True when the main file or any committed segment exists."""
        return self.path.exists() or bool(self.segments())

    def indexes(self) -> list[FileIndex]:
        """Indexes of the main file and every committed segment, oldest first (lock held).

        An index is rebuilt only when its file's inode, size or mtime changed. A damaged main
        file raises :class:`CacheError`; a damaged segment is skipped with a warning.
        """
        out = []
        live = set()
        for path in [self.path, *self.segments()]:
            stamp = _stamp(path)
            if stamp is None:
                continue
            live.add(path)
            index = self._indexes.get(path)
            if index is None or index.stamp != stamp:
                try:
                    index = FileIndex(path, stamp)
                except _UnreadableFile as exc:
                    if path == self.path:
                        raise
                    self._skip_damaged(path, stamp, exc)
                    continue
                self._indexes[path] = index
            out.append(index)
        for stale in set(self._indexes) - live:
            del self._indexes[stale]
        return out

    def _skip_damaged(self, path: Path, stamp: tuple[int, int, int], exc: _UnreadableFile) -> None:
        """A committed segment that cannot be read (disk damage, not a crash): warn, go on.

        Only that segment's rows are missing; they are embedded again. Compaction moves the
        file aside (``<segment>.damaged``) so that it is looked at by a person, not deleted.
        """
        if (path, stamp) not in self._damaged:
            self._damaged.add((path, stamp))
            warnings.warn(
                f"featx cache: ignoring the damaged segment {str(path)!r} ({exc.reason}); its "
                "rows will be embedded again.",
                RuntimeWarning,
                stacklevel=4,
            )

    def write_segment(
        self,
        fingerprint: str,
        keys: list[str],
        vectors: np.ndarray,
        sources: list[str],
        fields: dict[str, Any],
        label: str,
        failed: Sequence[tuple[str, str, str]],
    ) -> None:
        """Commit one batch as a new segment (or, the very first, as the main file); lock held.

        The batch is written to a temporary file, synced, and renamed into place: the rename is
        the commit, and the batch is durable when this returns.
        """
        self.segment_dir.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp = self.segment_dir / f".tmp-{token}.h5"
        try:
            with h5py.File(tmp, "w") as f:
                _init_file(f)
                grp = _create_group(f, fingerprint, vectors.shape[1], fields, label, len(keys))
                fault_point("cache.segment_partial")
                if keys:
                    grp["keys"][:] = np.array(keys, dtype=_KEY_DTYPE)
                    grp["vectors"][:] = vectors
                    grp["sources"][:] = np.array(sources, dtype=object)
                grp.attrs["count"] = len(keys)
                if failed:
                    _write_failures(grp, failed)
            _fsync_file(tmp)
            fault_point("cache.segment_written")
            target = self.segment_dir / f"{time.time_ns():020d}-{token}.h5"
            if not self.path.exists() and not self.segments():
                # The very first batch becomes the main file; link() fails if another writer
                # got there first (or the file system has no hard links), and the batch then
                # becomes a segment like any other.
                try:
                    os.link(tmp, self.path)
                    target = self.path
                except OSError:
                    pass
            if target != self.path:
                os.replace(tmp, target)
            fault_point("cache.segment_committed")
            _fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def compact(self) -> int:
        """Fold every committed segment into a copy of the main file that replaces it.

        Takes the exclusive lock; returns the number of segments folded in. Damaged segments
        are moved aside (``<segment>.damaged``), the others deleted once the copy is in place.
        """
        with self.locked(exclusive=True):
            self._remove_orphans()
            segments = self.segments()
            if not segments:
                return 0
            tmp = self.path.with_name(f".{self.path.name}.compact-{os.getpid()}.tmp")
            try:
                mode = "w"
                if self.path.exists():
                    with _open_h5(self.path, "r") as main:  # refuses a damaged main file
                        is_cache = "featx_cache_format" in main.attrs
                    if is_cache:
                        shutil.copyfile(self.path, tmp)
                        mode = "a"
                damaged = []
                with h5py.File(tmp, mode) as out:
                    if mode == "w":
                        _init_file(out)
                    out.attrs["file_id"] = uuid.uuid4().hex
                    for seg in segments:
                        try:
                            with _open_h5(seg, "r") as f, _reading(seg):
                                for fp, grp in f.get("embeddings", {}).items():
                                    _merge_group(out, fp, grp)
                        except _UnreadableFile as exc:
                            stamp = _stamp(seg)
                            if stamp is not None:
                                self._skip_damaged(seg, stamp, exc)
                            damaged.append(seg)
                _fsync_file(tmp)
                fault_point("cache.compact_copied")
                os.replace(tmp, self.path)
                fault_point("cache.compact_replaced")
                _fsync_dir(self.path.parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            for seg in segments:
                with contextlib.suppress(FileNotFoundError):
                    if seg in damaged:
                        seg.rename(seg.with_name(seg.name + ".damaged"))
                    else:
                        seg.unlink()
            self._indexes.clear()
            return len(segments)

    def _remove_orphans(self) -> None:
        """Delete temporary files left by writers that died (exclusive lock held)."""
        candidates = list(self.path.parent.glob(f".{self.path.name}.compact-*.tmp"))
        if self.segment_dir.is_dir():
            candidates += list(self.segment_dir.glob(".tmp-*.h5"))
        for tmp in candidates:
            try:
                pid = int(tmp.name.split("-")[1 if tmp.name.startswith(".tmp-") else -1]
                          .split(".")[0])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid() or not _pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _init_file(f: h5py.File) -> None:
    f.attrs["featx_cache_format"] = CACHE_FORMAT_VERSION
    f.attrs["file_id"] = uuid.uuid4().hex


def _create_group(
    f: h5py.File, fingerprint: str, width: int, fields: dict[str, Any], label: str, n: int = 0
) -> h5py.Group:
    grp = f.require_group("embeddings").create_group(fingerprint)
    grp.attrs["fingerprint"] = json.dumps(fields, sort_keys=True)
    grp.attrs["label"] = label
    grp.attrs["width"] = width
    grp.attrs["count"] = 0
    rows = max(1, min(_CHUNK_ROWS, n))
    grp.create_dataset("keys", shape=(n,), maxshape=(None,), dtype=_KEY_DTYPE,
                       chunks=(max(rows, _CHUNK_ROWS),))
    grp.create_dataset("vectors", shape=(n, width), maxshape=(None, width), dtype="float32",
                       chunks=(rows, max(1, width)))
    grp.create_dataset("sources", shape=(n,), maxshape=(None,), dtype=_STR,
                       chunks=(max(rows, _CHUNK_ROWS),))
    return grp


def _write_failures(grp: h5py.Group, failed: Sequence[tuple[str, str, str]]) -> None:
    existing = len(grp["failed_keys"]) if "failed_keys" in grp else 0
    if not existing:
        for name, dtype in (("failed_keys", _KEY_DTYPE), ("failed_sources", _STR),
                            ("failed_reasons", _STR)):
            grp.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(256,))
    stop = existing + len(failed)
    for name, column in (("failed_keys", 0), ("failed_sources", 1), ("failed_reasons", 2)):
        grp[name].resize(stop, axis=0)
        values = [f[column] for f in failed]
        grp[name][existing:stop] = (
            np.array(values, dtype=_KEY_DTYPE) if column == 0 else np.array(values, dtype=object)
        )


def _merge_group(out: h5py.File, fingerprint: str, src: h5py.Group) -> None:
    """Append the rows (and failures) of ``src`` whose keys ``out`` does not hold yet."""
    dst = out.get(f"embeddings/{fingerprint}")
    width = int(src.attrs["width"])
    if dst is None:
        fields = json.loads(src.attrs.get("fingerprint", "{}"))
        dst = _create_group(out, fingerprint, width, fields, str(src.attrs.get("label", "")))
    count = int(dst.attrs["count"])
    have = {k.decode("ascii") for k in dst["keys"][:count]}
    n = int(src.attrs["count"])
    keys = [k.decode("ascii") for k in src["keys"][:n]]
    take = []
    for i, k in enumerate(keys):
        if k not in have:
            have.add(k)
            take.append(i)
    if take:
        stop = count + len(take)
        for name in ("keys", "vectors", "sources"):
            dst[name].resize(stop, axis=0)
        dst["keys"][count:stop] = np.array([keys[i] for i in take], dtype=_KEY_DTYPE)
        dst["vectors"][count:stop] = src["vectors"][:n][take]
        sources = src["sources"][:n]
        dst["sources"][count:stop] = np.array([_text(sources[i]) for i in take], dtype=object)
        dst.attrs["count"] = stop
    if "failed_keys" in src:
        old = {k.decode("ascii") for k in dst["failed_keys"][:]} if "failed_keys" in dst else set()
        new = [
            (k.decode("ascii"), _text(s), _text(r))
            for k, s, r in zip(src["failed_keys"][:], src["failed_sources"][:],
                               src["failed_reasons"][:], strict=True)
            if k.decode("ascii") not in old and k.decode("ascii") not in have
        ]
        if new:
            _write_failures(dst, new)


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read ``dataset[rows]`` for any order of ``rows`` (h5py wants increasing, unique indices)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    lo, hi = int(unique[0]), int(unique[-1]) + 1
    if len(unique) * 4 >= hi - lo:  # dense enough: one contiguous read is faster
        block = dataset[lo:hi]
        data = block[unique - lo]
    else:
        data = dataset[unique]
    return np.asarray(data[inverse], dtype=np.float32)
