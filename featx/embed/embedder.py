"""ImageEmbedder: a frozen, pretrained network as a scikit-learn transformer, with an HDF5 cache."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from itertools import islice
from typing import Any

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils.validation import validate_data

from featx.embed.calibration import MAX_CALIBRATION, cached_calibration, calibrated_config
from featx.embed.engine import (
    MAX_PIXELS,
    EmbeddingReport,
    EngineResult,
    embed_items,
    output_widths,
)
from featx.embed.images import Item, as_items, iter_items, warn_if_unit_scale
from featx.embed.stream import ItemStream
from featx.embed.tables import is_arrow_table
from featx.exceptions import ImageLoadError
from featx.nets.backbones import BackboneConfig, resolve_backbone
from featx.nets.options import EMBEDDER_OPTIONS, backbone_options
from featx.nets.quantize import is_registered

__all__ = ["ImageEmbedder", "EmbeddingReport", "MAX_PIXELS"]


def _as_input(X: Any) -> Any:
    """Turn array-likes that are not arrays, lists or pandas objects into arrays (a
    ``pyarrow.Table`` of encoded images stays a table)."""
    if is_arrow_table(X):
        return X
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
        A registry name (:func:`featx.list_backbones`), ``"keras_hub:<preset>"`` (a Keras Hub
        preset name or directory; the ``featx[hub]`` extra), the path of a ``.keras``/``.h5`` model,
        a ``keras.Model``, or a function ``f(input_shape) -> keras.Model`` that builds a
        deterministic network for samples of that shape.
    weights : {"imagenet"}, path or None, default="imagenet"
        For registry backbones: ImageNet weights, a weights file (without the classifier), or
        ``None`` for a random initialisation (seeded, so it is the same in every process). For
        a Keras Hub preset: its own weights (``"imagenet"`` or ``"preset"``), or ``None``.
    layer : str, int or None, default=None
        Where to cut the network: a layer name or index. ``None`` keeps the layer that feeds
        the classifier (registry backbones) or the model's own output.
    pooling : {"auto", "avg", "max", "flatten", "none", "cls", "cls_avg", "pooled"}, default="auto"
        How a spatial feature map becomes a vector; ignored when the cut layer is already flat.
        ``"auto"`` is ``"avg"``, except for a Keras Hub encoder (``"keras_hub:<preset>"``),
        whose tokens are pooled as its paper does: SigLIP's attention-pooling head
        (``"pooled"``), DINOv2's class token concatenated with the patch mean (``"cls_avg"``),
        CLIP's and ViT's class token (``"cls"``); ``"avg"`` is the mean of the patch tokens
        (class and register tokens left out). See :mod:`featx.nets.hub_model`.
    input_size : int, (height, width) or None, default=None
        The size images are resized to; ``None`` uses the backbone's native size.
    resize : {"resize", "center_crop"}, default="resize"
        Plain resize (the aspect ratio is not kept), or a centre crop to the target aspect ratio
        followed by a resize.
    preprocess : {"auto", "none", "scale", "tf", "caffe", "torch"} or callable, default="auto"
        ``"auto"`` applies the registry backbone's own ``preprocess_input`` and nothing for a
        user's model; ``"scale"`` divides by 255; the others are Keras's ImageNet modes.
    precision : {"float32", "mixed_float16", "mixed_bfloat16", "int8"}, default="float32"
        ``"int8"``: NNCF's post-training quantization on the OpenVINO engine (CPUs with VNNI or
        AMX; the ``featx[int8]`` extra), calibrated on ``calibration``.
        ``"mixed_bfloat16"`` runs bfloat16 inference: on the OpenVINO engine on CPUs that have
        bfloat16 units (about 2x float32), or under a Keras mixed-precision policy on
        accelerators, like ``"mixed_float16"`` (GPUs). Embeddings are returned as float32 either
        way. Part of the fingerprint: reduced-precision embeddings are cached apart from float32
        ones (and, in reduced precision, per engine).
    engine : {"auto", "keras", "openvino"}, default="auto"
        What runs the network. ``"keras"``: a compiled function of the Keras model (TensorFlow,
        JAX or PyTorch backend; GPUs). ``"openvino"``: the network and its preprocessing
        converted to OpenVINO once (kept on disk under featx's home) and run on the CPU.
        ``"auto"``: OpenVINO when Keras runs on TensorFlow on a CPU and OpenVINO is installed
        and can convert the network, else Keras (``verbose`` says why). In float32 both engines
        give the same embeddings (to 1e-4 relative, tested), which share one cache group.
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
    decoder : {"auto", "fast", "pillow"}, default="auto"
        How JPEG files are decoded. ``"fast"``: libjpeg-turbo's scaled decode (simplejpeg) and an
        antialiased OpenCV resize, about twice as fast as ``"pillow"`` (Pillow's draft mode and
        BILINEAR resize, featx 0.1's decoder); other formats, and JPEGs the fast decoder refuses
        (CMYK, damaged), go through Pillow either way. The two differ by about 0.5 of 255 per
        pixel, so each has its own cache group (embedding format 2 and 1). ``"auto"``: ``"fast"``
        when simplejpeg and OpenCV are installed (featx depends on both).
    calibration : images or None, default=None
        For ``precision="int8"``: 32 to 300 images like those to embed, on which NNCF calibrates
        the quantized network. ``None``: the calibration of the INT8 group for this
        configuration that the cache already holds, when it was calibrated in this process (so
        a grid search's folds and refit, each fitting a clone on other images, share one
        quantized network and one cache group, and embed each image once); else the first 300
        images given to ``fit``, or to the first ``transform`` when not fitted. Later calls
        reuse that calibration. Pass a fixed set to choose it, or to share it across processes
        (``n_jobs>1``). Their content digest is part of the fingerprint
        (``"int8@openvino:<digest>"``); the quantized network is kept on disk under featx's home.

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

    # The options are declared once, in featx.nets.options (a test checks __init__ against it).
    _parameter_constraints: dict = {opt.name: opt.constraints for opt in EMBEDDER_OPTIONS}

    def __init__(
        self,
        backbone: Any = "mobilenet",
        *,
        weights: Any = "imagenet",
        layer: str | int | None = None,
        pooling: str | None = "auto",
        input_size: Any = None,
        resize: str = "resize",
        preprocess: Any = "auto",
        precision: str = "float32",
        engine: str = "auto",
        batch_size: int = 32,
        cache: str | os.PathLike[str] | None = None,
        on_error: str = "raise",
        retry_failed: bool = False,
        n_workers: int | None = None,
        verbose: bool = False,
        safe_mode: bool = True,
        decoder: str = "auto",
        calibration: Any = None,
    ):
        self.backbone = backbone
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.input_size = input_size
        self.resize = resize
        self.preprocess = preprocess
        self.precision = precision
        self.engine = engine
        self.batch_size = batch_size
        self.cache = cache
        self.on_error = on_error
        self.retry_failed = retry_failed
        self.decoder = decoder
        self.calibration = calibration
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
        self.config_ = self.backbone_config()
        X = _as_input(X)
        if _is_table(X):
            validate_data(self, X, dtype=np.float32, reset=True)
        else:
            items, _ = iter_items(X)  # fail early on input that is not a collection of images
            if self.config_.precision == "int8":
                self._calibration_of: tuple[Any, str, BackboneConfig] | None = None
                self.config_ = self._calibrated(self.config_, items)
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
        result = self._embed(X, keep_rows=True)
        out, failed, report = result.outputs[0], result.failed, result.report
        if not hasattr(self, "report_"):
            self.report_ = EmbeddingReport()
        self.report_._replace_with(report)
        if failed:
            return self._apply_error_policy(out, failed, report)
        return out

    def embed_to_cache(self, X: Any) -> EmbeddingReport:
        """Embed ``X`` into the cache and return the run's report, keeping no rows.

        What ``featx embed`` runs: items stream through in chunks, each batch is committed as it
        comes, cached items are only checked for (their vectors are not read), and nothing
        grows with the number of items but the report's failures. Read the rows afterwards
        with :meth:`transform` (every item is a hit) or, for more than fits in memory, by parts
        (``docs/cache-format.md``).

        Parameters
        ----------
        X : as in :meth:`transform`

        Returns
        -------
        EmbeddingReport
            Also kept as ``report_``.

        Raises
        ------
        ValueError
            If the embedder has no ``cache``.
        ImageLoadError
            With ``on_error="raise"``, when an item could not be loaded (the others are cached).
        """
        if self.cache is None:
            raise ValueError(
                "embed_to_cache writes to the cache, and this embedder has none; pass cache= "
                "(or call transform to get the rows)."
            )
        result = self._embed(X, keep_rows=False)
        if not hasattr(self, "report_"):
            self.report_ = EmbeddingReport()
        self.report_._replace_with(result.report)
        if result.failed and self.on_error == "raise":
            self._apply_error_policy(np.zeros((0, 0), np.float32), result.failed, result.report)
        return self.report_

    def _embed(self, X: Any, *, keep_rows: bool) -> EngineResult:
        """Run the engine on ``X`` as :meth:`transform` and :meth:`embed_to_cache` take it."""
        config = self.backbone_config()
        X = _as_input(X)
        items: Iterable[Item]
        if _is_table(X):
            X = validate_data(self, X, dtype=np.float32, reset=not hasattr(self, "n_features_in_"))
            items, kind = as_items(X)
            sample_shape: tuple[int, ...] | None = (X.shape[1],)
        else:
            warn_if_unit_scale(X)
            items, kind = iter_items(X)
            sample_shape = None
            if config.precision == "int8":
                config = self._calibrated(config, items)
        return embed_items(
            config, items, kind=kind, sample_shape=sample_shape, cache=self.cache,
            batch_size=self.batch_size, n_workers=self.n_workers,
            retry_failed=self.retry_failed, verbose=bool(self.verbose), keep_rows=keep_rows,
        )

    def _calibrated(self, config: BackboneConfig, items: Any) -> BackboneConfig:
        """``config`` calibrated for INT8, once, so that later calls share one quantized network
        and one cache group: on ``calibration=``; else as the INT8 group of this configuration
        that the cache already holds (calibrated in this process: a search's other folds);
        else on the first images of the first call (``fit``'s, or the first ``transform``'s
        when not fitted)."""
        memo = getattr(self, "_calibration_of", None)
        if memo is not None:
            source, base, calibrated = memo
            if (source is self.calibration and base == config.fingerprint
                    and is_registered(calibrated.calibration_id)):
                return calibrated
        found = (cached_calibration(config, self.cache)
                 if self.calibration is None and self.cache is not None else None)
        if isinstance(items, ItemStream) and found is None and self.calibration is None:
            items = list(islice(items, MAX_CALIBRATION))  # a stream's first images
        calibrated = found or calibrated_config(config, self.calibration, items)
        self._calibration_of = (self.calibration, config.fingerprint, calibrated)
        return calibrated

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

    def backbone_config(self) -> BackboneConfig:
        """Resolve the parameters into the backbone configuration they name, building nothing.

        Returns
        -------
        BackboneConfig
            What ``fit`` stores as ``config_``: the backbone, cut, pooling, input size,
            preprocessing, precision and engine, and the fingerprint the cache files them under.

        Raises
        ------
        UnknownBackboneError, ValueError
            Whatever ``fit`` would raise for these parameters.
        """
        return resolve_backbone(self.backbone, **backbone_options(self))

    @property
    def _n_features_out(self) -> int:
        shape = (self.n_features_in_,) if hasattr(self, "n_features_in_") else None
        kind = "vectors" if shape is not None else "images"
        return output_widths([self.backbone_config()], kind, shape)[0]
