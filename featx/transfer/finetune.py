"""Fine-tuning the top of a backbone into a new backbone file: :func:`fine_tune`.

The Keras transfer-learning guide's practice, on featx's own pixels:

1. A new classifier (pooling, dropout, a softmax ``Dense``) is trained on the frozen network's
   features. The features are computed once (one pass over the images), so this phase costs
   seconds however many epochs it runs.
2. The top layers are unfrozen and the whole model is trained at a low learning rate, with
   early stopping on a stratified validation split that restores the best weights.
   ``BatchNormalization`` layers stay frozen, so they run in inference mode and their statistics
   do not move.

Images are decoded and resized by :func:`featx.embed.images.load_pixels` and preprocessed by the
backbone's own preprocessing, exactly as :class:`featx.ImageEmbedder` does, batch by batch in a
``keras.utils.PyDataset`` (memory is bounded by a few batches). The output is a ``.keras`` file
that loads in Keras's safe mode (no ``Lambda`` layer: preprocessing belongs to featx's pipeline,
not to the file). Next to Keras's own members the zip holds ``featx.json``
(:mod:`featx.nets.tuned_file`): the preprocessing the network was trained with and the layer that
feeds the classifier, so that ``ImageEmbedder("tuned.keras")`` embeds with the right
preprocessing, cut at that layer by default. The file is written under a temporary name and
renamed into place: an interrupted run leaves no output or a complete one.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featx.embed.embedder import ImageEmbedder
from featx.embed.images import as_items
from featx.exceptions import FeatxError
from featx.nets.backbones import BackboneConfig
from featx.nets.tuned_file import METADATA_FORMAT, save_tuned_model
from featx.transfer.finetune_checks import (
    check_params,
    labels_of,
    trained_config,
    validation_split_of,
)
from featx.transfer.finetune_data import (
    array_batches,
    frozen_activations,
    image_batches,
    numpy_preprocess,
)

__all__ = ["fine_tune"]

#: Share of the backbone's layers unfrozen when neither ``top_layers`` nor ``from_layer`` is given.
DEFAULT_TOP_FRACTION = 0.15


def fine_tune(
    images: Any,
    y: Any,
    *,
    out: str | os.PathLike[str],
    embedder: Any = None,
    top_layers: int | None = None,
    from_layer: str | None = None,
    epochs: int = 5,
    learning_rate: float = 1e-5,
    head_epochs: int = 100,
    head_learning_rate: float = 1e-3,
    validation_split: float = 0.1,
    batch_size: int = 32,
    augment: bool = False,
    dropout: float = 0.2,
    patience: int = 2,
    random_state: int = 0,
    callbacks: Sequence[Any] = (),
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fine-tune the top layers of a backbone on labelled images; write a new ``.keras`` backbone.

    First a new classifier is trained on the frozen network's features, then the top layers are
    unfrozen and trained at ``learning_rate`` with early stopping on a stratified validation
    split (the best epoch's weights are kept). ``BatchNormalization`` layers stay in inference
    mode throughout. ``ImageEmbedder(out)`` then embeds with the same preprocessing, cut by
    default at the layer that feeds the new classifier; its fingerprint is the file's sha256.

    Parameters
    ----------
    images : paths, bytes, PIL images or an image array
        Anything :class:`featx.ImageEmbedder` takes as images.
    y : array-like of shape (n_samples,)
        Class labels (at least 2 classes).
    out : path
        The ``.keras`` file to write (written under a temporary name, then renamed).
    embedder : ImageEmbedder, optional
        The network to start from and how images reach it (default: ``ImageEmbedder()``,
        MobileNet): its ``backbone`` (a registry name, a model file, a ``keras.Model`` or a
        function of the input shape), ``weights``, ``layer`` (default: the layer that feeds the
        classifier), ``input_size``, ``resize``, ``preprocess``, ``decoder`` (the pixels are the
        embedder's), ``safe_mode``, ``n_workers`` (threads decoding batches; default: the CPU
        cores, up to 8) and ``pooling`` (``"auto"``/``"avg"``, ``"max"`` or ``"flatten"``: how
        the cut layer's feature map becomes the vector the new classifier reads). Fine-tuning
        trains with Keras in float32: ``engine="openvino"`` and a reduced ``precision`` are
        refused (embed the tuned file with them: ``ImageEmbedder(out, precision=...)``); its
        ``batch_size`` (this function has its own), ``cache`` and ``on_error`` do not apply.
    top_layers : int, optional
        Unfreeze the last ``top_layers`` layers of the backbone (counted as in
        ``model.layers``, input layer excluded).
    from_layer : str, optional
        Unfreeze the layer of this name and every layer above it. Give ``top_layers`` or
        ``from_layer``, not both; with neither, the top 15% of the layers are unfrozen (more
        where those hold no weights).
    epochs : int, default=5
        Most epochs of fine-tuning (early stopping may end sooner).
    learning_rate : float, default=1e-5
        Adam's learning rate while the top layers train (low: the pretrained weights move little).
    head_epochs : int, default=100
        Most epochs of training the new classifier on the frozen features (cheap: the features
        are computed once; early stopping after 5 epochs without a lower validation loss).
    head_learning_rate : float, default=1e-3
        Adam's learning rate for the new classifier.
    validation_split : float, default=0.1
        Share of the images held out (stratified) for early stopping; 0: no early stopping.
    batch_size : int, default=32
        Images per training step.
    augment : bool, default=False
        Random horizontal flips and shifts of up to 10% of the training images.
    dropout : float, default=0.2
        Dropout rate before the new classifier.
    patience : int, default=2
        Epochs without a lower validation loss before fine-tuning stops.
    random_state : int, default=0
        Seeds the split, the shuffling, the augmentation and Keras.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks for the fine-tuning phase.
    log : callable, optional
        Receives one line per phase and per epoch (``print`` for progress).

    Returns
    -------
    pathlib.Path
        ``out``.

    Examples
    --------
    >>> import numpy as np, keras, featx, tempfile, os
    >>> def tiny(shape):
    ...     inp = keras.Input(shape)
    ...     x = keras.layers.Conv2D(4, 3, name="conv")(inp)
    ...     return keras.Model(inp, keras.layers.Conv2D(4, 3, name="top")(x))
    >>> images = np.random.default_rng(0).integers(0, 255, (20, 12, 12), dtype=np.uint8)
    >>> out = os.path.join(tempfile.mkdtemp(), "tuned.keras")
    >>> path = fine_tune(images, [0, 1] * 10, out=out,
    ...                  embedder=featx.ImageEmbedder(tiny, input_size=12),
    ...                  top_layers=1, epochs=1, head_epochs=1)
    >>> featx.ImageEmbedder(path).fit_transform(images).shape
    (20, 4)
    """
    say = log or (lambda line: None)
    target = check_params(out, top_layers, from_layer, epochs, learning_rate, head_epochs,
                           head_learning_rate, validation_split, batch_size, dropout, patience)
    items, kind = as_items(images)
    if kind != "images":
        raise ValueError(
            "fine_tune takes images (paths, bytes, PIL images or an (N, H, W[, C]) array); got "
            "a 2-D array of feature vectors. Pass the images themselves."
        )
    classes, labels = labels_of(y, len(items))
    train_idx, val_idx = validation_split_of(labels, classes, validation_split, random_state)
    embedder = ImageEmbedder() if embedder is None else embedder
    config = trained_config(embedder)
    import keras

    started = time.perf_counter()
    with _Seeded(random_state):
        base = _base_model(config)
        start, depth = _unfreeze_start(base, top_layers, from_layer, config.label)
        model, names = _with_classifier(base, config.pooling, dropout, len(classes))
        size = (int(base.input_shape[1]), int(base.input_shape[2]))
        channels = int(base.input_shape[3])
        prep = numpy_preprocess(config)
        workers = embedder.n_workers or min(8, os.cpu_count() or 1)

        def batches(idx: np.ndarray, *, train: bool) -> Any:
            return image_batches(items, labels, idx, size=size, channels=channels,
                            resize=config.resize, preprocess=prep, batch_size=batch_size,
                            shuffle=train, augment=augment and train,
                            seed=random_state, workers=workers, decoder=config.decoder)

        say(f"{config.label}: {len(train_idx)} training and {len(val_idx)} validation images, "
            f"{len(classes)} classes, {size[0]}x{size[1]} px")
        _freeze_all(base)
        # Without augmentation the frozen layers below the unfrozen ones compute the same
        # activations in every epoch: they are computed once, kept on disk (bounded memory),
        # and only the top of the network runs while it trains.
        bottom, trainee, features = _split_below(model, base, None if augment else start, names)
        with tempfile.TemporaryDirectory(prefix="featx-finetune-") as tmp:
            if bottom is not None:
                acts = {k: frozen_activations(bottom, batches(idx, train=False),
                                              Path(tmp) / f"{k}.npy")
                        for k, idx in (("train", train_idx), ("val", val_idx)) if len(idx)}

                def data(k: str, idx: np.ndarray, *, train: bool) -> Any:
                    return array_batches(acts[k], labels[idx], batch_size=batch_size,
                                          shuffle=train, seed=random_state)
            else:

                def data(k: str, idx: np.ndarray, *, train: bool) -> Any:
                    return batches(idx, train=train)

            # Phase 1: the new classifier on the frozen network's features, computed once.
            x_train = _features(features, data("train", train_idx, train=False))
            x_val = _features(features, data("val", val_idx, train=False)) if len(val_idx) else None
            head_epochs_run, head_val = _train_head(
                model.get_layer(names["classifier"]), x_train, labels[train_idx], x_val,
                labels[val_idx], dropout=dropout, epochs=head_epochs, lr=head_learning_rate,
                seed=random_state,
            )
            say(f"new classifier on frozen features: {head_epochs_run} epochs"
                + (f", validation accuracy {head_val:.3f}" if head_val is not None else "")
                + f" ({time.perf_counter() - started:.0f} s)")

            # Phase 2: unfreeze the top layers (BatchNormalization stays frozen), low rate.
            unfrozen = _unfreeze(base, start)
            say(f"fine-tuning the top {depth - start} of {depth} layers (from {unfrozen[0]!r}), "
                f"learning rate {learning_rate:g}, up to {epochs} epochs")
            trainee.compile(optimizer=keras.optimizers.Adam(learning_rate),
                            loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            calls: list[Any] = [_epoch_logger()(say, epochs)]
            if len(val_idx):
                calls.append(keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=patience, restore_best_weights=True
                ))
            history = trainee.fit(
                data("train", train_idx, train=True), epochs=epochs, verbose=0,
                validation_data=data("val", val_idx, train=False) if len(val_idx) else None,
                callbacks=[*calls, *callbacks],
            )
    val_acc = history.history.get("val_accuracy", [])
    metadata = {
        "format": METADATA_FORMAT,
        "features_layer": names["features"],
        "classifier_layer": names["classifier"],
        "preprocess": config.preprocess,
        "input_size": list(size),
        "resize": config.resize,
        "classes": _jsonable(classes),
        "source": {"backbone": config.label, "fingerprint": config.fingerprint},
        "training": {
            "unfrozen_from": unfrozen[0], "top_layers": depth - start, "depth": depth,
            "epochs_run": len(history.history.get("loss", [])), "learning_rate": learning_rate,
            "head_epochs_run": head_epochs_run, "augment": bool(augment),
            "n_train": int(len(train_idx)), "n_validation": int(len(val_idx)),
            "best_val_accuracy": float(max(val_acc)) if val_acc else None,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend()},
    }
    # A fresh functional model over the same layers: saved without the optimizer's state.
    final = keras.Model(model.inputs, model.outputs, name=model.name)
    save_tuned_model(final, metadata, target)
    say(f"wrote {target} ({time.perf_counter() - started:.0f} s in all)")
    return target


# ---- the model ----------------------------------------------------------------------------------


def _base_model(config: BackboneConfig) -> Any:
    """The backbone, cut at ``config.layer``, with a fixed input size; weights as configured."""
    import keras

    from featx.nets.keras_model import base_model, cut_layer
    if config.kind == "builder" and config.input_size is None:
        raise ValueError("a backbone function needs input_size=(height, width) to build an "
                         "image network; pass input_size.")
    shape = (*config.input_size, 3) if config.input_size else None
    model = cut_layer(base_model(config, shape), config.layer)
    if len(model.input_shape) != 4:
        raise FeatxError(
            f"{config.label} takes inputs of shape {model.input_shape}; fine_tune trains image "
            "networks, whose input is (height, width, channels)."
        )
    if None in model.input_shape[1:3]:
        if config.input_size is None:
            raise ValueError(f"{config.label} accepts any image size; pass input_size=(height, "
                             "width) to say what size the images are resized to.")
        inp = keras.Input((*config.input_size, model.input_shape[-1]))
        model = keras.Model(inp, model(inp))
    if len(model.output_shape) not in (2, 4):
        raise FeatxError(
            f"{config.label} outputs shape {model.output_shape}; expected a feature map "
            "(None, h, w, c) or a vector (None, d) to put the new classifier on. Cut elsewhere "
            "with layer=."
        )
    return model


def _layers(base: Any) -> list[Any]:
    import keras

    return [lay for lay in base.layers if not isinstance(lay, keras.layers.InputLayer)]


def _trainable(layer: Any) -> bool:
    """A layer fine-tuning may change: it has weights and is not a BatchNormalization."""
    import keras

    return bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)


def _unfreeze_start(base: Any, top_layers: int | None, from_layer: str | None,
                    label: str) -> tuple[int, int]:
    """Index (in :func:`_layers`) of the lowest layer to unfreeze, and the depth."""
    import difflib

    layers = _layers(base)
    depth = len(layers)
    if not any(_trainable(lay) for lay in layers):
        raise FeatxError(
            f"{label} has no layer with weights that fine-tuning could train (BatchNormalization "
            "stays frozen); its layers are: " + ", ".join(lay.name for lay in layers[-8:])
            + ". Use a backbone with convolution or dense layers, or cut it higher with layer=."
        )
    if from_layer is not None:
        names = [lay.name for lay in layers]
        if from_layer not in names:
            close = difflib.get_close_matches(from_layer, names, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
            raise ValueError(f"from_layer={from_layer!r} is not a layer of {label}{hint} Its "
                             f"last layers are: {', '.join(names[-8:])}.")
        start = names.index(from_layer)
    else:
        n = top_layers if top_layers is not None else math.ceil(depth * DEFAULT_TOP_FRACTION)
        if top_layers is None:  # the default reaches down to a layer with weights
            while n < depth and not any(_trainable(lay) for lay in layers[depth - n:]):
                n += 1
        if n > depth:
            raise ValueError(
                f"top_layers={n} is beyond the network's depth: {label} has {depth} layers below "
                f"the new classifier. Pass top_layers from 1 to {depth}, or from_layer=NAME."
            )
        start = depth - n
    if not any(_trainable(lay) for lay in layers[start:]):
        top = layers[start:]
        raise ValueError(
            f"the top {len(top)} layers ({', '.join(lay.name for lay in top[:6])}) hold no "
            "weights that fine-tuning trains (BatchNormalization stays frozen). Unfreeze more: a "
            "larger top_layers, or from_layer= a convolution or dense layer lower down."
        )
    return start, depth


def _freeze_all(base: Any) -> None:
    for lay in base.layers:
        lay.trainable = False


def _unfreeze(base: Any, start: int) -> list[str]:
    layers = _layers(base)
    for lay in layers[start:]:
        lay.trainable = _trainable(lay)  # BatchNormalization stays frozen: inference mode
    return [lay.name for lay in layers[start:]]


def _unique_name(taken: set[str], name: str) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    return out


def _with_classifier(base: Any, pooling: str, dropout: float,
                     n_classes: int) -> tuple[Any, dict[str, str]]:
    """The backbone + pooling + dropout + softmax classifier, as one flat functional model."""
    import keras

    taken = {lay.name for lay in base.layers}
    names = {k: _unique_name(taken, f"featx_{k}") for k in ("features", "dropout", "classifier")}
    x = base.output
    if len(base.output_shape) == 2:
        pool: Any = keras.layers.Identity(name=names["features"])
    elif pooling == "avg":
        pool = keras.layers.GlobalAveragePooling2D(name=names["features"])
    elif pooling == "max":
        pool = keras.layers.GlobalMaxPooling2D(name=names["features"])
    else:
        pool = keras.layers.Flatten(name=names["features"])
    x = pool(x)
    x = keras.layers.Dropout(dropout, name=names["dropout"])(x)
    out = keras.layers.Dense(n_classes, activation="softmax", name=names["classifier"])(x)
    return keras.Model(base.inputs, out, name=f"{base.name}_tuned"), names


def _split_below(model: Any, base: Any, start: int | None,
                 names: dict[str, str]) -> tuple[Any, Any, Any]:
    """``(bottom, top, features)``: the frozen network up to the lowest unfrozen layer's input,
    the model from there up, and from there to the features layer. ``bottom`` is None (and
    ``top`` the whole model) where the graph cannot be cut there (an input that skips past the
    cut, a shared layer), nothing is frozen, or ``start`` is None."""
    import keras

    features_out = model.get_layer(names["features"]).output
    whole = (None, model, keras.Model(model.inputs, features_out))
    layers = _layers(base)
    if not start:
        return whole
    try:
        boundary = layers[start].input
        if isinstance(boundary, (list, tuple, dict)):
            return whole
        top = keras.Model(boundary, model.output)
        features = keras.Model(boundary, features_out)
        bottom = keras.Model(model.inputs, boundary)
    except Exception:  # Keras refuses a disconnected graph; train the whole model instead
        return whole
    allowed = {lay.name for lay in layers[start:]} | set(names.values())
    if any(lay.name not in allowed for lay in _layers(top)):
        return whole
    return bottom, top, features


def _features(model: Any, data: Any) -> np.ndarray:
    x = np.asarray(model.predict(data, verbose=0), np.float32)
    data.raise_failures()
    return x


def _train_head(classifier: Any, x_train: np.ndarray, y_train: np.ndarray,
                x_val: np.ndarray | None, y_val: np.ndarray, *, dropout: float, epochs: int,
                lr: float, seed: int) -> tuple[int, float | None]:
    """Train a copy of the classifier on precomputed features; copy its weights back."""
    import keras

    inp = keras.Input((x_train.shape[1],))
    x = keras.layers.Dropout(dropout, seed=seed)(inp)
    dense = keras.layers.Dense(classifier.units, activation="softmax")
    head = keras.Model(inp, dense(x))
    head.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    calls = []
    if x_val is not None:
        calls.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                                   restore_best_weights=True))
    history = head.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0,
                       validation_data=(x_val, y_val) if x_val is not None else None,
                       callbacks=calls)
    classifier.set_weights(dense.get_weights())
    val = history.history.get("val_accuracy")
    return len(history.history["loss"]), (float(max(val)) if val else None)


# ---- training helpers ---------------------------------------------------------------------------


class _Seeded:
    """Seed Keras (and with it Python's and NumPy's global RNGs), restoring those afterwards."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        import random

        import keras

        self._py = random.getstate()
        self._np = np.random.get_state()
        keras.utils.set_random_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        import random

        random.setstate(self._py)
        np.random.set_state(self._np)


def _epoch_logger() -> type:
    import keras

    class EpochLog(keras.callbacks.Callback):
        def __init__(self, say: Callable[[str], None], epochs: int):
            super().__init__()
            self.say, self.epochs = say, epochs

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            parts = [f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss",
                                                     "val_accuracy") if k in logs]
            self.say(f"epoch {epoch + 1}/{self.epochs}: {', '.join(parts)} "
                     f"({time.perf_counter() - self.started:.0f} s)")

    return EpochLog


def _jsonable(classes: np.ndarray) -> list[Any]:
    out = []
    for c in classes.tolist():
        out.append(c if isinstance(c, (str, int, float, bool)) else str(c))
    return out
