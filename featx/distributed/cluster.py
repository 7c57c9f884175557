"""The Ray cluster and its object store: joining or starting a cluster, and heads on it.

:func:`ray_session` joins a cluster (``address`` or ``RAY_ADDRESS``) or starts a local one, and
shuts a cluster it started down when it ends. :func:`ray_joblib` runs scikit-learn's parallel
fits on the cluster through Ray's joblib backend; :func:`object_store_array` puts an array into
the object store once, so that each fit receives a reference rather than a copy
(``tune_heads(..., backend="ray")`` uses both). Embedding on the cluster is
:mod:`featx.distributed.driver`'s.

Ray is imported only when used: ``pip install 'featx[ray]'``. See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["ClusterError", "ray_session", "ray_joblib", "object_store_array"]


class ClusterError(FeatxError, ConnectionError):
    """The Ray cluster cannot be reached, cannot place the workers, or lost them too often."""


def import_ray() -> Any:
    """The ``ray`` module; a :class:`~featx.exceptions.FeatxError` naming featx's Ray extra
    when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise FeatxError(
            f"running on Ray needs the ray package, which is not installed ({exc}). Install "
            "featx's Ray extra: pip install 'featx[ray]'."
        ) from None
    return ray


# ---- the connection ------------------------------------------------------------------------------


def check_reachable(address: str, timeout: float = 5.0) -> None:
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

    Ray's own convention: join the cluster at ``address``, or at ``$RAY_ADDRESS``, or the one
    ``ray start`` last started on this machine if it is running, or else start a local one. A
    local cluster started here is shut down when the block ends, however it ends; a cluster
    joined is left running; a connection that was already open (``ray.init`` by the caller) is
    used and left open.

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
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_reachable(address)
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
    ray = import_ray()
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
