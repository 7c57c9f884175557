"""One :class:`~featx.heads.scalable.SGDHead` trained data-parallel on a Ray cluster.

:func:`fit_on_ray` is synchronous data-parallel SGD with model averaging (parameter averaging
after every epoch, as in Zinkevich et al. 2010 and Spark MLlib): the driver plans what a reader
sees of the cache group (:func:`~featx.cache.blocks.plan_pieces`: runs of at most 256 rows of
one file), keeps the rows of the labelled keys in the wanted part, and deals the pieces out to
Ray actors in a seeded random order, balanced by rows. A worker receives piece descriptors
(file paths, row numbers, digests) and, once through the object store, the labelled keys'
index and labels; it reads the vectors from the cache's files itself, so those files must be
readable at the same path on every node (a shared file system, or the cache copied to each).

1. Each worker sums its rows' counts, means and variances (``StandardScaler.partial_fit``); the
   driver combines them exactly (Chan et al.'s pairwise formula) into the head's scaler. With
   ``kernel="rbf"`` the driver then fits the kernel map (RBFMap) from ``source.sample`` (one
   pass over the group on the driver), as :meth:`SGDHead.fit_stream` does.
2. Every epoch the driver sends the averaged classifier; each worker continues from it with
   ``SGDClassifier.partial_fit`` over its pieces' blocks (a new seeded order each epoch) and
   sends its classifier back; the driver averages the coefficients weighted by rows (the
   plain and the averaged-SGD ones alike).
3. With ``valid``, the workers score the averaged classifier on their share of the held-out
   rows; the best epoch is kept and training stops after ``n_iter_no_change`` epochs without
   improvement, as in :meth:`SGDHead.fit_stream`.

The driver never holds a vector; what travels per epoch is the classifiers (classes x width
floats a worker, twice: averaged-SGD keeps two sets). Nothing is written anywhere.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from featx.cache.blocks import Piece, plan_pieces, read_blocks
from featx.cache.files import CacheFiles
from featx.cache.index import Digests, GroupIndex, digests_of, prefix_of
from featx.exceptions import FeatxError
from featx.heads.rows import CachedBlocks
from featx.heads.scalable import BudgetExceeded, SGDHead

__all__ = ["fit_on_ray"]

#: ``SGDClassifier``'s running state: what is averaged across workers (with ``average=True``
#: it keeps the plain SGD iterate and the running average, coefficients and intercepts).
STATE = ("_standard_coef", "_standard_intercept", "_average_coef", "_average_intercept")

#: Seconds to wait for the workers to be placed and started.
READY_TIMEOUT = 600.0


# ---- what a worker reads -------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """The rows one worker reads for one part: the cache, the group and its pieces."""

    cache: str
    fingerprint: str
    pieces: list[Piece]
    block_rows: int

    @property
    def n_rows(self) -> int:
        return sum(len(p.rows) for p in self.pieces)


def plan_shares(rows: CachedBlocks, n_workers: int, seed: int) -> list[Share]:
    """``rows``' pieces (only the rows of its labelled keys in its part), dealt to at most
    ``n_workers`` workers: a seeded random order (a class written folder by folder reaches every
    worker), cut into runs of about equal rows. Fewer shares when there are fewer pieces."""
    pieces = _labelled_pieces(rows)
    if not pieces:
        return []
    order = np.random.default_rng(seed).permutation(len(pieces))
    sizes = np.array([len(pieces[i].rows) for i in order])
    total = int(sizes.sum())
    middle = np.cumsum(sizes) - sizes / 2
    owner = np.minimum((middle * n_workers // total).astype(int), n_workers - 1)
    cache = os.path.abspath(rows.store.path)
    shares = []
    for w in range(n_workers):
        mine = [pieces[i] for i in order[owner == w]]
        if mine:
            mine.sort(key=lambda p: (str(p.path), int(p.rows[0])))
            shares.append(Share(cache, rows.fingerprint, mine, rows.block_rows))
    return shares


def _labelled_pieces(rows: CachedBlocks) -> list[Piece]:
    """The group's pieces, each cut down to the rows whose keys are labelled in ``rows``' part
    (the driver's one lookup, so workers read no other row)."""
    pieces = plan_pieces(rows.store._files, rows.fingerprint)
    if not pieces:
        return []
    raw = np.concatenate([p.digests for p in pieces])
    pos = rows._index.find(Digests(raw, prefix_of(raw)))
    keep = pos >= 0
    keep[keep] = rows._mine[pos[keep]]
    out = []
    bounds = np.cumsum([0] + [len(p.rows) for p in pieces])
    for p, lo, hi in zip(pieces, bounds[:-1], bounds[1:], strict=True):
        k = keep[lo:hi]
        if k.any():
            out.append(Piece(Path(os.path.abspath(p.path)), p.rows[k], p.digests[k]))
    return out


def share_blocks(
    share: Share, index: GroupIndex, labels: np.ndarray, seed: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A share's rows as ``(X, y)`` blocks, each row's label found by its key."""
    files = CacheFiles(Path(share.cache))
    for block in read_blocks(files, share.fingerprint, share.pieces, block_rows=share.block_rows,
                             seed=seed):
        pos = index.find(digests_of(block.keys))
        if (pos < 0).any():  # the driver kept only labelled rows: a changed plan
            raise FeatxError(
                f"cache {share.cache!r} gave a worker rows that are not labelled; its files "
                "changed after the plan was made (a merge or compact meanwhile?). Run again "
                "when no other process writes to the cache."
            )
        yield block.vectors, labels[pos]


# ---- the classifier's state ----------------------------------------------------------------------


def check_state(clf: Any) -> None:
    """Fail clearly when this scikit-learn's ``SGDClassifier`` keeps its state elsewhere."""
    missing = [name for name in STATE if getattr(clf, name, None) is None]
    if missing:
        import sklearn

        raise FeatxError(
            f"fit_on_ray averages SGDClassifier's running state ({', '.join(missing)}), which "
            f"scikit-learn {sklearn.__version__} does not keep; expected scikit-learn 1.4 to "
            "1.9. Train on one machine with SGDHead.fit_stream, or install one of those."
        )


def realias(clf: Any) -> None:
    """Point ``coef_`` and ``intercept_`` at the state arrays, as ``partial_fit`` leaves them
    (the averaged ones once averaging has started)."""
    averaged = bool(clf.average) and clf.average <= clf.t_ - 1
    coef = clf._average_coef if averaged else clf._standard_coef
    clf.coef_ = coef.reshape(1, -1) if coef.ndim == 1 else coef
    clf.intercept_ = clf._average_intercept if averaged else clf._standard_intercept


def load_state(clf: Any, model: Any) -> None:
    """Give ``clf`` the coefficients of ``model`` (a copy), keeping its own step count."""
    for name in STATE:
        setattr(clf, name, np.array(getattr(model, name), copy=True))
    realias(clf)


def average_models(models: list[Any], weights: list[int]) -> Any:
    """The classifiers' state averaged, weighted (rows each worker trained on)."""
    for m in models:
        check_state(m)
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    out = copy.deepcopy(models[0])
    for name in STATE:
        arrays = [np.asarray(getattr(m, name)) for m in models]
        mean = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays, strict=True))
        setattr(out, name, np.asarray(mean, dtype=arrays[0].dtype))
    realias(out)
    return out


def combine_moments(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> Any:
    """A fitted ``StandardScaler`` from each worker's ``(count, mean, variance)``: the pairwise
    combination of Chan, Golub and LeVeque, exact up to rounding."""
    from sklearn.preprocessing import StandardScaler

    parts = [p for p in parts if p[0] > 0]
    n = np.float64(sum(p[0] for p in parts))
    mean = sum(p[0] * p[1] for p in parts) / n
    m2 = sum(p[0] * (p[2] + (p[1] - mean) ** 2) for p in parts)
    var = np.asarray(m2 / n, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2  # as StandardScaler decides
    scale = np.sqrt(var)
    scale[constant | (scale == 0)] = 1.0
    scaler = StandardScaler()
    scaler.mean_, scaler.var_, scaler.scale_ = mean, var, scale
    scaler.n_samples_seen_ = int(n)
    scaler.n_features_in_ = len(mean)
    return scaler


# ---- the worker ----------------------------------------------------------------------------------


class Epoch(NamedTuple):
    """What a worker sends back after an epoch."""

    model: Any  # its SGDClassifier
    rows: int
    seconds: float
    budget: bool  # stopped at the deadline


class HeadWorker:
    """A Ray actor's body: trains the head on its share, scores held-out rows on another.

    Parameters
    ----------
    rank : int
    train, valid : Share, Share or None
    train_keys, valid_keys : (GroupIndex, labels)
        The labelled keys of each part's source (Ray resolves the object references).
    """

    def __init__(self, rank: int, train: Share, valid: Share | None,
                 train_keys: tuple[GroupIndex, np.ndarray],
                 valid_keys: tuple[GroupIndex, np.ndarray] | None):
        self.rank = rank
        self.train_share, self.valid_share = train, valid
        self.train_keys, self.valid_keys = train_keys, valid_keys
        self.head: SGDHead | None = None
        self.clf: Any = None
        self.trained = False

    def where(self) -> tuple[str, int]:
        """The node and process the worker runs in."""
        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def moments(self, seconds_left: float | None) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Count, mean and variance of the share's rows (``None``: the deadline passed)."""
        from sklearn.preprocessing import StandardScaler

        until = None if seconds_left is None else time.monotonic() + seconds_left
        scaler = StandardScaler()
        for X, _ in share_blocks(self.train_share, *self.train_keys, seed=None):
            scaler.partial_fit(X)
            if until is not None and time.monotonic() > until:
                return None
        return int(scaler.n_samples_seen_), scaler.mean_, scaler.var_

    def start(self, head: SGDHead) -> None:
        """Take the head (its scaler and kernel map fitted) and make the classifier, as
        :meth:`SGDHead.fit_stream` makes it."""
        from sklearn.linear_model import SGDClassifier

        self.head = head
        self.clf = SGDClassifier(loss=head.loss, alpha=head.alpha, average=True,
                                 n_jobs=head.n_jobs, random_state=head.random_state + self.rank)

    def train(self, model: Any, epoch: int, seconds_left: float | None) -> Epoch:
        """One pass over the share from ``model`` (``None``: from zero)."""
        assert self.head is not None
        started = time.monotonic()
        until = None if seconds_left is None else started + seconds_left
        if model is not None:
            load_state(self.clf, model)
        seed = int(np.random.SeedSequence(
            [self.head.random_state, epoch, self.rank]).generate_state(1)[0])
        rows, budget = 0, False
        for X, y in share_blocks(self.train_share, *self.train_keys, seed=seed):
            if until is not None and time.monotonic() > until and self.trained:
                budget = True
                break
            self.clf.partial_fit(self.head._features(X), y, classes=self.head.classes_)
            self.trained = True
            rows += len(y)
        check_state(self.clf)
        return Epoch(self.clf, rows, time.monotonic() - started, budget)

    def score(self, model: Any) -> tuple[int, int]:
        """Right predictions and rows of the held-out share."""
        assert self.head is not None
        if self.valid_share is None or self.valid_keys is None:
            return 0, 0
        right = total = 0
        for X, y in share_blocks(self.valid_share, *self.valid_keys, seed=None):
            right += int((model.predict(self.head._features(X)) == y).sum())
            total += len(y)
        return right, total


# ---- the driver ----------------------------------------------------------------------------------


def fit_on_ray(
    head: SGDHead,
    source: CachedBlocks,
    *,
    valid: CachedBlocks | None = None,
    n_workers: int | None = None,
    address: str | None = None,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> SGDHead:
    """Train ``head`` on a cache group's rows on a Ray cluster, data-parallel; return it fitted.

    Synchronous SGD with model averaging: each worker (a Ray actor with one CPU) trains
    ``SGDClassifier.partial_fit`` on its share of the rows for one epoch, starting from the
    classifier the driver averaged after the previous epoch; the driver averages the workers'
    coefficients weighted by their rows. The workers read the cache's files themselves (the
    driver sends only which rows: file paths, row numbers and keys), so **the cache's files
    must be readable at the same path on every node**: a shared file system, or the cache
    copied to each node. Nothing is written. See ``docs/distributed.md``.

    The result is the ``SGDHead`` that :meth:`SGDHead.fit_stream` would give (same fitted
    attributes, so ``predict``, pickling and saving work unchanged), plus the workers' record.

    Parameters
    ----------
    head : SGDHead
        Its parameters apply (``loss``, ``alpha``, ``kernel``, ``max_epochs``,
        ``n_iter_no_change``, ``tol``, ``block_rows`` through the sources, ``random_state``);
        it is fitted in place and returned.
    source : CachedBlocks
        The training rows (a part of labelled keys in a cache group).
    valid : CachedBlocks, optional
        Held-out rows, scored by the workers after each epoch: the best epoch is kept.
    n_workers : int, optional
        Ray actors, one CPU each (default: the cluster's CPUs; fewer when there are fewer
        pieces of 256 rows than workers).
    address : str, optional
        The cluster to join (:func:`featx.distributed.cluster.ray_session`'s rules: else
        ``RAY_ADDRESS``, else a running local one, else a local cluster started for the call).
    deadline : float, optional
        A ``time.monotonic()`` time on this machine: each worker stops at its first block past
        it (having trained on at least one), and no epoch starts after it.
    progress : callable, optional
        Called with each worker's rows as its epoch ends.

    Returns
    -------
    SGDHead
        ``head``, fitted, with also

        - ``n_workers_``: the workers that trained;
        - ``worker_rows_``: per epoch, the rows each worker trained on;
        - ``rows_per_s_``: per epoch, the rows of every worker over the epoch's wall time
          (reading, training and averaging).

    Raises
    ------
    FeatxError
        A source that is not a :class:`~featx.heads.rows.CachedBlocks`, fewer than two
        classes, or no rows.
    ClusterError
        More workers than the cluster has CPUs; a worker died (killed, out of memory, node
        lost), or the workers could not be placed within 10 minutes: nothing was written, run
        again.
    CacheError
        A worker could not read a file of the plan (damaged, or removed by a merge meanwhile).
    BudgetExceeded
        The deadline passed before the scaler's pass ended.

    Examples
    --------
    >>> from featx.heads.rows import CachedBlocks
    >>> parts = CachedBlocks.split("emb.h5", fingerprint, keys, labels, part)  # doctest: +SKIP
    >>> head = fit_on_ray(SGDHead(), parts["fit"], valid=parts["valid"])  # doctest: +SKIP
    >>> head.n_workers_, head.rows_per_s_  # doctest: +SKIP
    (2, [41213.5, 44020.1, ...])
    """
    from featx.distributed.cluster import ray_session

    _check_sources(source, valid)
    head._check_params()
    classes = np.asarray(source.classes)
    if len(classes) < 2:
        raise FeatxError(f"expected at least 2 classes; got {classes.tolist()}.")
    with ray_session(address) as ray:
        n = _count_workers(ray, n_workers)
        train = plan_shares(source, n, head.random_state)
        if not train:
            raise FeatxError(
                f"no rows to train on: none of the {len(source.labels)} labelled keys in this "
                f"part is in cache {str(source.store.path)!r}, group {source.fingerprint!r}."
            )
        valid_shares: list[Share | None] = [None] * len(train)
        if valid is not None:
            dealt = plan_shares(valid, len(train), head.random_state + 1)
            valid_shares[:len(dealt)] = dealt
        workers = _start_workers(ray, source, valid, train, valid_shares)
        try:
            return _train(ray, head, source, valid, classes, workers, deadline, progress)
        finally:
            for w in workers:
                ray.kill(w)


def _check_sources(source: Any, valid: Any) -> None:
    for name, rows in (("source", source), ("valid", valid)):
        if rows is not None and not isinstance(rows, CachedBlocks):
            raise FeatxError(
                f"fit_on_ray's {name} must be a CachedBlocks (rows its workers read from the "
                f"cache's files); got {type(rows).__name__}. For rows in memory, use "
                "head.fit_stream(...) or tune_heads(..., backend='ray')."
            )
    if valid is not None and valid.width != source.width:
        raise FeatxError(f"valid's rows are {valid.width} wide but source's are {source.width}; "
                         "pass held-out rows of the same cache group.")


def _count_workers(ray: Any, n_workers: int | None) -> int:
    from featx.distributed.cluster import ClusterError

    cpus = int(ray.cluster_resources().get("CPU", 0))
    n = cpus if n_workers is None else int(n_workers)
    if n < 1 or n > max(cpus, 1):
        raise ClusterError(
            f"n_workers={n_workers} cannot run on the Ray cluster's {cpus} CPUs: each worker "
            f"takes one. Pass n_workers from 1 to {max(cpus, 1)}, or add nodes."
        )
    return n


def _labelled_keys(rows: CachedBlocks) -> tuple[GroupIndex, np.ndarray]:
    return rows._index, rows.labels


def _start_workers(ray: Any, source: CachedBlocks, valid: CachedBlocks | None,
                   train: list[Share], valid_shares: list[Share | None]) -> list[Any]:
    """One actor per share, spread over the nodes; the labelled keys put in the store once."""
    from featx.distributed.cluster import ClusterError

    train_keys = ray.put(_labelled_keys(source))
    valid_keys = None
    if valid is not None:
        valid_keys = (train_keys if valid._index is source._index and valid.labels is
                      source.labels else ray.put(_labelled_keys(valid)))
    actor = ray.remote(num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD")(HeadWorker)
    workers = [actor.remote(rank, share, valid_shares[rank], train_keys, valid_keys)
               for rank, share in enumerate(train)]
    ready, _ = ray.wait([w.where.remote() for w in workers], num_returns=len(workers),
                        timeout=READY_TIMEOUT)
    if len(ready) < len(workers):
        for w in workers:
            ray.kill(w)
        raise ClusterError(
            f"{len(workers) - len(ready)} of {len(workers)} head workers (one CPU each) were not "
            f"started within {READY_TIMEOUT:.0f} s; the cluster has "
            f"{ray.available_resources().get('CPU', 0):g} CPUs free of "
            f"{ray.cluster_resources().get('CPU', 0):g}. Pass fewer n_workers or free the CPUs."
        )
    return workers


def _train(ray: Any, head: SGDHead, source: CachedBlocks, valid: CachedBlocks | None,
           classes: np.ndarray, workers: list[Any], deadline: float | None,
           progress: Callable[[int], None] | None) -> SGDHead:
    """The scaler, the kernel map, then the epochs (the steps of the module docstring)."""

    def left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    moments = _gather(ray, workers, [w.moments.remote(left()) for w in workers], "standardising")
    if any(m is None for m in moments):
        raise BudgetExceeded(
            "the time budget ran out while standardising (one pass over the rows); "
            "give a larger budget or fewer heads."
        )
    head.classes_ = classes
    head.n_features_in_ = source.width
    head.scaler_ = combine_moments([m for m in moments if m is not None])
    head.kernel_ = head._fit_kernel(source)
    if deadline is not None and time.monotonic() > deadline:
        raise BudgetExceeded(
            "the time budget ran out while fitting the kernel map, before any training; "
            "give a larger budget or fewer heads."
        )
    shipped = ray.put(head)
    _gather(ray, workers, [w.start.remote(shipped) for w in workers], "starting")

    head.n_workers_ = len(workers)
    head.worker_rows_ = []
    head.rows_per_s_ = []
    head.valid_scores_ = []
    head.stopped_ = "max_epochs"
    head.n_epochs_ = 0
    model, best, best_score, stale = None, None, -np.inf, 0
    for epoch in range(int(head.max_epochs)):
        remaining = left()
        if epoch and remaining is not None and remaining <= 0:
            head.stopped_ = "budget"
            break
        started = time.monotonic()
        results = _gather(ray, workers, [w.train.remote(model, epoch, remaining)
                                         for w in workers], f"epoch {epoch + 1}",
                          lambda r: progress(r.rows) if progress is not None else None)
        model = average_models([r.model for r in results], [r.rows for r in results])
        model.random_state = head.random_state
        rows = [r.rows for r in results]
        head.worker_rows_.append(rows)
        head.rows_per_s_.append(sum(rows) / max(time.monotonic() - started, 1e-9))
        head.n_epochs_ = epoch + 1
        budget = any(r.budget for r in results)
        if valid is None:
            best = model
        else:
            counts = _gather(ray, workers, [w.score.remote(model) for w in workers],
                             f"scoring epoch {epoch + 1}")
            score = sum(c[0] for c in counts) / max(1, sum(c[1] for c in counts))
            head.valid_scores_.append(score)
            if best is None or score > best_score + head.tol:
                best, best_score, stale = model, score, 0
            else:
                stale += 1
        if budget:
            head.stopped_ = "budget"
            break
        if valid is not None and stale >= head.n_iter_no_change:
            head.stopped_ = "converged"
            break
    head.clf_ = best if best is not None else model
    return head


def _gather(ray: Any, workers: list[Any], refs: list[Any], what: str,
            each: Callable[[Any], Any] | None = None) -> list[Any]:
    """The workers' results in rank order, ``each`` called as they arrive; a worker's death a
    :class:`~featx.distributed.cluster.ClusterError`, a featx error in a worker raised as is."""
    from ray import exceptions as rex

    from featx.distributed.cluster import ClusterError

    out: list[Any] = [None] * len(refs)
    rank = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        i = rank[done[0]]
        try:
            out[i] = ray.get(done[0])
        except rex.RayTaskError as exc:
            if isinstance(exc.cause, FeatxError):
                raise exc.cause from None
            raise
        except (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError,
                rex.ObjectLostError, rex.OutOfMemoryError) as exc:
            raise ClusterError(
                f"head worker {i + 1} of {len(workers)} died while {what} "
                f"({type(exc).__name__}: {_first_line(exc)}). Killed, out of memory, or its "
                "node was lost; nothing was written. Run again (on fewer or larger nodes if "
                "it ran out of memory)."
            ) from None
        if each is not None:
            each(out[i])
    return out


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
