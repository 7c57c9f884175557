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
import errno
import io
import json
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from featx._faults import fault_point
from featx.cache.failure import Failure
from featx.cache.index import GroupIndex, digests_of
from featx.exceptions import CacheError

__all__ = ["CACHE_FORMAT_VERSION", "CacheFiles", "FileIndex", "check_room", "writing"]

CACHE_FORMAT_VERSION = 1
_KEY_DTYPE = "S64"
_CHUNK_ROWS = 256
_KEY_CHUNK_ROWS = 16384
_STR = h5py.string_dtype("utf-8")


try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

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


class UnreadableFile(CacheError):
    """A file that is not (or no longer) a readable HDF5 cache file: truncated or damaged."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class FileIndex:
    """The key index of one immutable HDF5 file, per group; valid while the file is unchanged.

    Built from the file's ``keys`` datasets when a process first sees the file, or handed over
    by the commit that wrote it (:meth:`CacheFiles.write_segment`), which knows its keys.
    """

    def __init__(self, path: Path, stamp: tuple[int, int, int], groups: dict[str, GroupIndex]):
        self.path = path
        self.stamp = stamp
        self.groups = groups

    @classmethod
    def from_file(cls, path: Path, stamp: tuple[int, int, int]) -> FileIndex:
        """Read the keys (never the vectors) of every group of ``path``."""
        groups: dict[str, GroupIndex] = {}
        with open_h5(path, "r") as f, reading(path):
            for fp, grp in stored_groups(f).items():
                n = int(grp.attrs["count"])
                failed: dict[str, str] = {}
                if "failed_keys" in grp:
                    for k, r in zip(grp["failed_keys"][:], grp["failed_reasons"][:], strict=True):
                        failed.setdefault(k.decode("ascii"), text(r))
                groups[fp] = GroupIndex(
                    width=int(grp.attrs["width"]),
                    fields=json.loads(grp.attrs.get("fingerprint", "{}")),
                    label=str(grp.attrs.get("label", "")),
                    keys=digests_of(np.asarray(grp["keys"][:n], dtype="S64")),
                    failed=failed,
                )
        return cls(path, stamp, groups)

    @property
    def rows(self) -> int:
        """Rows and remembered failures in the file, over its groups."""
        return sum(g.n + len(g.failed) for g in self.groups.values())

    def read(
        self, fingerprint: str, rows: np.ndarray, *, sources: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """The vectors of ``rows`` (any order, repeats allowed) of one group, and their sources
        when asked (otherwise an empty list)."""
        with open_h5(self.path, "r") as f, reading(self.path):
            grp = f[f"embeddings/{fingerprint}"]
            vectors = read_rows(grp["vectors"], rows)
            names: list[str] = []
            if sources and len(rows):
                stored = grp["sources"][: int(grp.attrs["count"])]
                names = [text(stored[i]) for i in rows]
            return vectors, names


def stored_groups(f: h5py.File) -> dict[str, h5py.Group]:
    """The file's groups by fingerprint, read so that damage raises (inside :func:`reading`).

    h5py's ``get`` and ``items`` answer "no such member" for a link they cannot follow, so a
    file whose structure is damaged (zeroed past its header, say) would read as holding no
    groups, and its rows would vanish without a word.
    """
    if "embeddings" not in f:  # raises on a damaged root group; False only when truly absent
        return {}
    embeddings = f["embeddings"]
    return {fp: embeddings[fp] for fp in embeddings}


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn the errors h5py raises on a damaged file's contents into one clear CacheError."""
    try:
        yield
    except CacheError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise UnreadableFile(
            f"cache file {str(path)!r} is damaged ({reason}). Move it aside (its rows will be "
            "embedded again) or pass another cache= path.",
            reason,
        ) from None


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stamp_of(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def open_h5(path: Path, mode: str) -> h5py.File:
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise UnreadableFile(
            f"cache file {str(path)!r} cannot be opened as HDF5 ({exc}). It may be truncated or "
            "not a featx cache; move it aside or pass another cache= path.",
            str(exc),
        ) from None
    try:
        with reading(path):
            version = f.attrs.get("featx_cache_format")
            empty = version is None and len(f.keys()) == 0
    except UnreadableFile:
        f.close()
        raise
    if version is None:
        if empty:
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


_FULL = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file size limit was reached",
         errno.EDQUOT: "the disk quota is used up"}


@contextlib.contextmanager
def writing(cache: Path, tmp: Path, nbytes: int) -> Iterator[None]:
    """Turn a write that failed for lack of space (a full disk, the file size limit, a quota)
    into one :class:`CacheError` naming the cache and what to free; other errors pass."""
    try:
        yield
    except OSError as exc:
        text_ = str(exc)
        why = _FULL.get(exc.errno or 0) or next(
            (why for code, why in _FULL.items() if os.strerror(code) in text_), None)
        if why is None:
            raise
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CacheError(
            f"cache {str(cache)!r}: {why} while writing {tmp.name} (about "
            f"{max(1, nbytes >> 20)} MB). Every batch committed before is kept; free space in "
            f"{str(cache.parent)!r} (or raise the limit) and run again to embed the rest."
        ) from None


def check_room(cache: Path, nbytes: int) -> None:
    """Refuse to start writing a file of about ``nbytes`` that the disk or the file size limit
    cannot take: HDF5 does not recover from a failed write as plain writes do."""
    need = nbytes + (1 << 20)
    why = None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE) if resource else (-1, -1)
    if resource and soft != resource.RLIM_INFINITY and need > soft:
        why = _FULL[errno.EFBIG]
    else:
        with contextlib.suppress(OSError):
            st = os.statvfs(cache.parent)
            if need > st.f_bavail * st.f_frsize:
                why = _FULL[errno.ENOSPC]
    if why is not None:
        raise CacheError(
            f"cache {str(cache)!r}: {why} for a merge of about {max(1, nbytes >> 20)} MB. "
            f"Every batch committed before is kept; free space in {str(cache.parent)!r} (or "
            "raise the limit) and run again to embed the rest."
        )


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


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class CacheFiles:
    """The main file, the committed segments and the lock file of one cache, and their indexes.

    The object keeps each file's key index between calls: a file is read only the first time
    this process sees it (or, for the main file, when compaction replaced it), and a segment this
    object commits is indexed from the keys it wrote. Listing the segment folder costs one
    ``scandir`` of O(log N) names, as merges keep that many (:mod:`featx.cache.merge`).

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
        #: Bytes this object wrote to committed files (segments, merges), for the benchmarks.
        self.bytes_written = 0

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
        try:
            with os.scandir(self.segment_dir) as entries:
                names = [e.name for e in entries
                         if e.name.endswith(".h5") and not e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [self.segment_dir / name for name in sorted(names)]

    def exists(self) -> bool:
        """True when the main file or any committed segment exists."""
        return self.path.exists() or bool(self.segments())

    def indexes(self) -> list[FileIndex]:
        """Indexes of the main file and every committed segment, oldest first (lock held).

        A segment is indexed once (its name is never reused and its content never changes);
        the main file again when its inode, size or mtime changed. A damaged main file raises
        :class:`CacheError`; a damaged segment is skipped with a warning.
        """
        out = []
        live = set()
        for path in [self.path, *self.segments()]:
            index = self._indexes.get(path)
            if index is not None and path != self.path:
                live.add(path)
                out.append(index)
                continue
            stamp = stamp_of(path)
            if stamp is None:
                continue
            live.add(path)
            if (path, stamp) in self._damaged:
                continue
            if index is None or index.stamp != stamp:
                try:
                    index = FileIndex.from_file(path, stamp)
                except UnreadableFile as exc:
                    if path == self.path:
                        raise
                    self.skip_damaged(path, stamp, exc)
                    continue
                self._indexes[path] = index
            out.append(index)
        if len(self._indexes) > len(live):
            for stale in set(self._indexes) - live:
                del self._indexes[stale]
        return out

    def forget(self, paths: Sequence[Path]) -> None:
        """Drop the indexes of files that a merge replaced."""
        for path in paths:
            self._indexes.pop(path, None)

    def remember(self, index: FileIndex) -> None:
        """Keep the index of a file this object just committed."""
        self._indexes[index.path] = index

    def skip_damaged(self, path: Path, stamp: tuple[int, int, int], exc: UnreadableFile) -> None:
        """A committed segment that cannot be read (disk damage, not a crash): warn, go on.

        Only that segment's rows are missing; they are embedded again. Merges move the file
        aside (``<segment>.damaged``) so that it is looked at by a person, not deleted.
        """
        if (path, stamp) not in self._damaged:
            self._damaged.add((path, stamp))
            warnings.warn(
                f"featx cache: ignoring the damaged segment {str(path)!r} ({exc.reason}); its "
                "rows will be embedded again. The next merge (or EmbeddingCache.compact()) "
                f"renames it {path.name + '.damaged'!r}; delete that file once looked at.",
                RuntimeWarning,
                stacklevel=4,
            )

    def drop_damaged(self, index: FileIndex, exc: UnreadableFile) -> None:
        """A segment that stopped reading after it was indexed: warn, and index it no more."""
        self._indexes.pop(index.path, None)
        self.skip_damaged(index.path, stamp_of(index.path) or index.stamp, exc)

    def write_segment(
        self,
        fingerprint: str,
        keys: list[str],
        vectors: np.ndarray,
        sources: list[str],
        fields: dict[str, Any],
        label: str,
        failed: Sequence[Failure],
    ) -> Path:
        """Commit one batch as a new segment (or, the very first, as the main file); lock held.

        The batch is written to a temporary file, synced, and renamed into place: the rename is
        the commit, and the batch is durable when this returns. Returns the committed file,
        whose index this object keeps without reading it back.
        """
        self.segment_dir.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp = self.segment_dir / f".tmp-{token}.h5"
        try:
            # Built in memory, then written with plain writes: a full disk or the file size
            # limit fails a write() (and raises OSError), never HDF5's own close.
            image = io.BytesIO()
            with h5py.File(image, "w") as f:
                init_file(f)
                grp = create_group(f, fingerprint, vectors.shape[1], fields, label, len(keys))
                if keys:
                    grp["keys"][:] = np.array(keys, dtype=_KEY_DTYPE)
                    grp["vectors"][:] = vectors
                    grp["sources"][:] = np.array(sources, dtype=object)
                grp.attrs["count"] = len(keys)
                if failed:
                    write_failures(grp, failed)
            data = image.getbuffer()
            with writing(self.path, tmp, len(data)), open(tmp, "wb") as fh:
                half = len(data) // 2
                fh.write(data[:half])
                fh.flush()
                fault_point("cache.segment_partial")
                fh.write(data[half:])
                fh.flush()
                os.fsync(fh.fileno())
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
            fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        stamp = stamp_of(target)
        if stamp is not None:
            self.bytes_written += stamp[1]
            group = GroupIndex(vectors.shape[1], fields, label, digests_of(keys),
                               {str(f.key): f.reason for f in failed})
            self.remember(FileIndex(target, stamp, {fingerprint: group}))
        return target

    def remove_orphans(self) -> None:
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


def init_file(f: h5py.File) -> None:
    f.attrs["featx_cache_format"] = CACHE_FORMAT_VERSION
    f.attrs["file_id"] = uuid.uuid4().hex


def create_group(
    f: h5py.File, fingerprint: str, width: int, fields: dict[str, Any], label: str, n: int = 0,
    *, chunk_rows: int | None = None,
) -> h5py.Group:
    grp = f.require_group("embeddings").create_group(fingerprint)
    grp.attrs["fingerprint"] = json.dumps(fields, sort_keys=True)
    grp.attrs["label"] = label
    grp.attrs["width"] = width
    grp.attrs["count"] = 0
    rows = chunk_rows or max(1, min(_CHUNK_ROWS, n))
    # Merged files are big: their keys (read whole when a process opens the cache) go in chunks
    # of 16,384 (1 MB), not 4,096 reads of 256 for a million rows.
    key_rows = _KEY_CHUNK_ROWS if chunk_rows else max(rows, _CHUNK_ROWS)
    grp.create_dataset("keys", shape=(n,), maxshape=(None,), dtype=_KEY_DTYPE,
                       chunks=(key_rows,))
    grp.create_dataset("vectors", shape=(n, width), maxshape=(None, width), dtype="float32",
                       chunks=(rows, max(1, width)))
    grp.create_dataset("sources", shape=(n,), maxshape=(None,), dtype=_STR,
                       chunks=(max(rows, _CHUNK_ROWS),))
    return grp


def write_failures(grp: h5py.Group, failed: Sequence[Failure]) -> None:
    """Append ``failed`` (each with its key) to the group's ``failed_keys``, ``failed_sources``
    and ``failed_reasons``."""
    existing = len(grp["failed_keys"]) if "failed_keys" in grp else 0
    if not existing:
        for name, dtype in (("failed_keys", _KEY_DTYPE), ("failed_sources", _STR),
                            ("failed_reasons", _STR)):
            grp.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(256,))
    stop = existing + len(failed)
    columns = {
        "failed_keys": np.array([f.key for f in failed], dtype=_KEY_DTYPE),
        "failed_sources": np.array([f.source for f in failed], dtype=object),
        "failed_reasons": np.array([f.reason for f in failed], dtype=object),
    }
    for name, values in columns.items():
        grp[name].resize(stop, axis=0)
        grp[name][existing:stop] = values


def read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read ``dataset[rows]`` for any order of ``rows`` (h5py wants increasing, unique indices)."""
    if not len(rows):
        return np.zeros((0, *dataset.shape[1:]), np.float32)
    unique, inverse = np.unique(rows, return_inverse=True)
    lo, hi = int(unique[0]), int(unique[-1]) + 1
    if len(unique) * 4 >= hi - lo:  # dense enough: one contiguous read is faster
        block = dataset[lo:hi]
        data = block[unique - lo]
    else:  # a row at a time: h5py's fancy indexing costs about 3x more per row
        data = np.empty((len(unique), *dataset.shape[1:]), dataset.dtype)
        for j, row in enumerate(unique.tolist()):
            dataset.read_direct(data, np.s_[row:row + 1], np.s_[j:j + 1])
    return np.asarray(data[inverse], dtype=np.float32)
