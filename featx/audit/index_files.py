"""An :class:`~featx.audit.index.EmbeddingIndex` kept beside its cache, reused while it is current.

Layout, next to the cache's main file ``emb.h5``::

    emb.h5.index/<fingerprint[:16]>-<identity[:16]>.faiss   faiss.write_index's bytes
    emb.h5.index/<fingerprint[:16]>-<identity[:16]>.npz     the rows' content keys (and mean row)
    emb.h5.index/<fingerprint[:16]>-<identity[:16]>.json    what it covers; written last

The *identity* is the sha256 of what decides the index's contents: the group's fingerprint and
row count, every cache file's name, size and modification time (the main file and the committed
segments: O(log N) files, one ``stat`` each), the digest of the keys asked for (when restricted),
and the index settings. So checking costs a directory listing, never a list of all keys: when a
batch is committed or files are merged the name changes and the index is built again (a merge
that left the rows as they were rebuilds it too: rebuilding costs one pass over the group).

Each file is written to a temporary name (starting with a dot) and renamed; the JSON comes last,
so an index without its JSON is never read. Saving one removes the older indexes of the same
group, keys and settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from featx.audit.faiss_tools import faiss_module

__all__ = ["IndexFiles", "index_dir"]

_FORMAT = 1


def index_dir(cache_path: str | os.PathLike[str]) -> Path:
    """Where the indexes of the cache ``cache_path`` are kept: ``<cache>.index/``."""
    path = Path(cache_path)
    return path.with_name(path.name + ".index")


class IndexFiles:
    """The kept index of one group (and keys and settings) of a cache: its name and files."""

    def __init__(self, store: Any, info: Any, wanted: np.ndarray | None,
                 settings: dict[str, Any]):
        self.dir = index_dir(store.path)
        keys = None if wanted is None else hashlib.sha256(wanted.tobytes()).hexdigest()
        self.scope = {"format": _FORMAT, "fingerprint": info.fingerprint, "keys": keys,
                      "settings": settings}
        self.identity = {**self.scope, "rows": int(info.rows), "files": _files(store)}
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()
        self.name = f"{info.fingerprint[:16]}-{digest[:16]}"

    def _path(self, suffix: str) -> Path:
        return self.dir / f"{self.name}{suffix}"

    def load(self, cls: Any) -> Any:
        """The kept index when it is current, else ``None`` (a damaged one is rebuilt)."""
        meta_path = self._path(".json")
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("identity") != self.identity:
                return None
            index = faiss_module().read_index(str(self._path(".faiss")))
            with np.load(self._path(".npz"), allow_pickle=False) as parts:
                ids = parts["ids"]
                mean = parts["mean"] if "mean" in parts else None
            built = cls(index, ids, mean=mean, fingerprint=self.identity["fingerprint"],
                        nprobe=int(meta["nprobe"]))
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        built.path = self._path(".faiss")
        return built

    def save(self, index: Any) -> None:
        """Write ``index`` (temporary names, then renames; the JSON last), then remove the older
        indexes of the same scope. A read-only place is skipped: the index still serves."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = f".{self.name}-{os.getpid()}"
            faiss_tmp = self.dir / f"{tmp}.faiss"
            faiss_module().write_index(index.faiss_index, str(faiss_tmp))
            npz_tmp = self.dir / f"{tmp}.npz"
            parts = {"ids": index._ids} if index.mean is None else {"ids": index._ids,
                                                                    "mean": index.mean}
            with open(npz_tmp, "wb") as f:
                np.savez(f, **parts)
            meta_tmp = self.dir / f"{tmp}.json"
            meta_tmp.write_text(json.dumps({"identity": self.identity, "rows": len(index),
                                            "width": index.width, "kind": index.kind,
                                            "nprobe": index.nprobe}, indent=1))
            os.replace(faiss_tmp, self._path(".faiss"))
            os.replace(npz_tmp, self._path(".npz"))
            os.replace(meta_tmp, self._path(".json"))
        except OSError:
            for leftover in self.dir.glob(f".{self.name}-{os.getpid()}.*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            return
        index.path = self._path(".faiss")
        self._remove_older()

    def _remove_older(self) -> None:
        prefix = self.name.split("-")[0]
        for meta_path in self.dir.glob(f"{prefix}-*.json"):
            if meta_path.stem == self.name:
                continue
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            identity = meta.get("identity", {})
            if {k: identity.get(k) for k in self.scope} == self.scope:
                for suffix in (".json", ".faiss", ".npz"):  # the JSON first: never half-read
                    with contextlib.suppress(OSError):
                        meta_path.with_suffix(suffix).unlink()


def _files(store: Any) -> list[list[Any]]:
    """Name, size and modification time of the cache's main file and committed segments."""
    out = []
    paths = [Path(store.path)]
    seg = Path(store.segment_dir)
    if seg.is_dir():
        paths += sorted(p for p in seg.iterdir() if not p.name.startswith("."))
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out
