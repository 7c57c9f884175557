"""The embedding engine: items in, rows and failures out, through the cache and the network.

:func:`embed_items` is the whole pipeline, for one backbone configuration or for several cuts of
one backbone at once (one forward pass, each cut cached in its own group): content keys, cache
lookups (remembered failures included), each distinct content embedded once, decode threads one
batch ahead of the network, one batch in flight on the network, a writer thread committing every
batch to the cache (:class:`featx.cache.writer.CacheWriter`), and an :class:`EmbeddingReport`.
Each chunk of items runs as named steps: keys, lookup, deduplicate (:mod:`featx.embed.chunk`),
run (the network, each :class:`Batch` committed with its own failures), assemble.
:func:`run_network` is its streaming core (decode, prefetch, dispatch) for callers that keep
their own books, such as the Ray workers; :func:`cache_group` and :func:`progress_bar` are
theirs too.

The engine knows nothing about scikit-learn: :class:`featx.ImageEmbedder` is its face there.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.cache.failure import Failure
from featx.cache.store import EmbeddingCache, open_cache
from featx.cache.writer import CacheWriter
from featx.embed.chunk import (
    Lookup,
    Plan,
    assemble,
    content_keys,
    deduplicate,
    failed_duplicates,
    lookup,
    to_compute,
)
from featx.embed.images import Item, batched, chunks, load_pixels
from featx.embed.stream import known_count
from featx.exceptions import FeatxError, ImageLoadError
from featx.nets.backbones import BackboneConfig
from featx.nets.build import get_network
from featx.nets.network import Network

__all__ = ["Batch", "EmbeddingReport", "EngineResult", "embed_items", "run_network",
           "default_workers"]

#: Images larger than this many pixels are refused (decompression-bomb guard); Pillow's limit.
MAX_PIXELS = 89_478_485

#: Items handled per chunk: hashing, lookups and bookkeeping stay bounded however many items
#: stream through; only the returned arrays grow with the input.
CHUNK = 4096

#: Batches decoded ahead of the network (bounded: memory stays flat).
PREFETCH = 2


@dataclass(eq=False)
class EmbeddingReport:
    """What one embedding run did.

    Attributes
    ----------
    n_items : int
        Items received.
    n_hits : int
        Items whose embedding came from the cache.
    n_misses : int
        Items that were not in the cache (or all items, without a cache).
    n_embedded : int
        Distinct items that went through the network (duplicates are computed once).
    n_failed : int
        Items that could not be read or decoded.
    failures : list of Failure
        One record per failed item, by position: ``index``, ``source``, ``reason`` (a failure
        remembered from an earlier run says how to try it again) and ``key`` where the item
        could be read.
    dropped : list of int
        Input positions left out of the output (``on_error="skip"``).
    errors : list of ImageLoadError
        The same failures as errors (``retry_param`` marks those remembered from a run before).
    """

    n_items: int = 0
    n_hits: int = 0
    n_misses: int = 0
    n_embedded: int = 0
    n_failed: int = 0
    failures: list[Failure] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    errors: list[ImageLoadError] = field(default_factory=list, repr=False)

    def _replace_with(self, other: EmbeddingReport) -> None:
        self.__dict__.update(other.__dict__)

    def summary(self) -> str:
        """One line: counts of items, hits, newly embedded and failures."""
        return (
            f"{self.n_items} items: {self.n_hits} from the cache, {self.n_embedded} embedded, "
            f"{self.n_failed} failed"
        )


@dataclass
class EngineResult:
    """The rows of one run, per configuration, in input order (failed items' rows are NaN)."""

    outputs: list[np.ndarray]
    failed: list[ImageLoadError]
    report: EmbeddingReport


def embed_items(
    configs: BackboneConfig | Sequence[BackboneConfig],
    items: Iterable[Item],
    *,
    kind: str = "images",
    sample_shape: tuple[int, ...] | None = None,
    cache: str | os.PathLike[str] | EmbeddingCache | None = None,
    batch_size: int = 32,
    n_workers: int | None = None,
    retry_failed: bool = False,
    verbose: bool = False,
    keep_rows: bool = True,
) -> EngineResult:
    """Embed ``items`` with one configuration, or with several cuts of one backbone at once.

    Parameters
    ----------
    configs : BackboneConfig or sequence of BackboneConfig
        Several configurations must differ only in ``layer`` and ``pooling``: each item then
        goes through the network once, and each configuration's rows are cached in its own group
        (the group an ``ImageEmbedder`` with that layer and pooling reads).
    items : sequence or iterable of Item
        From :func:`featx.embed.images.as_items`: a sequence, or a stream of unknown length
        (tar shards, Parquet rows, a folder listed lazily), read a chunk at a time. Nothing
        but the returned rows and the failures grows with the number of items.
    kind : {"images", "vectors"}
        What the items are.
    sample_shape : tuple of int, optional
        The shape of one sample, for tabular input and backbone functions.
    cache : path or EmbeddingCache, optional
        Where embeddings are looked up and committed, a batch at a time.
    batch_size, n_workers, retry_failed, verbose
        As in :class:`featx.ImageEmbedder`.
    keep_rows : bool, default=True
        False commits and counts without returning vectors (``outputs`` is empty): memory stays
        flat however many items stream through, and cached items are only checked for, never
        read. Needs a cache.

    Returns
    -------
    EngineResult
        ``outputs[i]`` holds configuration i's rows, in input order; failed items' rows are NaN
        and listed in ``failed`` (sorted by position) and in the report.
    """
    configs = [configs] if isinstance(configs, BackboneConfig) else list(configs)
    if cache is None and not keep_rows:
        raise ValueError("keep_rows=False only commits to a cache, and none was given; pass "
                         "cache=.")
    if isinstance(cache, EmbeddingCache) or cache is None:
        store = cache
    else:
        store = open_cache(cache)
    groups = [cache_group(c, sample_shape) for c in configs]
    progress = progress_bar(known_count(items), verbose)
    # A sequence's rows go straight into their place; a stream's count is an estimate (a
    # shard or a part that breaks off yields fewer), so its rows are gathered chunk by chunk.
    total = len(items) if isinstance(items, Sequence) else None
    run = _Run(configs, groups, kind, sample_shape, store, batch_size, n_workers, retry_failed,
               verbose, keep_rows, progress)
    report = EmbeddingReport()
    outputs: list[np.ndarray] | None = None
    parts: list[list[np.ndarray]] = []  # a stream's rows, chunk by chunk (its length unknown)
    failed: list[ImageLoadError] = []
    start = 0
    try:
        for chunk in read_ahead(chunks(items, CHUNK), not isinstance(items, Sequence)):
            part = run.chunk(chunk)
            report.n_hits += part.n_hits
            report.n_misses += part.n_misses
            report.n_embedded += part.n_embedded
            for e in part.failed:
                at = e.index if e.index is not None else 0
                report.failures.append(Failure(source=e.source, reason=e.describe(),
                                               key=part.keys[at], index=start + at))
                e.index = start + at
            failed.extend(part.failed)
            if keep_rows and total is not None and len(chunk) == total:
                outputs = part.outputs
            elif keep_rows and total is not None:
                if outputs is None:
                    outputs = [np.empty((total, p.shape[1]), np.float32) for p in part.outputs]
                for out, rows in zip(outputs, part.outputs, strict=True):
                    out[start : start + len(chunk)] = rows
            elif keep_rows:
                parts.append(part.outputs)
            start += len(chunk)
    finally:
        progress(None)
    report.n_items = start
    if not keep_rows:
        outputs = []
    elif outputs is None and parts:
        outputs = [np.concatenate(rows) for rows in zip(*parts, strict=True)]
    elif outputs is None:  # no items at all: one empty chunk gives the widths
        outputs = run.chunk([]).outputs
    assert outputs is not None
    failed.sort(key=lambda e: e.index if e.index is not None else -1)
    report.failures.sort(key=lambda f: f.index if f.index is not None else -1)
    report.n_failed = len(failed)
    report.errors = failed
    return EngineResult(outputs, failed, report)


def read_ahead(chunks: Iterator[list[Item]], ahead: bool) -> Iterator[list[Item]]:
    """The chunks, the next one read on a thread of its own while this one is embedded (with
    ``ahead``: a stream's reading, such as a shard's download, overlaps the network's work)."""
    if not ahead:
        yield from chunks
        return
    with ThreadPoolExecutor(1, thread_name_prefix="featx-read") as reader:
        coming = reader.submit(next, chunks, None)
        while (chunk := coming.result()) is not None:
            coming = reader.submit(next, chunks, None)
            yield chunk


def cache_group(config: BackboneConfig, sample_shape: tuple[int, ...] | None) -> str:
    """The cache group: the fingerprint, with the sample shape for a backbone function."""
    if config.kind == "builder":
        return f"{config.fingerprint}-{'x'.join(map(str, sample_shape or ()))}"
    return config.fingerprint


def network_for(
    configs: Sequence[BackboneConfig], kind: str, sample_shape: tuple[int, ...] | None
) -> Network:
    """The network for ``configs``, checked against the kind of input it is given."""
    config = configs[0]
    if config.kind == "builder" and sample_shape is None:
        if config.input_size is None:
            raise FeatxError(
                "a backbone function needs input_size=(height, width) to build an image "
                "network; pass input_size."
            )
        sample_shape = (*config.input_size, 3)
    network = get_network(configs, sample_shape if config.kind == "builder" else None)
    if kind == "vectors" and network.is_image:
        raise ValueError(
            f"got a 2-D array of feature vectors, but {config.label} takes images of shape "
            f"{network.sample_shape}. Pass image paths or an (N, H, W[, C]) image array."
        )
    if kind == "images" and not network.is_image:
        raise ValueError(
            f"got images, but the network takes vectors of shape {network.sample_shape}. "
            "Pass a 2-D (n_samples, n_features) array."
        )
    return network


def output_widths(
    configs: Sequence[BackboneConfig], kind: str, sample_shape: tuple[int, ...] | None
) -> list[int]:
    """Each configuration's embedding width; known without building for a registry backbone
    at its default cut."""
    if all(c.kind == "registry" and c.layer is None and c.pooling in ("avg", "max")
           for c in configs):
        return [c.source.width for c in configs]
    return network_for(configs, kind, sample_shape).widths


class _Run:
    """One call of :func:`embed_items`: its settings, applied chunk by chunk."""

    def __init__(
        self,
        configs: list[BackboneConfig],
        groups: list[str],
        kind: str,
        sample_shape: tuple[int, ...] | None,
        cache: EmbeddingCache | None,
        batch_size: int,
        n_workers: int | None,
        retry_failed: bool,
        verbose: bool,
        keep_rows: bool = True,
        progress: Callable[[int | None], None] | None = None,
    ):
        self.configs = configs
        self.groups = groups
        self.kind = kind
        self.sample_shape = sample_shape
        self.cache = cache
        self.batch_size = batch_size
        self.n_workers = n_workers or default_workers()
        self.retry_failed = retry_failed
        self.verbose = verbose
        self.keep_rows = keep_rows
        self.progress = progress or (lambda k: None)

    def chunk(self, items: list[Item]) -> Part:
        """Embed one chunk: its keys, what the cache holds, each distinct content of the rest
        through the network (committed as it comes), and its rows in order."""
        with ThreadPoolExecutor(self.n_workers) as pool:
            keys, failed = (content_keys(items, pool) if self.cache is not None
                            else ([None] * len(items), []))
            held = self._lookup(items, keys)
            failed += held.remembered
            plan = deduplicate(to_compute(held, failed), keys)
            self.progress(len(items) - len(plan.unique))  # found, failed or duplicates
            embedded = self._run(items, keys, held, plan, pool)
        failed += embedded.failed
        failed += failed_duplicates(items, keys, plan, failed)
        outputs = (assemble(self._widths(held, embedded), held, plan, keys, embedded.rows)
                   if self.keep_rows else [])
        return Part(outputs, failed, keys, n_hits=int(held.found_all.sum()),
                    n_misses=len(plan.todo), n_embedded=embedded.count)

    def _lookup(self, items: list[Item], keys: list[str | None]) -> Lookup:
        if self.cache is None:
            return Lookup.nothing(len(items), len(self.configs))
        return lookup(self.cache, self.configs, self.groups, items, keys,
                      keep_rows=self.keep_rows, retry_failed=self.retry_failed)

    def _run(self, items: list[Item], keys: list[str | None], held: Lookup, plan: Plan,
             pool: ThreadPoolExecutor) -> Embedded:
        """Embed ``plan.unique`` (keeping their rows when ``keep_rows``); a writer thread per cut
        commits each batch, its rows and its failures, meanwhile."""
        if not plan.unique:
            return Embedded([{} for _ in self.configs], None, [], 0)
        network = network_for(self.configs, self.kind, self.sample_shape)
        if self.verbose and network.note:
            print(f"featx: {network.note}", file=sys.stderr)
        embedded = Embedded([{} for _ in self.configs], network.widths, [], 0)
        writers = [] if self.cache is None else [
            CacheWriter(self.cache, g, c) for c, g in zip(network.configs, self.groups,
                                                          strict=True)]
        try:
            for batch in run_network(network, items, plan.unique, pool=pool,
                                     batch_size=self.batch_size,
                                     resize=self.configs[0].resize, progress=self.progress):
                embedded.count += len(batch.positions)
                embedded.failed += batch.failed
                if self.keep_rows:
                    for rows, out in zip(embedded.rows, batch.outputs, strict=True):
                        rows.update(zip(batch.positions, out, strict=True))
                commit(writers, batch, items, keys, held.found)
        finally:
            for writer in writers:
                writer.close()  # commits what was embedded, even when the run failed
        return embedded

    def _widths(self, held: Lookup, embedded: Embedded) -> list[int]:
        """Each configuration's width: from the rows found, the network, or the registry."""
        if all(h.size for h in held.hits):
            return [h.shape[1] for h in held.hits]
        if embedded.widths is not None:
            return embedded.widths
        return output_widths(self.configs, self.kind, self.sample_shape)


@dataclass
class Part:
    """What one chunk gave: its rows per configuration (none without ``keep_rows``), its
    failures (positions in the chunk), its keys and its counts."""

    outputs: list[np.ndarray]
    failed: list[ImageLoadError]
    keys: list[str | None]
    n_hits: int
    n_misses: int
    n_embedded: int


@dataclass
class Embedded:
    """What went through the network: rows per configuration by position (kept only with
    ``keep_rows``), the network's widths (None when nothing ran), the positions that failed to
    decode and how many were embedded."""

    rows: list[dict[int, np.ndarray]]
    widths: list[int] | None
    failed: list[ImageLoadError]
    count: int


def commit(writers: Sequence[CacheWriter], batch: Batch, items: Sequence[Item],
           keys: Sequence[str | None], found: Sequence[np.ndarray]) -> None:
    """Hand one batch to each cut's writer: the rows its group lacks (a group that already
    holds an item keeps its row) and the batch's failures, remembered by key."""
    failures = [Failure(key=key, source=e.source, reason=e.reason) for e in batch.failed
                if e.index is not None and (key := keys[e.index]) is not None]
    for c, writer in enumerate(writers):
        new = [j for j, p in enumerate(batch.positions) if not found[c][p]]
        writer.put([str(keys[batch.positions[j]]) for j in new], batch.outputs[c][new],
                   [items[batch.positions[j]].name for j in new], failures)


@dataclass
class Batch:
    """One batch off the network: the positions embedded, one array of rows per network output
    (in the order of ``positions``), and the batch's items that could not be decoded (``index``
    their position)."""

    positions: list[int]
    outputs: list[np.ndarray]
    failed: list[ImageLoadError]


def run_network(
    network: Network,
    items: Sequence[Item],
    positions: Sequence[int],
    *,
    pool: ThreadPoolExecutor,
    batch_size: int = 32,
    resize: str = "resize",
    progress: Callable[[int | None], None] | None = None,
) -> Iterator[Batch]:
    """Decode ``items[p]`` for ``p`` in ``positions`` in ``pool``'s threads, one batch ahead of
    the network; yield a :class:`Batch` per batch of ``positions``, in order.

    Items that cannot be decoded are left out of the network's input and listed in their
    batch's ``failed`` (a batch whose items all failed has no rows). If a batch fails, the batch
    before it is still yielded first.
    """
    loader = _loader(network, resize)
    step = progress or (lambda k: None)
    batches = iter(batched(list(positions), batch_size))
    # Workers decode items; one assembler thread stacks and preprocesses the next batch while
    # the network runs on this one, so the network waits for neither.
    assembler = ThreadPoolExecutor(1, thread_name_prefix="featx-assemble")
    ahead: deque[tuple[Future[Any], list[Future[Any]]]] = deque()

    def assemble(batch: Sequence[int], futures: list[Future[Any]]) -> tuple[
        list[int], np.ndarray | None, list[ImageLoadError]
    ]:
        ok: list[int] = []
        pixels: list[np.ndarray] = []
        errors: list[ImageLoadError] = []
        for p, fut in zip(batch, futures, strict=True):
            try:
                pixels.append(fut.result())
                ok.append(p)
            except ImageLoadError as exc:
                exc.index = p
                errors.append(exc)
        x = network.prepare(pixels) if pixels else None
        return ok, x, errors

    def submit() -> None:
        batch = next(batches, None)
        if batch is not None:
            futures = [pool.submit(loader, items[p]) for p in batch]
            ahead.append((assembler.submit(assemble, batch, futures), futures))

    def no_rows() -> list[np.ndarray]:
        return [np.zeros((0, w), np.float32) for w in network.widths]

    for _ in range(PREFETCH):
        submit()
    # One batch stays in flight: the next is handed to the network before the last one is
    # read back, so a device that runs asynchronously (JAX, OpenVINO) has its next batch when
    # it finishes. If the next batch fails, the one before is still delivered (and cached).
    pending: tuple[list[int], Callable[[], list[np.ndarray]], list[ImageLoadError]] | None = None
    try:
        while ahead:
            try:
                ok, x, errors = ahead.popleft()[0].result()
                submit()
                started = (ok, network.dispatch(x) if x is not None else no_rows, errors)
            except BaseException:
                if pending is not None:
                    yield Batch(pending[0], pending[1](), pending[2])
                raise
            if pending is not None:
                yield Batch(pending[0], pending[1](), pending[2])
            pending = started
            step(len(ok) + len(errors))
        if pending is not None:
            yield Batch(pending[0], pending[1](), pending[2])
    finally:
        for _, futures in ahead:
            for fut in futures:
                fut.cancel()
        assembler.shutdown(wait=True)


def _loader(network: Network, resize: str) -> Callable[[Item], np.ndarray]:
    if not network.is_image:
        shape = network.sample_shape

        def load_vector(item: Item) -> np.ndarray:
            v = np.asarray(item.value, dtype=np.float32)
            if v.shape != shape:
                raise ImageLoadError(item.name, f"expected shape {shape}; got {v.shape}")
            return v

        return load_vector
    size = network.sample_shape[:2]
    channels = network.channels
    decoder = network.config.decoder

    def load_image(item: Item) -> np.ndarray:
        return load_pixels(
            item, (size[0], size[1]), channels=channels, resize=resize, max_pixels=MAX_PIXELS,
            decoder=decoder,
        )

    return load_image


def default_workers() -> int:
    """One decoding thread per core the process may use, up to 16 (Pillow decodes and resizes
    without the GIL, so threads scale with cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def progress_bar(
    total: int | None, verbose: bool, desc: str = "embedding"
) -> Callable[[int | None], None]:
    """A progress callback on stderr: ``step(k)`` advances by k items, ``step(None)`` closes.
    With ``total`` None (a stream of unknown length) it shows a running count and rate."""
    if not verbose or total == 0:
        return lambda k: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc=desc, leave=False, file=sys.stderr)

    def step(k: int | None) -> None:
        if k is None:
            bar.close()
        else:
            bar.update(k)

    return step
