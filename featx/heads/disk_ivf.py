"""An inverted file whose rows live on disk: the kNN head's index past ``exact_below`` rows.

:class:`DiskIVF` keeps in memory only what is per cell or a few bytes a row (the k-means
centroids, where each cell starts, each stored row's position in the source: 8 bytes a row), and
the rows themselves in one file, cell after cell, as float16 (2 bytes a value, close to float32's
distances: a relative error of about 1e-3). A search reads the file once per batch of queries,
cell by cell, with plain reads (no memory map, so the pages read are not the process's resident
memory), and compares each cell's rows with every query of the batch that probes it in one
matrix product (``faiss.knn``): exact distances within the ``nprobe`` cells a query searches.

Why not faiss's in-memory codes (``IndexRefine(IndexIVFPQFastScan, IndexScalarQuantizer)``, this
head's index before): 1.15 bytes a value held in memory, 1.15 GB at a million rows of width 1,024,
the largest part of ``featx heads``'s peak there, and recall@10 0.961 at 1,000,000 rows. Why not
faiss's ``OnDiskInvertedLists``: it memory-maps the lists, so every page a search touches counts
in the process's resident memory, and faiss scans an inverted list one query at a time, where
grouping the queries by cell turns the scan into matrix products. Measured (AMD EPYC, 2 cores):
see :mod:`featx.heads.knn_index`.

The file: ``FEATXIVF``, a little-endian ``uint32`` version and header length, a JSON header
(rows, width, cells, and each section's byte offset and size), then the sections, each aligned
to 64 bytes: ``centroids`` (float32, cells x width), ``starts`` (int64, cells + 1: cell ``c``'s
rows are ``starts[c]:starts[c + 1]``), ``ids`` (int64, each stored row's position in the source),
``projection`` and ``bias`` (float32, optional: a PCA applied before indexing, ``X @ projection +
bias``), ``rows`` (float16, rows x width).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from featx.audit.faiss_tools import faiss_module
from featx.exceptions import FeatxError

__all__ = ["DiskIVF", "MAGIC", "is_disk_ivf"]

MAGIC = b"FEATXIVF"
_VERSION = 1
_ALIGN = 64
#: Queries searched per pass over the file: their cells, 4 bytes a probe, and sorting them.
QUERY_BATCH = 65_536


def is_disk_ivf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts as a :class:`DiskIVF` file does."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


class DiskIVF:
    """k-means cells in memory, their rows in a file; searched cell by cell.

    Build one with :meth:`build`; open a written file with :meth:`open`. The instance owns its
    file when it made it (removed when the instance is garbage-collected or :meth:`close` d).
    """

    def __init__(self, path: Path, header: dict[str, Any], centroids: np.ndarray,
                 starts: np.ndarray, ids: np.ndarray, projection: np.ndarray | None,
                 bias: np.ndarray | None, owned: Path | None):
        self.path, self.header = path, header
        self.centroids, self.starts, self.ids = centroids, starts, ids
        self.projection, self.bias = projection, bias
        self.n_rows, self.dim = int(header["rows"]), int(header["dim"])
        self.nlist = len(centroids)
        self._quantizer: Any = None
        self._cleanup = (weakref.finalize(self, shutil.rmtree, owned, True)
                         if owned is not None else None)

    @property
    def ntotal(self) -> int:
        """The rows indexed (as a faiss index says)."""
        return self.n_rows

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, passes: Callable[[], Iterable[np.ndarray]], n_rows: int,
              centroids: np.ndarray, *, projection: np.ndarray | None = None,
              bias: np.ndarray | None = None, folder: str | os.PathLike[str] | None = None,
              check: Callable[[str], None] = lambda what: None,
              tick: Callable[[int], None] = lambda rows: None) -> DiskIVF:
        """Write ``n_rows`` rows into a new file, cell after cell, in two passes.

        Parameters
        ----------
        passes : callable
            Each call returns the rows again, in blocks, in the same order, already in the
            indexed space (standardised, projected): the first pass finds each row's cell, the
            second writes the rows where their cell's run starts.
        centroids : ndarray of float32, shape (nlist, dim)
        projection, bias : ndarray, optional
            The projection the rows went through, ``X @ projection + bias`` (kept with the index
            for the queries: :meth:`project`).
        folder : path, optional
            Where the file's temporary folder goes (default: the system's temporary folder).
        check, tick
            Called before each block (may raise to stop: nothing is kept) and with the rows of
            each block written.
        """
        centroids = np.ascontiguousarray(centroids, np.float32)
        nlist, dim = centroids.shape
        with _own_folder(folder) as owned:
            quantizer = _quantizer(centroids)
            cells = np.empty(n_rows, np.int32)
            at = 0
            for X in passes():
                check("finding each row's cell")
                X = _rows(X, dim)
                if at + len(X) > n_rows:
                    raise FeatxError(f"the rows outnumber the {n_rows:,} the source said it holds")
                cells[at:at + len(X)] = quantizer.search(X, 1)[1][:, 0]
                at += len(X)
            if at != n_rows:
                raise FeatxError(f"the source said it holds {n_rows:,} rows but its blocks gave "
                                 f"{at:,}; nothing to index.")
            starts = np.zeros(nlist + 1, np.int64)
            np.cumsum(np.bincount(cells, minlength=nlist), out=starts[1:])
            wide = None if projection is None else int(projection.shape[0])
            header, sections = _layout(n_rows, dim, nlist, wide)
            path = owned / "index.ivf"
            ids = np.empty(n_rows, np.int64)
            with open(path, "wb") as f:
                _write_header(f, header)
                for name, value in (("centroids", centroids), ("starts", starts),
                                    ("projection", projection), ("bias", bias)):
                    if value is not None:
                        f.seek(sections[name][0])
                        f.write(np.ascontiguousarray(value, np.float32 if name != "starts"
                                                     else np.int64).tobytes())
                f.truncate(sections["rows"][0] + sections["rows"][1])
                fill, at = starts[:-1].copy(), 0
                row_bytes, rows_at = dim * 2, sections["rows"][0]
                for X in passes():
                    check("writing the rows cell by cell")
                    X = _rows(X, dim)
                    c = cells[at:at + len(X)]
                    if len(c) != len(X):
                        raise FeatxError("the source's second pass gave more rows than its first; "
                                         "a source must give the same rows on every pass.")
                    order = np.argsort(c, kind="stable")
                    sorted_cells = c[order]
                    half = X[order].astype(np.float16)
                    bounds = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1],
                                                  True])
                    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                        cell = sorted_cells[lo]
                        to = int(fill[cell])
                        os.pwrite(f.fileno(), half[lo:hi].tobytes(), rows_at + to * row_bytes)
                        ids[to:to + hi - lo] = at + order[lo:hi]
                        fill[cell] += hi - lo
                    at += len(X)
                    tick(len(X))
                if at != n_rows:
                    raise FeatxError("the source's second pass gave fewer rows than its first; a "
                                     "source must give the same rows on every pass.")
                f.seek(sections["ids"][0])
                f.write(ids.tobytes())
            del cells
            return cls(path, header, centroids, starts, ids,
                       None if projection is None else np.asarray(projection, np.float32),
                       None if bias is None else np.asarray(bias, np.float32), owned)

    # -- files ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, folder: str | os.PathLike[str] | None = None
             ) -> DiskIVF:
        """A copy of the file at ``path`` (hard-linked where it can be), owned by the instance:
        the caller may remove ``path`` afterwards."""
        with _own_folder(folder) as owned:
            mine = owned / "index.ivf"
            try:
                os.link(path, mine)
            except OSError:
                shutil.copyfile(path, mine)
            return cls._read(mine, owned)

    @classmethod
    def _read(cls, path: Path, owned: Path | None) -> DiskIVF:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
                raise FeatxError(f"{str(path)!r} is not a featx kNN index file.")
            version, length = struct.unpack("<II", head[len(MAGIC):])
            if version > _VERSION:
                raise FeatxError(f"{str(path)!r} is a kNN index of format {version}; this featx "
                                 f"reads up to {_VERSION}. Upgrade featx to read it.")
            header = json.loads(f.read(length))
            size = os.fstat(f.fileno()).st_size
            end = max(offset + nbytes for offset, nbytes in header["sections"].values())
            if size < end:
                raise FeatxError(f"{str(path)!r} is cut short ({size:,} of {end:,} bytes); the "
                                 "kNN index is damaged: fit the head again.")
            n, dim, nlist = int(header["rows"]), int(header["dim"]), int(header["nlist"])

            def read(name: str, dtype: Any, count: int) -> np.ndarray | None:
                if name not in header["sections"]:
                    return None
                f.seek(header["sections"][name][0])
                return np.fromfile(f, dtype, count)

            centroids = read("centroids", np.float32, nlist * dim)
            starts = read("starts", np.int64, nlist + 1)
            ids = read("ids", np.int64, n)
            bias = read("bias", np.float32, dim)
            projection = None
            if header.get("input_width") is not None:
                wide = int(header["input_width"])
                projection = read("projection", np.float32, wide * dim)
                assert projection is not None
                projection = projection.reshape(wide, dim)
        assert centroids is not None and starts is not None and ids is not None
        return cls(path, header, centroids.reshape(nlist, dim), starts, ids, projection, bias,
                   owned)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Copy the index to ``path`` (streamed: no copy in memory)."""
        shutil.copyfile(self.path, path)

    def to_bytes(self) -> np.ndarray:
        """The file's bytes, in memory (what pickling holds)."""
        return np.fromfile(self.path, np.uint8)

    @classmethod
    def from_bytes(cls, data: np.ndarray) -> DiskIVF:
        """An index from :meth:`to_bytes`'s bytes, in a file of its own."""
        with _own_folder(None) as owned:
            np.asarray(data, np.uint8).tofile(owned / "index.ivf")
            return cls._read(owned / "index.ivf", owned)

    def close(self) -> None:
        """Remove the file now if this instance owns it (it cannot be searched afterwards)."""
        if self._cleanup is not None:
            self._cleanup()

    # -- searching --------------------------------------------------------------------------
    def project(self, X: np.ndarray) -> np.ndarray:
        """Rows in the indexed space's width (the stored projection applied, if any)."""
        if self.projection is None:
            return np.ascontiguousarray(X, np.float32)
        assert self.bias is not None
        return np.ascontiguousarray(X @ self.projection + self.bias, np.float32)

    def search(self, X: np.ndarray, k: int, nprobe: int,
               prepare: Callable[[np.ndarray], np.ndarray],
               query_batch: int = QUERY_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored rows of each row of ``X`` among its ``nprobe`` nearest cells.

        ``prepare`` maps rows of ``X`` to the indexed space (standardised and projected); it is
        applied to each cell's queries as they are gathered, so no prepared copy of ``X`` is held.
        Returns squared L2 distances (``inf`` where fewer than ``k`` rows were found) and source
        positions (``-1`` there), nearest first.
        """
        faiss = faiss_module()
        nprobe = int(min(max(1, nprobe), self.nlist))
        dist = np.full((len(X), k), np.inf, np.float32)
        ind = np.full((len(X), k), -1, np.int64)
        if self._quantizer is None:
            self._quantizer = _quantizer(self.centroids)
        rows_at = int(self.header["sections"]["rows"][0])
        with open(self.path, "rb") as f:
            for lo in range(0, len(X), query_batch):
                hi = min(len(X), lo + query_batch)
                probes = np.empty((hi - lo, nprobe), np.int32)
                for a in range(lo, hi, 8192):
                    b = min(hi, a + 8192)
                    probes[a - lo:b - lo] = self._quantizer.search(prepare(X[a:b]), nprobe)[1]
                flat = probes.ravel()
                order = np.argsort(flat, kind="stable")
                queries = (order // nprobe).astype(np.int64) + lo
                bounds = np.searchsorted(flat[order], np.arange(self.nlist + 1))
                del probes, flat, order
                for cell in range(self.nlist):
                    a, b = bounds[cell], bounds[cell + 1]
                    first, last = int(self.starts[cell]), int(self.starts[cell + 1])
                    if a == b or first == last:
                        continue
                    f.seek(rows_at + first * self.dim * 2)
                    rows = np.fromfile(f, np.float16, (last - first) * self.dim)
                    rows = rows.reshape(-1, self.dim).astype(np.float32)
                    q = queries[a:b]
                    d, i = faiss.knn(prepare(X[q]), rows, min(k, last - first))
                    _merge(dist, ind, q, d, self.ids[first + i])
        order = np.argsort(dist, axis=1, kind="stable")
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ind, order, 1)


@contextmanager
def _own_folder(folder: str | os.PathLike[str] | None) -> Iterator[Path]:
    """A new temporary folder for an index's file (inside ``folder`` if given), removed if the
    block raises; otherwise the index made in it owns it."""
    owned = Path(tempfile.mkdtemp(prefix="featx-knn-", dir=folder))
    try:
        yield owned
    except BaseException:
        shutil.rmtree(owned, ignore_errors=True)
        raise


def _merge(dist: np.ndarray, ind: np.ndarray, q: np.ndarray, d: np.ndarray, i: np.ndarray
           ) -> None:
    """Keep, for each query ``q``, the ``k`` smallest of its best so far and ``d``."""
    k = dist.shape[1]
    both_d = np.concatenate([dist[q], d], axis=1)
    both_i = np.concatenate([ind[q], i], axis=1)
    keep = np.argpartition(both_d, k - 1, axis=1)[:, :k]
    dist[q] = np.take_along_axis(both_d, keep, 1)
    ind[q] = np.take_along_axis(both_i, keep, 1)


def _quantizer(centroids: np.ndarray) -> Any:
    index = faiss_module().IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, np.float32))
    return index


def _rows(X: np.ndarray, dim: int) -> np.ndarray:
    X = np.ascontiguousarray(X, np.float32)
    if X.ndim != 2 or X.shape[1] != dim:
        raise FeatxError(f"expected rows of width {dim} to index; got shape {X.shape}.")
    return X


def _layout(n: int, dim: int, nlist: int, wide: int | None
            ) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The header and each section's ``[offset, nbytes]``, aligned, after a header of at most
    4 kB (``wide``: the rows' width before a projection, if any)."""
    sizes = {"centroids": nlist * dim * 4, "starts": (nlist + 1) * 8, "ids": n * 8}
    if wide is not None:
        sizes |= {"projection": wide * dim * 4, "bias": dim * 4}
    sizes["rows"] = n * dim * 2
    sections: dict[str, list[int]] = {}
    at = 4096
    for name, nbytes in sizes.items():
        sections[name] = [at, nbytes]
        at += -(-nbytes // _ALIGN) * _ALIGN
    header = {"rows": n, "dim": dim, "nlist": nlist, "input_width": wide, "dtype": "float16",
              "sections": sections}
    return header, sections


def _write_header(f: Any, header: dict[str, Any]) -> None:
    text = json.dumps(header).encode()
    if len(text) + len(MAGIC) + 8 > 4096:
        raise FeatxError("the kNN index's header outgrew its 4 kB")  # pragma: no cover
    f.write(MAGIC + struct.pack("<II", _VERSION, len(text)) + text)
