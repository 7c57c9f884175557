"""The embedding engine: items in, rows and failures out, through the cache and the network.

:func:`embed_items` is the whole pipeline, for one backbone configuration or for several cuts of
one backbone at once (one forward pass, each cut cached in its own group): content keys, cache
lookups (remembered failures included), each distinct content embedded once, decode threads one
batch ahead of the network, one batch in flight on the network, a writer thread committing every
batch to the cache (:class:`featx.cache.writer.CacheWriter`), and an :class:`EmbeddingReport`.
:func:`run_network` is its streaming core (decode, prefetch, dispatch) for callers that keep
their own books, such as the Ray workers; :func:`cache_group`, :func:`safe_key` and
:func:`progress_bar` are theirs too.

The engine knows nothing about scikit-learn: :class:`featx.ImageEmbedder` is its face there.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.cache.store import EmbeddingCache, open_cache
from featx.cache.writer import CacheWriter
from featx.embed.images import Item, batched, load_pixels
from featx.exceptions import FeatxError, ImageLoadError
from featx.nets.backbones import BackboneConfig
from featx.nets.build import get_network
from featx.nets.network import Network

__all__ = ["EmbeddingReport", "EngineResult", "embed_items", "run_network", "default_workers"]

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
    failures : list of (index, source, reason)
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
    failures: list[tuple[int, str, str]] = field(default_factory=list)
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
    items: Sequence[Item],
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
    items : list of Item
        From :func:`featx.embed.images.as_items`.
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
    run = _Run(configs, groups, kind, sample_shape, store, batch_size, n_workers, retry_failed,
               verbose, keep_rows)
    report = EmbeddingReport(n_items=len(items))
    outputs: list[np.ndarray] | None = None
    failed: list[ImageLoadError] = []
    wrote = False
    for start in range(0, max(len(items), 1), CHUNK):
        chunk = list(items[start : start + CHUNK])
        parts, part_failed, part_wrote = run.chunk(chunk, report)
        wrote = wrote or part_wrote
        for e in part_failed:
            e.index = (e.index or 0) + start
        failed.extend(part_failed)
        if not keep_rows:
            outputs = []
        elif len(chunk) == len(items):
            outputs = parts
        else:
            if outputs is None:
                outputs = [np.empty((len(items), p.shape[1]), np.float32) for p in parts]
            for out, part in zip(outputs, parts, strict=True):
                out[start : start + len(chunk)] = part
    assert outputs is not None
    failed.sort(key=lambda e: e.index if e.index is not None else -1)
    report.n_failed = len(failed)
    report.failures = [(int(e.index or 0), e.source, e.describe()) for e in failed]
    report.errors = failed
    return EngineResult(outputs, failed, report)


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

    def chunk(
        self, items: list[Item], report: EmbeddingReport
    ) -> tuple[list[np.ndarray], list[ImageLoadError], bool]:
        n = len(items)
        k = len(self.configs)
        cache = self.cache
        failed: list[ImageLoadError] = []
        pool = ThreadPoolExecutor(self.n_workers)
        writers: list[CacheWriter | None] = [None] * k
        try:
            # 1. Content keys (only needed with a cache: they read every file once).
            keys: list[str | None] = [None] * n
            if cache is not None:
                for i, result in enumerate(pool.map(safe_key, items)):
                    if isinstance(result, ImageLoadError):
                        result.index = i
                        failed.append(result)
                    else:
                        keys[i] = result
            # 2. Cache lookups, per group; an item is a hit when every group has it. Items that
            #    failed to decode in an earlier run fail again at once.
            found = [np.zeros(n, dtype=bool) for _ in range(k)]
            hits: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * k
            if cache is not None:
                known = [i for i in range(n) if keys[i] is not None]
                known_keys = [str(keys[i]) for i in known]
                for c, (config, group) in enumerate(zip(self.configs, self.groups, strict=True)):
                    if self.keep_rows:
                        mask, hits[c] = cache.lookup(group, known_keys,
                                                     fields=config.fingerprint_fields)
                    else:  # only whether it is there: no vector is read
                        mask = cache.contains(group, known_keys, fields=config.fingerprint_fields)
                    found[c][np.asarray(known, dtype=np.int64)[mask]] = True
                if not self.retry_failed:
                    missing = [i for i in known if not all(f[i] for f in found)]
                    missing_keys = [str(keys[i]) for i in missing]
                    remembered: dict[str, str] = {}
                    for group in self.groups:
                        remembered.update(cache.failures(group, missing_keys))
                    for i in missing:
                        if keys[i] in remembered:
                            failed.append(ImageLoadError(items[i].name, remembered[str(keys[i])],
                                                         i, retry_param="retry_failed"))
            found_all = np.logical_and.reduce(found) if k > 1 else found[0]
            report.n_hits += int(found_all.sum())
            failed_idx = {e.index for e in failed}
            todo = [i for i in range(n) if not found_all[i] and i not in failed_idx]
            report.n_misses += len(todo)
            # 3. Duplicates are computed once: the first position with a key stands for the rest.
            first_of: dict[str, int] = {}
            unique: list[int] = []
            for i in todo:
                key = keys[i]
                if key is None or key not in first_of:
                    if key is not None:
                        first_of[key] = i
                    unique.append(i)
            # 4. Embed the misses; writer threads commit each batch to the cache meanwhile.
            widths: list[int] | None = [h.shape[1] for h in hits] if all(
                h.size for h in hits) else None
            rows: list[dict[int, np.ndarray]] = [{} for _ in range(k)]
            if unique:
                network = network_for(self.configs, self.kind, self.sample_shape)
                if self.verbose and network.note:
                    print(f"featx: {network.note}", file=sys.stderr)
                widths = network.widths
                if cache is not None:
                    writers = [CacheWriter(cache, g, c) for c, g in
                               zip(network.configs, self.groups, strict=True)]
                report.n_embedded += self._embed(network, items, unique, pool, failed, keys,
                                                 found, rows, writers)
            if not self.keep_rows:
                return [], failed + self._failed_duplicates(items, todo, keys, first_of, failed), \
                    any(w is not None for w in writers)
            if widths is None:
                widths = output_widths(self.configs, self.kind, self.sample_shape)
            outs = [np.full((n, w), np.nan, dtype=np.float32) for w in widths]
            for c in range(k):
                if found[c].any():
                    outs[c][found[c]] = hits[c]
                for i in todo:
                    key = keys[i]
                    src = first_of.get(key, i) if key is not None else i
                    if src in rows[c]:
                        outs[c][i] = rows[c][src]
            failed += self._failed_duplicates(items, todo, keys, first_of, failed)
        finally:
            pool.shutdown(wait=True)
            for writer in writers:
                if writer is not None:
                    writer.close()  # commits what was embedded, even when the run failed
        return outs, failed, any(w is not None for w in writers)

    @staticmethod
    def _failed_duplicates(items: list[Item], todo: list[int], keys: list[str | None],
                           first_of: dict[str, int], failed: list[ImageLoadError]
                           ) -> list[ImageLoadError]:
        """Duplicates of an item that failed fail too."""
        bad_first = {e.index for e in failed}
        return [ImageLoadError(items[i].name, "same content as a failed item", i)
                for i in todo
                if (key := keys[i]) is not None and first_of.get(key, i) in bad_first
                and i not in bad_first]

    def _embed(
        self,
        network: Network,
        items: list[Item],
        unique: list[int],
        pool: ThreadPoolExecutor,
        failed: list[ImageLoadError],
        keys: list[str | None],
        found: list[np.ndarray],
        rows: list[dict[int, np.ndarray]],
        writers: list[CacheWriter | None],
    ) -> int:
        """Embed ``unique`` positions, keeping their rows (``keep_rows``) and committing them;
        return how many were embedded."""
        n_failed_before = len(failed)
        n_embedded = 0

        def commit(positions: list[int], outputs: list[np.ndarray]) -> None:
            nonlocal n_failed_before
            fresh = failed[n_failed_before:]
            n_failed_before = len(failed)
            bad = [(str(keys[e.index]), e.source, e.reason) for e in fresh
                   if e.index is not None and keys[e.index] is not None]
            for c, writer in enumerate(writers):
                if writer is None:
                    continue
                # A group that already holds an item keeps its row.
                new = [j for j, p in enumerate(positions) if not found[c][p]]
                writer.put([str(keys[positions[j]]) for j in new], outputs[c][new],
                           [items[positions[j]].name for j in new], bad)

        progress = progress_bar(len(unique), self.verbose)
        try:
            for positions, outputs in run_network(
                network, items, unique, pool=pool, failed=failed, batch_size=self.batch_size,
                resize=self.configs[0].resize, progress=progress,
            ):
                n_embedded += len(positions)
                if self.keep_rows:
                    for c in range(len(rows)):
                        for p, v in zip(positions, outputs[c], strict=True):
                            rows[c][p] = v
                commit(positions, outputs)
            commit([], [np.zeros((0, w), np.float32) for w in network.widths])
        finally:
            progress(None)
        return n_embedded


def run_network(
    network: Network,
    items: Sequence[Item],
    positions: Sequence[int],
    *,
    pool: ThreadPoolExecutor,
    failed: list[ImageLoadError],
    batch_size: int = 32,
    resize: str = "resize",
    progress: Callable[[int | None], None] | None = None,
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """Decode ``items[p]`` for ``p`` in ``positions`` in ``pool``'s threads, one batch ahead of
    the network; yield ``(positions, outputs)`` per batch, one array per network output.

    Items that cannot be decoded are appended to ``failed`` (their ``index`` is the position)
    and left out of the batches. If a batch fails, the batch before it is still yielded first.
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

    for _ in range(PREFETCH):
        submit()
    # One batch stays in flight: the next is handed to the network before the last one is
    # read back, so a device that runs asynchronously (JAX, OpenVINO) has its next batch when
    # it finishes. If the next batch fails, the one before is still delivered (and cached).
    pending: tuple[list[int], Callable[[], list[np.ndarray]]] | None = None
    try:
        while ahead:
            try:
                ok, x, errors = ahead.popleft()[0].result()
                submit()
                failed.extend(errors)
                started = (ok, network.dispatch(x)) if x is not None else None
            except BaseException:
                if pending is not None:
                    yield pending[0], pending[1]()
                raise
            if pending is not None:
                yield pending[0], pending[1]()
            pending = started
            step(len(ok) + len(errors))
        if pending is not None:
            yield pending[0], pending[1]()
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


def safe_key(item: Item) -> str | ImageLoadError:
    """``item``'s content key, or the error reading it raised (for a thread pool's map)."""
    try:
        return item.key()
    except ImageLoadError as exc:
        return exc


def progress_bar(
    total: int, verbose: bool, desc: str = "embedding"
) -> Callable[[int | None], None]:
    """A progress callback on stderr: ``step(k)`` advances by k items, ``step(None)`` closes."""
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
