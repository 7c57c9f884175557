"""Beyond one machine: embed on a Ray cluster into the one cache, and tune heads across it.

:func:`embed_on_ray` splits the items into shards and hands them to Ray actors, one per GPU (or
per node on a CPU cluster). Each actor builds the network once and runs featx's engine
(:func:`featx.engine.run_network`) on its shards, with decode threads sized to the CPUs Ray gave
it. Workers read the image bytes and compute the content keys; the driver never reads an image.
The cache's known keys (and remembered failures) go into Ray's object store once; workers skip
them and send back keys, vectors and failures, which the driver commits to the cache as they
stream in, through the engine's cache writer (a segment per commit: no shared file system
needed). A worker that dies is replaced by Ray and its unfinished shard is done again; a shard
that kills workers is halved until the one item that does it is found and reported.

:func:`ray_session` joins a cluster (``address`` or ``RAY_ADDRESS``) or starts a local one, and
shuts a cluster it started down when it ends. :func:`ray_joblib` runs scikit-learn's parallel
fits on the cluster through Ray's joblib backend; :func:`object_store_array` puts an array into
the object store once, so that each fit receives a reference rather than a copy
(``tune_heads(..., backend="ray")`` uses both).

Ray is imported only here, only when used: ``pip install 'featx[ray]'``.
See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featx.backbones import BackboneConfig, resolve_backbone
from featx.cache import EmbeddingCache
from featx.engine import (
    EmbeddingReport,
    _CacheWriter,
    _group,
    _safe_key,
    network_for,
    run_network,
)
from featx.exceptions import FeatxError, ImageLoadError
from featx.images import Item, as_items, batched

__all__ = [
    "ClusterError",
    "RayEmbeddingReport",
    "embed_on_ray",
    "ray_session",
    "ray_joblib",
    "object_store_array",
]

#: Shards each worker holds at once: one running, one waiting, so a worker never idles
#: between shards.
DEPTH = 2

#: A shard is this many batches unless ``shard_size`` says otherwise.
SHARD_BATCHES = 8

#: Test-only: ``FEATX_RAY_FAULT="kill:NAME"`` makes a worker SIGKILL itself whenever it reaches an
#: item whose name contains NAME (as Ray's out-of-memory killer would); ``"kill-once:NAME:FILE"``
#: does it once per cluster (the first worker to create FILE). Several, comma-separated. Unset
#: in normal use.
FAULT_ENV = "FEATX_RAY_FAULT"


class ClusterError(FeatxError, ConnectionError):
    """The Ray cluster cannot be reached, cannot place the workers, or lost them too often."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FeatxError(
            f"running on Ray needs the ray package, which is not installed ({exc}). Install "
            "featx's Ray extra: pip install 'featx[ray]'."
        ) from None
    return ray


# ---- the connection ------------------------------------------------------------------------------


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``address``, when nothing listens there (``ray.init`` would retry for
    a minute)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rpartition(":")
    hint = (
        "Expected the address of a running cluster's head node (host:port, as `ray start "
        "--head` prints it, or ray://host:10001); leave the address out (and unset RAY_ADDRESS) "
        "to start a local cluster."
    )
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not of the form host:port. {hint}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r}: {reason}. {hint}"
        ) from None


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    runtime_env: dict[str, Any] | None = None,
    quiet: bool = True,
) -> Iterator[Any]:
    """Connect to Ray for the length of a ``with`` block; yield the ``ray`` module.

    Ray's own convention: join the cluster at ``address``, or at ``$RAY_ADDRESS``, or else
    start a local one. A local cluster started here is shut down when the block ends, however
    it ends; a connection that was already open (``ray.init`` by the caller) is used and left
    open.

    Parameters
    ----------
    address : str or None
        ``host:port`` of a running cluster's head node (``ray://host:port`` for Ray Client).
    num_cpus : int or None
        CPUs of a local cluster started here (default: the machine's).
    runtime_env : dict or None
        Ray's runtime environment for every worker (``env_vars``, ``pip``, ``working_dir``).
    quiet : bool, default=True
        Keep Ray's start-up messages and the workers' output off the terminal.

    Raises
    ------
    ClusterError
        ``address`` cannot be reached.
    FeatxError
        Ray is not installed.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        _check_reachable(address)
    kwargs: dict[str, Any] = {"runtime_env": runtime_env}
    if quiet:
        kwargs.update(logging_level=logging.WARNING, log_to_driver=False)
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()  # stops a local cluster started here; disconnects from a remote one


# ---- the report ----------------------------------------------------------------------------------


@dataclass(eq=False)
class RayEmbeddingReport(EmbeddingReport):
    """An :class:`~featx.engine.EmbeddingReport`, with what the cluster did.

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


# ---- the worker ----------------------------------------------------------------------------------


def _config_of(embedder: Any) -> BackboneConfig:
    p = embedder.get_params(deep=False)
    return resolve_backbone(
        p["backbone"], weights=p["weights"], layer=p["layer"], pooling=p["pooling"],
        input_size=p["input_size"], resize=p["resize"], preprocess=p["preprocess"],
        precision=p["precision"], safe_mode=p["safe_mode"], engine=p["engine"],
    )


@dataclass
class _Known:
    """The cache's keys (sorted, fixed-width bytes: read in place from the object store) and
    its remembered failures."""

    keys: np.ndarray
    failed: dict[str, str]

    def contains(self, keys: list[str]) -> np.ndarray:
        if not len(self.keys) or not keys:
            return np.zeros(len(keys), dtype=bool)
        q = np.array(keys, dtype=self.keys.dtype)
        at = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return np.asarray(self.keys[at] == q)


@dataclass
class _ShardResult:
    """What a worker sends back for one shard (positions are the input's)."""

    n_hits: int = 0
    n_misses: int = 0
    keys: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    sources: list[str] = field(default_factory=list)
    failed: list[ImageLoadError] = field(default_factory=list)
    remember: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    batches: int = 0


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


class _Worker:
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

        self.config = _config_of(embedder)
        self.group = _group(self.config, sample_shape)
        self.kind = kind
        self.sample_shape = sample_shape
        self.known: _Known | None = None  # from hello(), the first call of every incarnation
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
        return _safe_key(item)

    def embed(self, positions: list[int], items: list[Item]) -> _ShardResult:
        started = time.perf_counter()
        out = _ShardResult()
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
            for done, outputs in run_network(
                self._network(), items, unique, pool=self.pool, failed=decode_failed,
                batch_size=self.batch_size, resize=self.config.resize,
            ):
                out.batches += 1
                for j, v in zip(done, outputs[0], strict=True):
                    rows[j] = v
        failed += decode_failed
        bad = {e.index for e in failed}
        for j in todo:
            if j not in bad and first_of[str(keys[j])] in bad:
                failed.append(ImageLoadError(items[j].name, "same content as a failed item", j))
        out.remember = [(str(keys[e.index]), e.source, e.reason) for e in decode_failed
                        if e.index is not None]
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
        return out


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


@dataclass
class _Shard:
    positions: list[int]
    attempts: int = 0


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
        What :meth:`featx.ImageEmbedder.transform` takes; file paths are read by the workers,
        so they must be readable there (the same path on every node: a shared or copied folder).
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
    _import_ray()
    config = _config_of(embedder)
    items, kind = as_items(X)
    sample_shape = (int(np.asarray(X).shape[1]),) if kind == "vectors" else None
    report = RayEmbeddingReport(n_items=len(items))
    if not items:
        return report
    group = _group(config, sample_shape)
    store = _TimedCache(cache_path)
    retry = bool(getattr(embedder, "retry_failed", False))
    known_keys, known_failed = store.known_keys(group, fields=config.fingerprint_fields)
    known = _Known(np.array(known_keys, dtype="S64"), {} if retry else known_failed)
    batch_size = int(getattr(embedder, "batch_size", 32))
    shard = int(shard_size or SHARD_BATCHES * batch_size)
    if shard < 1:
        raise FeatxError(f"shard_size={shard_size!r} is not valid; expected a positive integer.")
    show = bool(getattr(embedder, "verbose", False) if verbose is None else verbose)
    with ray_session(address) as ray:
        n, cpus, gpus = _plan_workers(ray, workers, cpus_per_worker, gpus_per_worker)
        report.n_workers = n
        actor = ray.remote(_Worker).options(
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
            _drive(ray, handles, [known_ref], items, shard, store, group, config, report,
                   max_worker_deaths or max(16, 4 * n), ready_timeout, show)
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


def _drive(
    ray: Any,
    handles: list[Any],
    known: list[Any],
    items: list[Item],
    shard_size: int,
    store: EmbeddingCache,
    group: str,
    config: BackboneConfig,
    report: RayEmbeddingReport,
    max_deaths: int,
    timeout: float,
    show: bool,
) -> None:
    """Hand out shards, take results in as they come, commit them; redo what dying workers
    lost."""
    todo: deque[_Shard] = deque(_Shard(list(p)) for p in batched(range(len(items)), shard_size))
    report.n_shards = len(todo)
    inflight: dict[Any, tuple[int, _Shard]] = {}
    queues: list[list[Any]] = [[] for _ in handles]  # per actor, in submission order
    embedded: set[str] = set()
    failures: list[ImageLoadError] = []
    writer = _CacheWriter(store, group, config)
    progress = _progress_bar(len(items), show)
    last_loss = ""
    probes: dict[Any, int] = {}  # a restarted actor's first call -> the actor
    restarting: set[int] = set()  # actors Ray is replacing: nothing is sent to them

    # Shards a dying worker held: each runs alone on a worker (nothing queued behind it), so
    # that a worker dying on it tells which shard killed it.
    suspects: deque[_Shard] = deque()

    def send(a: int, s: _Shard) -> None:
        ref = handles[a].embed.remote(s.positions, [items[p] for p in s.positions])
        inflight[ref] = (a, s)
        queues[a].append(ref)

    def submit(a: int, depth: int) -> None:
        if a in restarting:
            return
        if suspects:
            if not queues[a]:
                send(a, suspects.popleft())
            return  # a busy worker finishes first, then takes a suspect alone
        while len(queues[a]) < depth and todo:
            send(a, todo.popleft())

    def take(result: _ShardResult, s: _Shard) -> None:
        report.n_hits += result.n_hits
        report.n_misses += result.n_misses
        failures.extend(result.failed)
        embedded.update(result.keys)
        writer.put(result.keys, result.vectors, result.sources, result.remember)
        progress(len(s.positions))

    def lost(a: int, exc: BaseException) -> None:
        """Actor ``a`` died. The oldest shard it held was running: it is halved (or, one item
        that killed a worker alone twice, reported). Each shard it held runs alone next."""
        nonlocal last_loss
        report.worker_deaths += 1
        last_loss = _first_line(exc)
        refs, queues[a] = queues[a], []
        ray.wait(refs, num_returns=len(refs), timeout=60)
        held: list[_Shard] = []
        for ref in refs:
            _, s = inflight.pop(ref)
            try:
                take(ray.get(ref, timeout=0), s)  # it finished before the worker died
            except Exception as err:  # noqa: BLE001 - sorted out below
                if not _is_worker_loss(err) and not isinstance(err, ray.exceptions.GetTimeoutError):
                    raise
                held.append(s)
        back: list[_Shard] = []
        for i, s in enumerate(held):
            s.attempts += 1
            if i == 0 and len(s.positions) > 1:
                half = (len(s.positions) + 1) // 2
                back += [_Shard(s.positions[:half], s.attempts),
                         _Shard(s.positions[half:], s.attempts)]
                report.n_shards += 1
            elif i == 0 and len(refs) == 1 and s.attempts >= 2:
                p = s.positions[0]
                failures.append(ImageLoadError(
                    items[p].name, f"the Ray worker embedding it died ({last_loss}); out of "
                    "memory? It was tried alone and killed the worker again", p))
                progress(1)
            else:
                back.append(s)
        suspects.extendleft(reversed(back))
        if report.worker_deaths > max_deaths:
            raise ClusterError(
                f"Ray workers died {report.worker_deaths} times (last: {last_loss}); stopped. "
                "Every shard committed so far is in the cache: a rerun embeds only the rest."
            )
        restarting.add(a)
        probes[handles[a].hello.remote(known)] = a

    def probed(ref: Any) -> None:
        """A restarting actor answered: back to work, or not yet (ask again)."""
        a = probes.pop(ref)
        try:
            ray.get(ref)
            restarting.discard(a)
        except ray.exceptions.RayActorError as exc:
            if exc.actor_init_failed:
                raise FeatxError(f"a Ray worker could not restart: {_cause_line(exc)}") from None
            time.sleep(0.2)
            probes[handles[a].hello.remote(known)] = a

    last_progress = time.monotonic()
    try:
        while todo or suspects or inflight:
            # Every worker gets a shard before any gets a second (few shards, many workers).
            for depth in range(1, DEPTH + 1):
                for a in range(len(handles)):
                    submit(a, depth)
            ready, _ = ray.wait([*inflight, *probes], num_returns=1, timeout=5.0)
            if not ready and time.monotonic() - last_progress > timeout:
                raise ClusterError(
                    f"no shard finished within {timeout:g} s; the cluster has "
                    f"{ray.available_resources()} free. Its workers may have lost their nodes; "
                    "what was committed is in the cache: a rerun embeds only the rest."
                )
            for ref in ready:
                if ref in probes:
                    probed(ref)
                    continue
                if ref not in inflight:
                    continue  # handled with its actor's loss
                a, s = inflight[ref]
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker, or a real error
                    if not _is_worker_loss(exc):
                        raise
                    lost(a, exc)
                    continue
                del inflight[ref]
                queues[a].remove(ref)
                take(result, s)
                last_progress = time.monotonic()
    finally:
        progress(None)
        writer.close()  # commits what arrived, even when the run failed
    failures.sort(key=lambda e: e.index or 0)
    report.n_embedded = len(embedded)
    report.n_failed = len(failures)
    report.failures = [(int(e.index or 0), e.source, e.describe()) for e in failures]
    report.errors = failures
    if store.needs_compaction():
        store.compact()


def _progress_bar(total: int, show: bool) -> Callable[[int | None], None]:
    if not show:
        return lambda k: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc="embedding on Ray", leave=False, file=sys.stderr)

    def step(k: int | None) -> None:
        if k is None:
            bar.close()
        else:
            bar.update(k)

    return step


# ---- heads on the cluster ------------------------------------------------------------------------


class _StoredArray(np.ndarray):
    """An array whose pickle is a reference into Ray's object store: each fit gets the
    reference, and every worker reads the one stored copy."""

    _featx_ref: Any = None

    def __array_finalize__(self, obj: Any) -> None:
        self._featx_ref = None  # views and slices pickle as plain arrays

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self._featx_ref is None:
            return np.asarray(self).__reduce_ex__(protocol)
        return _from_store, (self._featx_ref,)


def _from_store(ref: Any) -> np.ndarray:
    import ray

    return np.asarray(ray.get(ref))


def object_store_array(X: Any) -> np.ndarray:
    """``X`` put into Ray's object store once; the returned array pickles as a reference.

    Parameters
    ----------
    X : array-like

    Returns
    -------
    ndarray
        Equal to ``X``; pickling it (as Ray does for a task's arguments) stores only the
        reference, so a grid search's many fits do not copy the embeddings each.
    """
    ray = _import_ray()
    base = np.ascontiguousarray(X)
    out = base.view(_StoredArray)
    out._featx_ref = ray.put(base)
    return out


@contextlib.contextmanager
def ray_joblib(address: str | None = None) -> Iterator[Callable[[Any], np.ndarray]]:
    """Run joblib's (and so scikit-learn's) parallel work on Ray for a ``with`` block.

    Yields :func:`object_store_array`, to wrap the arrays the fits share. ``n_jobs=None`` or
    ``-1`` inside means every CPU of the cluster.
    """
    with ray_session(address):
        import joblib
        from ray.util.joblib import register_ray

        register_ray()
        # joblib always passes a multiprocessing context, which Ray's pool ignores and warns
        # about once per process; nothing is wrong.
        logging.getLogger("ray.util.multiprocessing.pool").setLevel(logging.ERROR)
        with joblib.parallel_backend("ray", n_jobs=-1):
            yield object_store_array

