"""ImageEmbedder: a frozen, pretrained network as a scikit-learn transformer, with an HDF5 cache."""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import validate_data

from featx.backbones import (
    POOLINGS,
    PRECISIONS,
    PREPROCESS_MODES,
    RESIZE_POLICIES,
    BackboneConfig,
    Network,
    get_builder_network,
    get_network,
    resolve_backbone,
)
from featx.cache import EmbeddingCache, open_cache
from featx.exceptions import FeatxError, ImageLoadError
from featx.images import Item, as_items, batched, load_pixels, warn_if_unit_scale

__all__ = ["ImageEmbedder", "EmbeddingReport"]

#: Images larger than this many pixels are refused (decompression-bomb guard); Pillow's limit.
MAX_PIXELS = 89_478_485


@dataclass(eq=False)
class EmbeddingReport:
    """What the last ``transform`` did.

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
    """

    n_items: int = 0
    n_hits: int = 0
    n_misses: int = 0
    n_embedded: int = 0
    n_failed: int = 0
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    def _replace_with(self, other: EmbeddingReport) -> None:
        self.__dict__.update(other.__dict__)

    def summary(self) -> str:
        """One line: counts of items, hits, newly embedded and failures."""
        return (
            f"{self.n_items} items: {self.n_hits} from the cache, {self.n_embedded} embedded, "
            f"{self.n_failed} failed"
        )


def _as_input(X: Any) -> Any:
    """Turn array-likes that are not arrays, lists or pandas objects into arrays."""
    if hasattr(X, "__array__") and not isinstance(X, (np.ndarray, list, tuple)):
        if not hasattr(X, "iloc") and not hasattr(X, "tocsr"):
            return np.asarray(X)
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], (list, tuple)):
        return np.asarray(X)  # rows of numbers
    return X


def _is_table(X: Any) -> bool:
    """True for numeric tabular input (samples x features), which sklearn's validation handles."""
    import scipy.sparse as sp

    if sp.issparse(X):
        return True
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        return X.shape[1] != 1 or X.dtypes.iloc[0].kind in "uifcb"
    if isinstance(X, np.ndarray):
        return X.ndim == 2 and (X.dtype.kind in "uifcb" or (X.dtype.kind == "O" and X.shape[1] > 1))
    return False


class ImageEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Embed images with a frozen, pretrained Keras network; a scikit-learn transformer.

    The network is built on first use and shared by every clone in the process; with ``cache``
    every embedding is stored in an HDF5 file under a content key, so that nothing is computed
    twice, across calls, clones, grid-search folds and processes.

    Parameters
    ----------
    backbone : str, path, keras.Model or callable, default="mobilenet"
        A registry name (:func:`featx.list_backbones`), the path of a ``.keras``/``.h5`` model,
        a ``keras.Model``, or a function ``f(input_shape) -> keras.Model`` that builds a
        deterministic network for samples of that shape.
    weights : {"imagenet"}, path or None, default="imagenet"
        For registry backbones: ImageNet weights, a weights file (without the classifier), or
        ``None`` for a random initialisation (seeded, so it is the same in every process).
    layer : str, int or None, default=None
        Where to cut the network: a layer name or index. ``None`` keeps the layer that feeds
        the classifier (registry backbones) or the model's own output.
    pooling : {"avg", "max", "flatten", "none"}, default="avg"
        How a spatial feature map becomes a vector; ignored when the cut layer is already flat.
    input_size : int, (height, width) or None, default=None
        The size images are resized to; ``None`` uses the backbone's native size.
    resize : {"resize", "center_crop"}, default="resize"
        Plain resize (the aspect ratio is not kept), or a centre crop to the target aspect ratio
        followed by a resize.
    preprocess : {"auto", "none", "scale", "tf", "caffe", "torch"} or callable, default="auto"
        ``"auto"`` applies the registry backbone's own ``preprocess_input`` and nothing for a
        user's model; ``"scale"`` divides by 255; the others are Keras's ImageNet modes.
    precision : {"float32", "mixed_float16", "mixed_bfloat16"}, default="float32"
        Build the network under a Keras mixed-precision policy (for accelerators with fast
        half-precision units); embeddings are returned as float32 either way. Part of the
        fingerprint: mixed-precision embeddings are cached apart from float32 ones.
    batch_size : int, default=32
        Images per network call.
    cache : str, path or None, default=None
        An HDF5 file to keep embeddings in (created when missing).
    on_error : {"raise", "skip", "nan"}, default="raise"
        What a bad image does: ``"raise"`` embeds the rest (and caches it), then raises one error
        listing every failure; ``"skip"`` leaves the item's row out; ``"nan"`` returns a row of NaN.
    retry_failed : bool, default=False
        With a cache, items that failed to decode are remembered (by content) and fail again at
        once on later runs; ``True`` tries them again.
    n_workers : int or None, default=None
        Threads that read and decode images while the network runs; ``None``: one per CPU core,
        up to 16 (an accelerator needs many cores decoding to be kept busy).
    verbose : bool, default=False
        Show a progress bar.
    safe_mode : bool, default=True
        Load a ``.keras``/``.h5`` backbone file in Keras's safe mode: a file holding Python code
        (a ``Lambda`` layer) is refused, since that code would run as it loads. ``False`` only
        for a model file you trust. See ``docs/robustness.md``.

    Attributes
    ----------
    n_features_in_ : int
        Number of features, only for tabular (non-image) input.
    report_ : EmbeddingReport
        What the last ``transform`` did: cache hits, images embedded, failures.

    Examples
    --------
    >>> import numpy as np, keras
    >>> def tiny(shape):
    ...     inp = keras.Input(shape)
    ...     out = keras.layers.Conv2D(4, 3, kernel_initializer="ones")(inp)
    ...     return keras.Model(inp, out)
    >>> emb = ImageEmbedder(tiny, input_size=16)
    >>> images = np.zeros((3, 20, 20), np.uint8)
    >>> emb.fit_transform(images).shape
    (3, 4)
    >>> emb.get_feature_names_out()[:2].tolist()
    ['imageembedder0', 'imageembedder1']
    """

    _parameter_constraints: dict = {
        "backbone": [str, os.PathLike, callable, HasMethods(["get_layer"])],
        "weights": [StrOptions({"imagenet"}), str, os.PathLike, None],
        "layer": [str, Interval(Integral, None, None, closed="neither"), None],
        "pooling": [StrOptions(set(POOLINGS)), None],
        "input_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "resize": [StrOptions(set(RESIZE_POLICIES))],
        "preprocess": [StrOptions(set(PREPROCESS_MODES)), callable],
        "precision": [StrOptions(set(PRECISIONS))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "cache": [str, os.PathLike, None],
        "on_error": [StrOptions({"raise", "skip", "nan"})],
        "retry_failed": ["boolean"],
        "n_workers": [Interval(Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
        "safe_mode": ["boolean"],
    }

    def __init__(
        self,
        backbone: Any = "mobilenet",
        *,
        weights: Any = "imagenet",
        layer: str | int | None = None,
        pooling: str | None = "avg",
        input_size: Any = None,
        resize: str = "resize",
        preprocess: Any = "auto",
        precision: str = "float32",
        batch_size: int = 32,
        cache: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        retry_failed: bool = False,
        n_workers: int | None = None,
        verbose: bool = False,
        safe_mode: bool = True,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.input_size = input_size
        self.resize = resize
        self.preprocess = preprocess
        self.precision = precision
        self.batch_size = batch_size
        self.cache = cache
        self.on_error = on_error
        self.retry_failed = retry_failed
        self.n_workers = n_workers
        self.verbose = verbose
        self.safe_mode = safe_mode

    # ---- scikit-learn protocol ------------------------------------------------------------------

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def,unused-ignore]
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # a frozen network learns nothing from the data
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return True

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any = None) -> ImageEmbedder:
        """Check the parameters and the input; the frozen network learns nothing.

        Parameters
        ----------
        X : images or (n_samples, n_features) array
        y : ignored

        Returns
        -------
        self : ImageEmbedder
        """
        self.config_ = self._config()
        X = _as_input(X)
        if _is_table(X):
            validate_data(self, X, dtype=np.float32, reset=True)
        else:
            as_items(X)  # fail early on input that is not a collection of images
        self.report_ = EmbeddingReport()
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Embed ``X``: one float32 row per item, in input order.

        Parameters
        ----------
        X : sequence of paths, bytes or PIL images; pandas Series or one-column DataFrame of
            paths; array of shape (N, H, W), (N, H, W, 1) or (N, H, W, 3); or, for a non-image
            network, an array of shape (n_samples, n_features).

        Returns
        -------
        embeddings : ndarray of float32, shape (n_items, width)
            With ``on_error="skip"`` the failed items' rows are left out (see ``report_.dropped``).
        """
        config = self._config()
        X = _as_input(X)
        if _is_table(X):
            X = validate_data(self, X, dtype=np.float32, reset=not hasattr(self, "n_features_in_"))
            items, kind = as_items(X)
            sample_shape: tuple[int, ...] | None = (X.shape[1],)
        else:
            warn_if_unit_scale(X)
            items, kind = as_items(X)
            sample_shape = None
        report = EmbeddingReport(n_items=len(items))
        out, failed = self._embed_items(config, items, kind, sample_shape, report)
        if not hasattr(self, "report_"):
            self.report_ = EmbeddingReport()
        self.report_._replace_with(report)
        if failed:
            return self._apply_error_policy(out, failed, report)
        return out

    def _apply_error_policy(
        self, out: np.ndarray, failed: list[ImageLoadError], report: EmbeddingReport
    ) -> np.ndarray:
        if self.on_error == "raise":
            lines = "; ".join(str(e) for e in failed[:10])
            more = f" (and {len(failed) - 10} more)" if len(failed) > 10 else ""
            raise ImageLoadError(
                f"{len(failed)} of {report.n_items} items",
                f"could not be loaded: {lines}{more}. The other items were embedded"
                + (" and cached" if self.cache else "")
                + "; pass on_error='skip' to leave the bad ones out, or on_error='nan' for "
                "NaN rows.",
            )
        bad = sorted(e.index for e in failed if e.index is not None)
        if self.on_error == "nan":
            out[bad] = np.nan
            return out
        report.dropped = bad
        self.report_.dropped = list(bad)
        warnings.warn(
            f"ImageEmbedder skipped {len(bad)} of {report.n_items} items that could not be "
            f"loaded (positions {bad[:10]}); see .report_.failures for the reasons.",
            UserWarning,
            stacklevel=3,
        )
        return np.delete(out, bad, axis=0)

    # ---- the embedding pipeline ---------------------------------------------------------------

    def _config(self) -> BackboneConfig:
        return resolve_backbone(
            self.backbone, weights=self.weights, layer=self.layer, pooling=self.pooling,
            input_size=self.input_size, resize=self.resize, preprocess=self.preprocess,
            precision=self.precision, safe_mode=self.safe_mode,
        )

    def _network(self, config: BackboneConfig, kind: str, sample_shape: Any) -> Network:
        if config.kind == "builder":
            if sample_shape is None:
                if config.input_size is None:
                    raise FeatxError(
                        "a backbone function needs input_size=(height, width) to build an image "
                        "network; pass input_size."
                    )
                sample_shape = (*config.input_size, 3)
            network = get_builder_network(config, tuple(sample_shape))
        else:
            network = get_network(config)
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

    @property
    def _n_features_out(self) -> int:
        config = self._config()
        if config.kind == "registry" and config.layer is None and config.pooling in ("avg", "max"):
            return config.source.width
        shape = (self.n_features_in_,) if hasattr(self, "n_features_in_") else None
        kind = "vectors" if shape is not None else "images"
        return self._network(config, kind, shape).width

    #: Items handled per chunk: hashing, lookups and bookkeeping stay bounded however many
    #: items stream through; only the returned array grows with the input.
    _CHUNK = 4096

    def _embed_items(
        self,
        config: BackboneConfig,
        items: list[Item],
        kind: str,
        sample_shape: tuple[int, ...] | None,
        report: EmbeddingReport,
    ) -> tuple[np.ndarray, list[ImageLoadError]]:
        cache = open_cache(self.cache) if self.cache is not None else None
        fingerprint = config.fingerprint
        if config.kind == "builder":
            fingerprint = f"{fingerprint}-{'x'.join(map(str, sample_shape or ()))}"
        out: np.ndarray | None = None
        failed: list[ImageLoadError] = []
        wrote = False
        for start in range(0, max(len(items), 1), self._CHUNK):
            chunk = items[start : start + self._CHUNK]
            part, part_failed, part_wrote = self._embed_chunk(
                config, chunk, kind, sample_shape, report, cache, fingerprint
            )
            wrote = wrote or part_wrote
            for e in part_failed:
                e.index = (e.index or 0) + start
            failed.extend(part_failed)
            if len(chunk) == len(items):
                out = part
            else:
                if out is None:
                    out = np.empty((len(items), part.shape[1]), np.float32)
                out[start : start + len(chunk)] = part
        assert out is not None
        if cache is not None and wrote and cache.needs_compaction():
            cache.compact()
        failed.sort(key=lambda e: e.index if e.index is not None else -1)
        report.n_failed = len(failed)
        report.failures = [(int(e.index or 0), e.source, e.reason) for e in failed]
        return out, failed

    def _embed_chunk(
        self,
        config: BackboneConfig,
        items: list[Item],
        kind: str,
        sample_shape: tuple[int, ...] | None,
        report: EmbeddingReport,
        cache: EmbeddingCache | None,
        fingerprint: str,
    ) -> tuple[np.ndarray, list[ImageLoadError], bool]:
        n = len(items)
        failed: list[ImageLoadError] = []
        pool = ThreadPoolExecutor(self.n_workers or _default_workers())
        writer: _CacheWriter | None = None
        try:
            # 1. Content keys (only needed with a cache: they read every file once).
            keys: list[str | None] = [None] * n
            if cache is not None:
                for i, result in enumerate(pool.map(_safe_key, items)):
                    if isinstance(result, ImageLoadError):
                        result.index = i
                        failed.append(result)
                    else:
                        keys[i] = result
            # 2. Cache lookups; items that failed to decode in an earlier run fail again at once.
            found = np.zeros(n, dtype=bool)
            hit_vectors = np.zeros((0, 0), np.float32)
            if cache is not None:
                known = [i for i in range(n) if keys[i] is not None]
                hit_mask, hit_vectors = cache.lookup(fingerprint, [str(keys[i]) for i in known],
                                                     fields=config.fingerprint_fields)
                found[np.asarray(known, dtype=np.int64)[hit_mask]] = True
                if not self.retry_failed:
                    missing = [i for i in known if not found[i]]
                    remembered = cache.failures(fingerprint, [str(keys[i]) for i in missing])
                    for i in missing:
                        if keys[i] in remembered:
                            reason = f"{remembered[str(keys[i])]} (remembered from an earlier run; "
                            failed.append(ImageLoadError(
                                items[i].name, reason + "pass retry_failed=True to try again)", i
                            ))
            report.n_hits += int(found.sum())
            failed_idx = {e.index for e in failed}
            todo = [i for i in range(n) if not found[i] and i not in failed_idx]
            report.n_misses += len(todo)
            # 3. Duplicates are computed once: the first position with a key stands for the rest.
            first_of: dict[str, int] = {}
            unique: list[int] = []
            for i in todo:
                k = keys[i]
                if k is None or k not in first_of:
                    if k is not None:
                        first_of[k] = i
                    unique.append(i)
            # 4. Embed the misses; a writer thread commits each batch to the cache meanwhile.
            width = hit_vectors.shape[1] if hit_vectors.size else None
            rows: dict[int, np.ndarray] = {}
            if unique:
                network = self._network(config, kind, sample_shape)
                width = network.width
                if cache is not None:
                    writer = _CacheWriter(cache, fingerprint, config)
                n_failed_before = len(failed)
                for positions, vectors in self._run_network(network, items, unique, pool, failed):
                    for p, v in zip(positions, vectors, strict=True):
                        rows[p] = v
                    if writer is not None:
                        fresh = failed[n_failed_before:]
                        n_failed_before = len(failed)
                        writer.put([str(keys[p]) for p in positions], vectors,
                                   [items[p].name for p in positions],
                                   [(str(keys[e.index]), e.source, e.reason) for e in fresh
                                    if e.index is not None and keys[e.index] is not None])
                if writer is not None:
                    fresh = failed[n_failed_before:]
                    writer.put([], np.zeros((0, width), np.float32), [],
                               [(str(keys[e.index]), e.source, e.reason) for e in fresh
                                if e.index is not None and keys[e.index] is not None])
                report.n_embedded += len(rows)
            if width is None:
                width = self._n_features_out if n == 0 or failed else hit_vectors.shape[1]
            out = np.full((n, width), np.nan, dtype=np.float32)
            if found.any():
                out[found] = hit_vectors
            for i in todo:
                k = keys[i]
                src = first_of.get(k, i) if k is not None else i
                if src in rows:
                    out[i] = rows[src]
            # Duplicates of an item that failed fail too.
            bad_first = {e.index for e in failed}
            for i in todo:
                k = keys[i]
                if k is not None and first_of.get(k, i) in bad_first and i not in bad_first:
                    failed.append(ImageLoadError(items[i].name, "same content as a failed item", i))
        finally:
            pool.shutdown(wait=True)
            if writer is not None:
                writer.close()  # commits what was embedded, even when the run failed
        return out, failed, writer is not None

    def _run_network(
        self,
        network: Network,
        items: list[Item],
        positions: list[int],
        pool: ThreadPoolExecutor,
        failed: list[ImageLoadError],
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Decode batches in worker threads, one batch ahead of the network; yield embeddings."""
        loader = self._loader(network)
        progress = _progress(len(positions), self.verbose)
        batches = iter(batched(positions, self.batch_size))
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

        for _ in range(self._PREFETCH):
            submit()
        # One batch stays in flight: the next is handed to the network before the last one is
        # read back, so a device that runs asynchronously (JAX) has its next batch when it
        # finishes. If the next batch fails, the one before is still delivered (and cached).
        pending: tuple[list[int], Callable[[], np.ndarray]] | None = None
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
                progress(len(ok) + len(errors))
            if pending is not None:
                yield pending[0], pending[1]()
        finally:
            for _, futures in ahead:
                for fut in futures:
                    fut.cancel()
            assembler.shutdown(wait=True)
            progress(None)

    #: Batches decoded ahead of the network (bounded: memory stays flat).
    _PREFETCH = 2

    def _loader(self, network: Network) -> Callable[[Item], np.ndarray]:
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

        def load_image(item: Item) -> np.ndarray:
            return load_pixels(
                item, (size[0], size[1]), channels=channels, resize=self.resize,
                max_pixels=MAX_PIXELS,
            )

        return load_image


class _CacheWriter:
    """Commits batches to the cache on a thread of its own, off the network's critical path.

    The queue is bounded, so a slow disk slows the run down rather than filling memory. Batches
    that queue up while a commit runs are committed together.
    """

    def __init__(self, cache: EmbeddingCache, fingerprint: str, config: BackboneConfig):
        self._cache = cache
        self._fingerprint = fingerprint
        self._fields = config.fingerprint_fields
        self._label = config.label
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="featx-cache-writer", daemon=True)
        self._thread.start()

    def put(self, keys: list[str], vectors: np.ndarray, sources: list[str],
            failed: list[tuple[str, str, str]]) -> None:
        if self._error is not None:
            raise self._error
        if keys or failed:
            self._queue.put((keys, vectors, sources, failed))

    def _run(self) -> None:
        done = False
        while not done:
            batches = [self._queue.get()]
            while True:
                try:
                    batches.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batches[-1] is None:
                batches.pop()
                done = True
            if not batches or self._error is not None:
                continue
            try:
                self._cache.append(
                    self._fingerprint,
                    [k for b in batches for k in b[0]],
                    np.concatenate([b[1] for b in batches]),
                    [src for b in batches for src in b[2]],
                    fields=self._fields, label=self._label,
                    failed=[f for b in batches for f in b[3]],
                )
            except BaseException as exc:  # reported by close()
                self._error = exc

    def close(self) -> None:
        """Wait until every queued batch is committed; raise the first commit error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _default_workers() -> int:
    """One decoding thread per core the process may use, up to 16 (Pillow decodes and resizes
    without the GIL, so threads scale with cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def _safe_key(item: Item) -> str | ImageLoadError:
    try:
        return item.key()
    except ImageLoadError as exc:
        return exc


def _progress(total: int, verbose: bool) -> Callable[[int | None], None]:
    """A progress callback: ``step(k)`` advances by k items, ``step(None)`` closes."""
    if not verbose or total == 0:
        return lambda k: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc="embedding", leave=False)

    def step(k: int | None) -> None:
        if k is None:
            bar.close()
        else:
            bar.update(k)

    return step
