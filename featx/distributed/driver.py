"""Embedding on a Ray cluster into the one cache: :func:`embed_on_ray`.

:func:`embed_on_ray` splits the items into shards and hands them to Ray actors, one per GPU (or
per node on a CPU cluster). Each actor (:class:`featx.distributed.worker.RayWorker`) builds the
network once and runs featx's engine (:func:`featx.embed.engine.run_network`) on its shards, with
decode threads sized to the CPUs Ray gave it. Workers read the image bytes (a tar shard or
Parquet file of a stream: the whole part, from object storage or a path) and compute the content
keys; the driver sends references and never reads an image. The cache's known keys (and
remembered failures) go into Ray's object store once; workers skip them and send back keys,
vectors and failures, which the driver commits to the cache as they stream in, through the cache
writer (:class:`featx.cache.writer.CacheWriter`; a segment per commit: no shared file system
needed).
A worker that dies is replaced by Ray and its unfinished shard is done again; a shard that kills
workers is halved until the one item that does it is found and reported.

Joining or starting the cluster (:func:`ray_session`) and heads on Ray through joblib
(:func:`ray_joblib`, :func:`object_store_array`) are :mod:`featx.distributed.cluster`'s, importable
from here too.

Ray is imported only when used: ``pip install 'featx[ray]'``. See ``docs/distributed.md``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.cache.failure import Failure
from featx.cache.store import EmbeddingCache
from featx.cache.writer import CacheWriter
from featx.distributed.cluster import (
    ClusterError,
    import_ray,
    ray_session,
)
from featx.distributed.units import Plan, Unit
from featx.distributed.worker import KnownKeys, RayWorker, ShardResult, count_items, item_name
from featx.embed.engine import EmbeddingReport, cache_group, progress_bar
from featx.embed.images import iter_items
from featx.exceptions import FeatxError, ImageLoadError
from featx.nets.backbones import BackboneConfig

__all__ = ["RayEmbeddingReport", "embed_on_ray"]

#: Shards each worker holds at once: one running, one waiting, so a worker never idles
#: between shards.
DEPTH = 2

#: A shard is this many batches unless ``shard_size`` says otherwise.
SHARD_BATCHES = 8


# ---- the report ----------------------------------------------------------------------------------


@dataclass(eq=False)
class RayEmbeddingReport(EmbeddingReport):
    """An :class:`~featx.embed.engine.EmbeddingReport`, with what the cluster did.

    Attributes
    ----------
    n_workers : int
        Ray actors that embedded.
    n_nodes : int
        Cluster nodes they ran on.
    n_shards : int
        Shards the items were sent in (halves of retried shards included).
    worker_deaths : int
        Times a worker died (killed, out of memory, node lost) and its shard was done again.
    startup_seconds : float
        From the call until every worker was ready (actors placed, network built and warm).
    embed_seconds : float
        From then until the last shard was committed.
    commit_seconds : float
        Time the driver's cache writer spent committing (off the driver's loop).
    n_committed : int
        Rows committed to the cache.
    """

    n_workers: int = 0
    n_nodes: int = 0
    n_shards: int = 0
    worker_deaths: int = 0
    startup_seconds: float = 0.0
    embed_seconds: float = 0.0
    commit_seconds: float = 0.0
    n_committed: int = 0

    def summary(self) -> str:
        """One line: the counts, and the workers that made them."""
        deaths = f", {self.worker_deaths} worker deaths" if self.worker_deaths else ""
        return f"{super().summary()} on {self.n_workers} Ray workers{deaths}"


# ---- the driver ----------------------------------------------------------------------------------


class _TimedCache(EmbeddingCache):
    """The cache, timing its commits (the driver's commit rate is measured, not guessed)."""

    seconds = 0.0
    rows = 0

    def append(self, *args: Any, **kwargs: Any) -> int:
        started = time.perf_counter()
        try:
            n = super().append(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
        self.rows += n
        return n


def _is_worker_loss(exc: BaseException) -> bool:
    """A worker died (killed, out of memory, node lost) or ran out of memory in Python."""
    from ray import exceptions as rex

    if isinstance(exc, rex.RayActorError):
        return not exc.actor_init_failed
    if isinstance(exc, (rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError,
                        rex.ObjectLostError)):
        return True
    return isinstance(exc, rex.RayTaskError) and isinstance(exc.cause, MemoryError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _plan_workers(
    ray: Any, workers: int | None, cpus: float | None, gpus: float | None
) -> tuple[int, float, float]:
    """How many actors, and the CPUs and GPUs of each: one per GPU on a GPU cluster, one per
    node on a CPU cluster, unless told."""
    total = ray.cluster_resources()
    n_gpus = float(total.get("GPU", 0.0))
    if gpus is None:
        gpus = 1.0 if n_gpus >= 1 else 0.0
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    if workers is None:
        workers = int(n_gpus // gpus) if gpus else max(1, len(nodes))
    if workers < 1:
        raise ClusterError(
            f"the Ray cluster has {n_gpus:g} GPUs, too few for one worker with "
            f"{gpus:g} GPUs; pass gpus_per_worker=0 (--gpus-per-worker 0) to run on CPUs."
        )
    if cpus is None:
        per_node = min((float(n["Resources"]["CPU"]) for n in nodes), default=1.0)
        share = float(total.get("CPU", 1.0)) / workers
        cpus = max(1.0, math.floor(min(share, per_node) if not gpus else share))
    return workers, float(cpus), float(gpus)


def embed_on_ray(
    X: Any,
    embedder: Any,
    *,
    cache: str | os.PathLike[str] | None = None,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    shard_size: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    max_worker_deaths: int | None = None,
    ready_timeout: float = 600.0,
    warm_up: bool = False,
    verbose: bool | None = None,
) -> RayEmbeddingReport:
    """Embed ``X`` on a Ray cluster into the embedder's cache; return what was done.

    Each worker is a Ray actor that builds the network once and runs featx's engine on the
    shards it is given. Workers read the images and compute their content keys; items the cache
    holds (or remembers as failed) are skipped there. The driver commits the rows to the cache
    as they arrive, a shard at a time. The embeddings are then read with
    ``embedder.transform(X)`` (all cache hits) or :func:`featx.tune_heads` on the cache.

    Parameters
    ----------
    X : images
        What :meth:`featx.ImageEmbedder.transform` takes. File paths and URLs are read by the
        workers, so they must be readable there (the same path on every node, or a URL). A
        stream's parts that hold image bytes (a :class:`~featx.TarShards` shard, a
        :class:`~featx.ParquetImages` file) are sent as references and read by the worker
        that embeds them (:mod:`featx.distributed.units`): from object storage, no shared file
        system is needed. A folder or CSV listing is listed here and sent as paths or URLs.
    embedder : ImageEmbedder
        Its backbone settings, ``batch_size``, ``cache``, ``retry_failed``, ``n_workers``
        (decode threads per worker; default one per CPU of the worker) and ``verbose`` apply;
        ``on_error`` does not (no rows are returned: every failure is in the report).
    cache : path, optional
        Instead of ``embedder.cache``; one of them is needed.
    address : str, optional
        The cluster to join; default ``$RAY_ADDRESS``, else a local cluster started (and shut
        down) here. Ignored when Ray is already initialised in this process.
    workers : int, optional
        How many actors; default one per GPU on a cluster with GPUs, else one per node.
    cpus_per_worker, gpus_per_worker : float, optional
        Resources of each actor; default one GPU each on a GPU cluster, and the CPUs shared out.
    shard_size : int, optional
        Items per task (default 8 batches): the most a worker death or a killed driver loses
        is ``workers x 2`` shards, which a rerun embeds.
    runtime_env : dict, optional
        Ray's runtime environment for the actors (``env_vars``, ``pip``, ...).
    max_worker_deaths : int, optional
        Stop with an error after this many worker deaths (default ``max(16, 4 x workers)``).
    ready_timeout : float, default=600
        Seconds the workers may take to start (and to warm up), and the longest a shard may
        take.
    warm_up : bool, default=False
        Build the network and run one batch on every worker before the first shard, so that
        ``startup_seconds`` and ``embed_seconds`` part start-up from embedding (benchmarks).
        By default a network is built when a worker first needs it: a rerun whose items are
        all cached builds none.
    verbose : bool, optional
        A progress bar (images/s, ETA); default ``embedder.verbose``.

    Returns
    -------
    RayEmbeddingReport
        The counts ``ImageEmbedder.report_`` has (items, hits, misses, embedded, failures with
        positions and reasons) and the cluster's (workers, shards, deaths, seconds).

    Raises
    ------
    FeatxError
        Ray is not installed, no cache is given, or the workers resolve the backbone to another
        fingerprint than the driver.
    ClusterError
        The cluster cannot be reached, cannot place the workers, or lost too many of them.
    """
    started = time.perf_counter()
    cache_path = cache if cache is not None else getattr(embedder, "cache", None)
    if cache_path is None:
        raise FeatxError(
            "embed_on_ray writes the embeddings to a cache, and none was given; pass cache= "
            "(or an ImageEmbedder with cache='emb.h5')."
        )
    import_ray()
    config = embedder.backbone_config()
    if config.precision == "int8":
        raise FeatxError(
            "precision='int8' does not run on Ray yet: each worker would need the calibration "
            "images to quantize the network. Embed here (without --ray) with int8, or use "
            "precision='mixed_bfloat16' on the cluster (about 0.7x INT8's speed on CPUs with "
            "AMX, no calibration)."
        )
    source, kind = iter_items(X)
    sample_shape = (int(np.asarray(X).shape[1]),) if kind == "vectors" else None
    report = RayEmbeddingReport()
    batch_size = int(getattr(embedder, "batch_size", 32))
    shard = int(shard_size or SHARD_BATCHES * batch_size)
    if shard < 1:
        raise FeatxError(f"shard_size={shard_size!r} is not valid; expected a positive integer.")
    plan = Plan(source, shard)  # type: ignore[arg-type]
    units = plan.units()
    first = next(units, None)
    if first is None:
        return report
    group = cache_group(config, sample_shape)
    store = _TimedCache(cache_path)
    retry = bool(getattr(embedder, "retry_failed", False))
    known_keys, known_failed = store.known_key_array(group, fields=config.fingerprint_fields)
    known = KnownKeys(known_keys, {} if retry else known_failed)
    show = bool(getattr(embedder, "verbose", False) if verbose is None else verbose)
    with ray_session(address) as ray:
        n, cpus, gpus = _plan_workers(ray, workers, cpus_per_worker, gpus_per_worker)
        report.n_workers = n
        actor = ray.remote(RayWorker).options(
            num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
            scheduling_strategy="SPREAD", runtime_env=runtime_env,
        )
        known_ref = ray.put(known)
        handles = [
            actor.remote(embedder, kind, sample_shape, batch_size,
                         getattr(embedder, "n_workers", None), retry)
            for _ in range(n)
        ]
        try:
            nodes = _wait_ready(ray, handles, [known_ref], group, config, ready_timeout, cpus,
                                gpus, warm_up)
            report.n_nodes = len(set(nodes))
            report.startup_seconds = time.perf_counter() - started
            t0 = time.perf_counter()
            _Driver(ray, handles, [known_ref], plan, itertools.chain([first], units), report,
                    shard_size=shard, store=store, group=group, config=config,
                    max_deaths=max_worker_deaths or max(16, 4 * n), timeout=ready_timeout,
                    show=show, runtime_env=runtime_env).run()
            report.embed_seconds = time.perf_counter() - t0
        finally:
            for h in handles:
                ray.kill(h, no_restart=True)
    report.commit_seconds = store.seconds
    report.n_committed = store.rows
    return report


def _wait_ready(ray: Any, handles: list[Any], known: list[Any], group: str,
                config: BackboneConfig,
                timeout: float, cpus: float, gpus: float, warm_up: bool) -> list[str]:
    """Every actor placed (its network built and warm, with ``warm_up``); its fingerprint is
    the driver's."""
    from ray import exceptions as rex

    hellos = [h.hello.remote(known) for h in handles]
    warm = [h.warm_up.remote() for h in handles] if warm_up else []
    ready, pending = ray.wait(hellos + warm, num_returns=len(hellos) + len(warm),
                              timeout=timeout)
    if pending:
        raise ClusterError(
            f"{len(handles)} Ray workers with {cpus:g} CPUs and {gpus:g} GPUs each could not all "
            f"start within {timeout:g} s; the cluster has {ray.cluster_resources()}. Pass fewer "
            "workers or fewer resources per worker (--workers, --gpus-per-worker)."
        )
    try:
        infos = ray.get(hellos)
        ray.get(warm)
    except rex.RayActorError as exc:
        raise FeatxError(f"a Ray worker could not start: {_cause_line(exc)}") from None
    except rex.RayTaskError as exc:
        raise FeatxError(f"a Ray worker could not build the network: {_cause_line(exc)}") from None
    for info in infos:
        if info["group"] != group:
            raise FeatxError(
                f"a Ray worker (node {info['node'][:8]}) resolves {config.label} to the cache "
                f"group {info['group']}, the driver to {group}: its Keras version or backend "
                "differs. Give the workers the driver's versions (runtime_env) and retry."
            )
    return [str(info["node"]) for info in infos]


def _cause_line(exc: BaseException) -> str:
    """The original error's last line (Ray wraps it in a traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if ":" in line and not line.startswith(("File ", "^")):
            return line
    return lines[-1] if lines else type(exc).__name__


class _Driver:
    """One run's driver: hands out shards, takes results in as they come, commits them; redoes
    what dying workers lost."""

    def __init__(
        self,
        ray: Any,
        handles: list[Any],
        known: list[Any],
        plan: Plan,
        units: Iterator[Unit],
        report: RayEmbeddingReport,
        *,
        shard_size: int,
        store: _TimedCache,
        group: str,
        config: BackboneConfig,
        max_deaths: int,
        timeout: float,
        show: bool,
        runtime_env: dict[str, Any] | None = None,
    ):
        self.ray = ray
        self.handles = handles
        self.known = known
        self.plan = plan
        self.units = units  # made as workers need them: a stream is listed as it is embedded
        self.shard_size = shard_size
        self.report = report
        self.store = store
        self.max_deaths = max_deaths
        self.timeout = timeout
        self.runtime_env = runtime_env
        self.todo: deque[Unit] = deque()
        self.inflight: dict[Any, tuple[int, Unit]] = {}
        self.queues: list[list[Any]] = [[] for _ in handles]  # per actor, in submission order
        self.failures: list[tuple[int, ImageLoadError]] = []  # (segment, error)
        self.writer = CacheWriter(store, group, config)
        self.progress = progress_bar(plan.total, show, desc="embedding on Ray")
        self.last_loss = ""
        self.probes: dict[Any, int] = {}  # a restarted actor's first call -> the actor
        self.restarting: set[int] = set()  # actors Ray is replacing: nothing is sent to them
        # Shards a dying worker held: each runs alone on a worker (nothing queued behind it), so
        # that a worker dying on it tells which shard killed it.
        self.suspects: deque[Unit] = deque()

    def run(self) -> None:
        """Every shard embedded and committed (or its one bad item reported); the report's
        counts filled in."""
        try:
            self._loop()
        finally:
            self.progress(None)
            self.writer.close()  # commits what arrived, even when the run failed
        report = self.report
        report.n_items = self.plan.n_items()
        report.n_shards = self.plan.n_units + report.n_shards
        offsets = self.plan.offsets()
        for segment, e in self.failures:
            e.index = offsets[segment] + int(e.index or 0)
        failures = sorted((e for _, e in self.failures), key=lambda e: e.index or 0)
        report.n_embedded = self.store.rows  # rows this run committed: each key once
        report.n_failed = len(failures)
        report.failures = [Failure(source=e.source, reason=e.describe(), index=int(e.index or 0))
                           for e in failures]
        report.errors = failures

    def _loop(self) -> None:
        ray = self.ray
        last_progress = time.monotonic()
        while self._more() or self.suspects or self.inflight:
            # Every worker gets a shard before any gets a second (few shards, many workers).
            for depth in range(1, DEPTH + 1):
                for a in range(len(self.handles)):
                    self._submit(a, depth)
            ready, _ = ray.wait([*self.inflight, *self.probes], num_returns=1, timeout=5.0)
            if not ready and time.monotonic() - last_progress > self.timeout:
                raise ClusterError(
                    f"no shard finished within {self.timeout:g} s; the cluster has "
                    f"{ray.available_resources()} free. Its workers may have lost their nodes; "
                    "what was committed is in the cache: a rerun embeds only the rest."
                )
            for ref in ready:
                if ref in self.probes:
                    self._probed(ref)
                    continue
                if ref not in self.inflight:
                    continue  # handled with its actor's loss
                a, s = self.inflight[ref]
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker, or a real error
                    if not _is_worker_loss(exc):
                        raise
                    self._lost(a, exc)
                    continue
                del self.inflight[ref]
                self.queues[a].remove(ref)
                self._take(result, s)
                last_progress = time.monotonic()

    def _more(self) -> bool:
        """Whether a unit is waiting (the next one made when none is)."""
        if not self.todo:
            unit = next(self.units, None)
            if unit is not None:
                self.todo.append(unit)
        return bool(self.todo)

    def _send(self, a: int, s: Unit) -> None:
        if s.items is not None:
            ref = self.handles[a].embed.remote(s.positions, s.items)
        else:
            ref = self.handles[a].embed_part.remote(s.part, s.lo, s.hi, self.shard_size)
        self.inflight[ref] = (a, s)
        self.queues[a].append(ref)

    def _submit(self, a: int, depth: int) -> None:
        if a in self.restarting:
            return
        queue = self.queues[a]
        if self.suspects:
            if not queue:
                self._send(a, self.suspects.popleft())
            return  # a busy worker finishes first, then takes a suspect alone
        if any(self.inflight[ref][1].attempts for ref in queue):
            return  # the last suspect (a shard tried before) runs alone too
        while len(queue) < depth and self._more():
            self._send(a, self.todo.popleft())

    def _take(self, result: ShardResult, s: Unit) -> None:
        self.report.n_hits += result.n_hits
        self.report.n_misses += result.n_misses
        self.failures.extend((s.segment, e) for e in result.failed)
        self.plan.learn(s, result.n_items)
        self.writer.put(result.keys, result.vectors, result.sources, result.remember)
        self.progress(result.n_items)

    def _lost(self, a: int, exc: BaseException) -> None:
        """Actor ``a`` died. The oldest shard it held was running: it is halved (or, one item
        that killed a worker alone twice, reported). Each shard it held runs alone next."""
        ray = self.ray
        report = self.report
        report.worker_deaths += 1
        self.last_loss = _first_line(exc)
        refs, self.queues[a] = self.queues[a], []
        ray.wait(refs, num_returns=len(refs), timeout=60)
        held: list[Unit] = []
        for ref in refs:
            _, s = self.inflight.pop(ref)
            try:
                self._take(ray.get(ref, timeout=0), s)  # it finished before the worker died
            except Exception as err:  # noqa: BLE001 - sorted out below
                if not _is_worker_loss(err) and not isinstance(err, ray.exceptions.GetTimeoutError):
                    raise
                held.append(s)
        back: list[Unit] = []
        for i, s in enumerate(held):
            s.attempts += 1
            size = self._size(s) if i == 0 else None
            if i == 0 and size is not None and size > 1:
                back += s.halves(size)
                report.n_shards += 1
            elif i == 0 and len(refs) == 1 and s.attempts >= 2 and size == 1:
                self.failures.append((s.segment, ImageLoadError(
                    self._name(s), f"the Ray worker embedding it died ({self.last_loss}); "
                    "out of memory? It was tried alone and killed the worker again",
                    s.first_position())))
                self.plan.learn(s, 1)
                self.progress(1)
            elif size == 0:
                self.plan.learn(s, 0)
            else:
                back.append(s)
        self.suspects.extendleft(reversed(back))
        if report.worker_deaths > self.max_deaths:
            raise ClusterError(
                f"Ray workers died {report.worker_deaths} times (last: {self.last_loss}); "
                "stopped. Every shard committed so far is in the cache: a rerun embeds only the "
                "rest."
            )
        self.restarting.add(a)
        self.probes[self.handles[a].hello.remote(self.known)] = a

    def _size(self, s: Unit) -> int:
        """A unit's items; a part's counted by a task of no CPU (the workers hold them all)
        when no worker has read it to its end yet."""
        size = s.size()
        if size is None:
            count = self.ray.remote(count_items).options(num_cpus=0, runtime_env=self.runtime_env)
            s.hi = s.lo + max(0, self.ray.get(count.remote(s.part), timeout=self.timeout) - s.lo)
            self.plan.learn(Unit(s.segment, part=s.part), s.hi)
            size = s.hi - s.lo
        return size

    def _name(self, s: Unit) -> str:
        """The name of a unit's one item (a part's read by a task of no CPU)."""
        if s.items is not None:
            return s.items[0].name
        name = self.ray.remote(item_name).options(num_cpus=0, runtime_env=self.runtime_env)
        return str(self.ray.get(name.remote(s.part, s.lo), timeout=self.timeout))

    def _probed(self, ref: Any) -> None:
        """A restarting actor answered: back to work, or not yet (ask again)."""
        a = self.probes.pop(ref)
        try:
            self.ray.get(ref)
            self.restarting.discard(a)
        except self.ray.exceptions.RayActorError as exc:
            if exc.actor_init_failed:
                raise FeatxError(f"a Ray worker could not restart: {_cause_line(exc)}") from None
            time.sleep(0.2)
            self.probes[self.handles[a].hello.remote(self.known)] = a
