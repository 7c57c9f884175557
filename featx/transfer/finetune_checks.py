"""What :func:`featx.fine_tune` is given, checked: its parameters, the labels, the validation
split, and the embedder's backbone as fine-tuning trains it (Keras, float32)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from featx.nets.backbones import BackboneConfig, resolve_backbone
from featx.nets.options import backbone_options

__all__ = ["check_params", "labels_of", "trained_config", "validation_split_of"]



def trained_config(embedder: Any) -> BackboneConfig:
    """The embedder's backbone as fine-tuning trains it: with Keras, in float32."""
    if embedder.engine == "openvino":
        raise ValueError(
            "fine_tune trains with Keras; got an embedder with engine='openvino'. Leave the "
            "engine out (or 'auto'), and embed the tuned file with it: "
            "ImageEmbedder(out, engine='openvino')."
        )
    if embedder.precision != "float32":
        raise ValueError(
            f"fine_tune trains in float32; got an embedder with precision="
            f"{embedder.precision!r}. Leave the precision out, and embed the tuned file with "
            f"it: ImageEmbedder(out, precision={embedder.precision!r})."
        )
    config = resolve_backbone(embedder.backbone,
                              **{**backbone_options(embedder), "engine": "keras"})
    if config.pooling not in ("avg", "max", "flatten"):
        raise ValueError(f"pooling={embedder.pooling!r} is not valid for fine-tuning; expected "
                         "'auto', 'avg', 'max' or 'flatten' (the new classifier reads a vector).")
    return config


def check_params(out: Any, top_layers: Any, from_layer: Any, epochs: Any, lr: Any,
                  head_epochs: Any, head_lr: Any, validation_split: Any, batch_size: Any,
                  dropout: Any, patience: Any) -> Path:
    target = Path(out)
    if target.suffix != ".keras":
        raise ValueError(
            f"out={str(out)!r} does not end in .keras; fine_tune writes a Keras 3 model file. "
            f"Name it like {target.with_suffix('.keras').name!r}."
        )
    if not target.parent.is_dir():
        raise ValueError(f"out={str(out)!r}: folder {str(target.parent)!r} does not exist; "
                         "create it first.")
    if top_layers is not None and from_layer is not None:
        raise ValueError(
            f"got top_layers={top_layers!r} and from_layer={from_layer!r}; give one of them: "
            "the number of layers to unfreeze, or the lowest layer to unfreeze."
        )
    for name, value, low in (("top_layers", top_layers, 1), ("epochs", epochs, 1),
                             ("head_epochs", head_epochs, 1), ("batch_size", batch_size, 1),
                             ("patience", patience, 0)):
        if name == "top_layers" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r} is not valid; expected an integer >= {low}.")
    for name, value in (("learning_rate", lr), ("head_learning_rate", head_lr)):
        if not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name}={value!r} is not valid; expected a number between 0 and 1 "
                             "(1e-5 is usual for fine-tuning, 1e-3 for a new classifier).")
    if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
        raise ValueError(f"validation_split={validation_split!r} is not valid; expected a "
                         "fraction from 0 (no early stopping) to below 1, e.g. 0.1.")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r} is not valid; expected a rate from 0 to below 1.")
    return target


def labels_of(y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise ValueError(f"y has shape {y_arr.shape}; expected one class label per image, "
                         "shape (n_samples,).")
    if len(y_arr) != n:
        raise ValueError(f"got {n} images but {len(y_arr)} labels; expected one label per image.")
    classes, labels = np.unique(y_arr, return_inverse=True)
    if len(classes) < 2:
        got = f"one class ({_show(classes[0])})" if len(classes) else "no labels"
        raise ValueError(
            f"y holds {got}; fine-tuning trains a classifier and needs at least 2 classes. "
            "Pass labelled images of two or more classes."
        )
    return classes, labels.astype(np.int64)


def _show(value: Any) -> str:
    """``repr`` of a label, NumPy scalars as plain Python values."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def validation_split_of(labels: np.ndarray, classes: np.ndarray, validation_split: float,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(labels))
    if validation_split == 0:
        return idx, idx[:0]
    counts = np.bincount(labels, minlength=len(classes))
    small = int(np.argmin(counts))
    if counts[small] < 2:
        raise ValueError(
            f"class {_show(classes[small])} has {counts[small]} image; a stratified validation "
            f"split (validation_split={validation_split}) needs at least 2 of every class, one to "
            "train and one to validate. Add images of that class, or pass validation_split=0 (no "
            "early stopping)."
        )
    n_val = math.ceil(len(labels) * validation_split)
    if n_val < len(classes) or len(labels) - n_val < len(classes):
        need = len(classes) / len(labels)
        raise ValueError(
            f"validation_split={validation_split} of {len(labels)} images holds {n_val} "
            f"validation images for {len(classes)} classes; a stratified split needs at least "
            f"one image of every class on each side. Use validation_split >= {need:.2f} (and "
            f"<= {1 - need:.2f}), more images, or validation_split=0."
        )
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)
