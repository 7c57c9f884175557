"""One Ray actor of :func:`featx.distributed.embed_on_ray`, and what it exchanges with the
driver.

:class:`RayWorker` builds the network once and embeds the shards it is given with featx's engine
(:func:`featx.embed.engine.run_network`): it reads the images, computes their content keys, skips
those in :class:`KnownKeys` (the cache's keys and remembered failures, read in place from Ray's
object store) and sends back a :class:`ShardResult` for the driver to commit. It runs in Ray's
worker processes; the driver's side is :mod:`featx.distributed.driver`.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.cache.failure import Failure
from featx.embed.chunk import safe_key
from featx.embed.engine import cache_group, network_for, run_network
from featx.embed.images import Item
from featx.embed.shards import TarShards, read_shard
from featx.embed.stream import ItemStream
from featx.embed.tables import ParquetImages, is_arrow_table
from featx.exceptions import ImageLoadError

__all__ = ["RayWorker", "KnownKeys", "ShardResult", "FAULT_ENV", "count_items", "item_name"]

#: Test-only: ``FEATX_RAY_FAULT="kill:NAME"`` makes a worker SIGKILL itself whenever it reaches an
#: item whose name contains NAME (as Ray's out-of-memory killer would); ``"kill-once:NAME:FILE"``
#: does it once per cluster (the first worker to create FILE). Several, comma-separated. Unset
#: in normal use.
FAULT_ENV = "FEATX_RAY_FAULT"


@dataclass
class KnownKeys:
    """The cache's keys (sorted, fixed-width bytes: read in place from the object store) and
    its remembered failures."""

    keys: np.ndarray
    failed: dict[str, str]

    def contains(self, keys: list[str]) -> np.ndarray:
        """Which of ``keys`` the cache holds (a boolean mask)."""
        if not len(self.keys) or not keys:
            return np.zeros(len(keys), dtype=bool)
        q = np.array(keys, dtype=self.keys.dtype)
        at = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return np.asarray(self.keys[at] == q)


@dataclass
class ShardResult:
    """What a worker sends back for one shard (positions are the input's)."""

    n_hits: int = 0
    n_misses: int = 0
    keys: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sources: list[str] = field(default_factory=list)
    failed: list[ImageLoadError] = field(default_factory=list)
    remember: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    batches: int = 0
    n_items: int = 0

    def add(self, other: ShardResult) -> None:
        """Take ``other``'s counts and rows after this one's."""
        self.n_hits += other.n_hits
        self.n_misses += other.n_misses
        self.keys += other.keys
        if len(other.keys):
            self.vectors = (other.vectors if not len(self.vectors)
                            else np.concatenate([self.vectors, other.vectors]))
        self.sources += other.sources
        self.failed += other.failed
        self.remember += other.remember
        self.seconds += other.seconds
        self.batches += other.batches
        self.n_items += other.n_items


def count_items(part: ItemStream) -> int:
    """How many items a part holds: a Ray task of no CPU, for the driver halving a part of unknown
    length that a worker died on. Read through, keeping no image bytes."""
    return sum(1 for _ in _names(part))


def item_name(part: ItemStream, at: int) -> str:
    """The name of item ``at`` of a part (read up to it, keeping no image bytes)."""
    item = next(itertools.islice(_names(part), at, None), None)
    return item.name if item is not None else f"{part.describe()}: item {at}"


def _names(part: ItemStream) -> Iterator[Item]:
    """A part's items without their image bytes where the source can skip them."""
    if isinstance(part, TarShards):
        for url in part.urls():
            yield from read_shard(url, label=part.label, extensions=part.extensions,
                                  images=False)
    elif isinstance(part, ParquetImages) and not is_arrow_table(part.source):
        for url in part.urls():
            yield from part.read_file(url, images=False)
    else:
        yield from part


def _fault(name: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for part in spec.split(","):
        mode, _, rest = part.strip().partition(":")
        what, _, marker = rest.partition(":")
        if not what or what not in name:
            continue
        if mode == "kill-once":
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
        if mode in ("kill", "kill-once"):
            os.kill(os.getpid(), signal.SIGKILL)


class RayWorker:
    """A Ray actor: builds the network once and embeds shards with featx's engine."""

    def __init__(
        self,
        embedder: Any,
        kind: str,
        sample_shape: tuple[int, ...] | None,
        batch_size: int,
        threads: int | None,
        retry_failed: bool,
    ):
        import ray

        self.config = embedder.backbone_config()
        self.group = cache_group(self.config, sample_shape)
        self.kind = kind
        self.sample_shape = sample_shape
        self.known: KnownKeys | None = None  # from hello(), the first call of every incarnation
        self.batch_size = batch_size
        self.retry_failed = retry_failed
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self.threads = threads or max(1, min(16, math.ceil(cpus)))
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="featx-decode")
        self.network: Any = None

    def hello(self, known: list[Any]) -> dict[str, Any]:
        """Read the cache's known keys (a reference, in a list so that Ray passes it as is:
        read in place from the object store, by every incarnation of the actor); say who this
        worker is."""
        import ray

        if self.known is None:
            self.known = ray.get(known[0])
        return {"group": self.group, "pid": os.getpid(), "threads": self.threads,
                "node": ray.get_runtime_context().get_node_id()}

    def _network(self) -> Any:
        if self.network is None:
            self.network = network_for([self.config], self.kind, self.sample_shape)
        return self.network

    def warm_up(self) -> float:
        """Build the network and run one full batch (compiles the forward pass); seconds."""
        started = time.perf_counter()
        net = self._network()
        net.embed(np.zeros((self.batch_size, *net.sample_shape),
                           np.uint8 if net.is_image else np.float32))
        return time.perf_counter() - started

    def _key(self, item: Item) -> str | ImageLoadError:
        _fault(item.name)
        return safe_key(item)

    def embed_part(self, part: ItemStream, lo: int, hi: int | None, chunk: int) -> ShardResult:
        """Read items ``[lo, hi)`` of a part (one tar shard, one Parquet file: from object
        storage or a path, by this worker) and embed them ``chunk`` at a time; positions are the
        part's. ``n_items`` says how many were read (the part's length, with ``hi=None``)."""
        out = ShardResult()
        items = itertools.islice(iter(part), lo, hi)
        at = lo
        while batch := list(itertools.islice(items, chunk)):
            out.add(self.embed(list(range(at, at + len(batch))), batch))
            at += len(batch)
        out.n_items = at - lo
        return out

    def embed(self, positions: list[int], items: list[Item]) -> ShardResult:
        """Embed the items of one shard (``positions``: theirs in the input) that the cache
        lacks; failures carry those positions."""
        started = time.perf_counter()
        out = ShardResult()
        keys = list(self.pool.map(self._key, items))
        failed: list[ImageLoadError] = []
        readable = [j for j, k in enumerate(keys) if isinstance(k, str)]
        for j, k in enumerate(keys):
            if isinstance(k, ImageLoadError):
                k.index = j
                failed.append(k)
        assert self.known is not None, "hello() first"
        hit = self.known.contains([str(keys[j]) for j in readable])
        todo: list[int] = []
        for j, is_hit in zip(readable, hit, strict=True):
            key = str(keys[j])
            if is_hit:
                out.n_hits += 1
            elif not self.retry_failed and key in self.known.failed:
                failed.append(ImageLoadError(items[j].name, self.known.failed[key], j,
                                             retry_param="retry_failed"))
            else:
                todo.append(j)
        out.n_misses = len(todo)
        first_of: dict[str, int] = {}
        unique = [j for j in todo if first_of.setdefault(str(keys[j]), j) == j]
        rows: dict[int, np.ndarray] = {}
        decode_failed: list[ImageLoadError] = []
        if unique:
            for batch in run_network(
                self._network(), items, unique, pool=self.pool,
                batch_size=self.batch_size, resize=self.config.resize,
            ):
                decode_failed += batch.failed
                if batch.positions:
                    out.batches += 1
                rows.update(zip(batch.positions, batch.outputs[0], strict=True))
        failed += decode_failed
        bad = {e.index for e in failed}
        for j in todo:
            if j not in bad and first_of[str(keys[j])] in bad:
                failed.append(ImageLoadError(items[j].name, "same content as a failed item", j))
        out.remember = [Failure(key=str(keys[e.index]), source=e.source, reason=e.reason)
                        for e in decode_failed if e.index is not None]
        for e in failed:
            e.index = positions[e.index if e.index is not None else 0]
        out.failed = failed
        done_rows = sorted(rows)
        out.keys = [str(keys[j]) for j in done_rows]
        out.sources = [items[j].name for j in done_rows]
        width = self.network.width if self.network is not None else 0
        out.vectors = (np.stack([rows[j] for j in done_rows]) if done_rows
                       else np.zeros((0, width), np.float32))
        out.seconds = time.perf_counter() - started
        out.n_items = len(items)
        return out
