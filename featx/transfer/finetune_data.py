"""What fine-tuning trains on: image batches decoded and preprocessed as featx embeds them.

* :func:`image_batches` is a ``keras.utils.PyDataset`` of ``(pixels, labels)`` batches: items are
  decoded and resized by :func:`featx.embed.images.load_pixels` and preprocessed by the backbone's
  own preprocessing (:func:`numpy_preprocess`), a few batches at a time in Keras's worker threads;
  training batches are reshuffled every epoch and optionally augmented (:func:`augment_pixels`).
* :func:`frozen_activations` runs the frozen bottom of a network over those batches once, into a
  memory-mapped ``.npy`` file, and :func:`array_batches` serves it back, so that epochs without
  augmentation run only the layers being trained.

Memory stays bounded however many images there are: Keras's queue holds a few batches, and the
activations live on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from featx.embed.images import Item, load_pixels
from featx.exceptions import ImageLoadError
from featx.nets.backbones import BackboneConfig

__all__ = ["image_batches", "array_batches", "augment_pixels", "frozen_activations",
           "numpy_preprocess", "MAX_PIXELS"]

#: Images larger than this many pixels are refused (decompression-bomb guard), as when embedding.
MAX_PIXELS = 89_478_485


def numpy_preprocess(config: BackboneConfig) -> Callable[[np.ndarray], np.ndarray]:
    """The backbone's preprocessing as a function of a float32 NumPy batch (0-255 scale)."""
    if config.preprocess_fn is not None:
        fn = config.preprocess_fn
    else:
        from featx.nets.keras_model import graph_preprocess

        fn = graph_preprocess(config.preprocess)
    return lambda x: np.asarray(fn(x), np.float32)


def frozen_activations(bottom: Any, data: Any, path: Path) -> np.ndarray:
    """Run the frozen ``bottom`` over every batch of ``data`` into a ``.npy`` file on disk
    (memory-mapped: memory stays bounded); the next batch is decoded meanwhile."""
    out: np.ndarray | None = None
    pos = 0
    with ThreadPoolExecutor(1, thread_name_prefix="featx-decode") as pool:
        ahead = pool.submit(data.__getitem__, 0)
        for i in range(len(data)):
            x, _ = ahead.result()
            if i + 1 < len(data):
                ahead = pool.submit(data.__getitem__, i + 1)
            a = np.asarray(bottom.predict_on_batch(x), np.float32)
            if out is None:
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                shape=(len(data.idx), *a.shape[1:]))
            out[pos:pos + len(a)] = a
            pos += len(a)
    data.raise_failures()
    assert out is not None
    return out



def image_batches(*args: Any, **kwargs: Any) -> Any:
    """A ``keras.utils.PyDataset`` of ``(pixels, labels)`` batches (see :func:`_dataset_class`;
    the class is made when Keras is first needed)."""
    return _dataset_class()(*args, **kwargs)


_DATASET: type | None = None


def _dataset_class() -> type:
    """A ``keras.utils.PyDataset`` of decoded, preprocessed image batches, built on first use."""
    global _DATASET
    if _DATASET is not None:
        return _DATASET

    import keras

    class Batches(keras.utils.PyDataset):
        """Batches of ``(pixels, labels)``: decoded, resized and preprocessed as featx embeds.

        Only a few batches exist at a time (Keras's queue); training batches are reshuffled
        every epoch and optionally augmented (flips, shifts) before preprocessing.
        """

        def __init__(self, items: list[Item], labels: np.ndarray, idx: np.ndarray, *,
                     size: tuple[int, int], channels: int, resize: str,
                     preprocess: Callable[[np.ndarray], np.ndarray], batch_size: int,
                     shuffle: bool, augment: bool, seed: int, workers: int,
                     decoder: str = "auto"):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=4)
            self.items, self.labels, self.idx = items, labels, np.asarray(idx)
            self.size, self.channels, self.resize = size, channels, resize
            self.decoder = decoder
            self.preprocess, self.batch_size = preprocess, batch_size
            self.shuffle, self.augment = shuffle, augment
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(self.idx) if shuffle else self.idx
            self.epoch = 0
            self.seed = seed
            self.failures: dict[int, ImageLoadError] = {}

        def __len__(self) -> int:
            return math.ceil(len(self.idx) / self.batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            chosen = self.order[i * self.batch_size:(i + 1) * self.batch_size]
            pixels = np.zeros((len(chosen), *self.size, self.channels), np.float32)
            for row, p in enumerate(chosen):
                try:
                    pixels[row] = load_pixels(self.items[p], self.size, channels=self.channels,
                                              resize=self.resize, max_pixels=MAX_PIXELS,
                                              decoder=self.decoder)
                except ImageLoadError as exc:
                    exc.index = int(p)
                    self.failures[int(p)] = exc
            if self.augment:
                rng = np.random.default_rng((self.seed, self.epoch, i))
                pixels = augment_pixels(pixels, rng)
            return self.preprocess(pixels), self.labels[chosen]

        def on_epoch_end(self) -> None:
            self.epoch += 1
            if self.shuffle:
                self.order = self.rng.permutation(self.idx)

        def raise_failures(self) -> None:
            if not self.failures:
                return
            bad = [self.failures[k] for k in sorted(self.failures)]
            lines = "; ".join(str(e) for e in bad[:10])
            more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
            raise ImageLoadError(
                f"{len(bad)} of {len(self.idx)} images",
                f"could not be loaded: {lines}{more}. Nothing was trained; remove them (or fix "
                "them) and run fine_tune again.",
            )

    _DATASET = Batches
    return Batches


def array_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool,
                   seed: int) -> Any:
    """A ``keras.utils.PyDataset`` of ``(x[rows], y[rows])`` batches from an array on disk."""
    import keras

    class Arrays(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x)) if shuffle else np.arange(len(x))

        def __len__(self) -> int:
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.sort(self.order[i * batch_size:(i + 1) * batch_size])
            return np.asarray(x[rows]), y[rows]

        def on_epoch_end(self) -> None:
            if shuffle:
                self.order = self.rng.permutation(len(x))

        def raise_failures(self) -> None:
            """Nothing to report: the images were decoded before."""

    return Arrays()


def augment_pixels(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flips and shifts of up to 10% (edges repeated), image by image."""
    out = pixels.copy()
    h, w = pixels.shape[1:3]
    for k in range(len(out)):
        img = out[k]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        dy = int(rng.integers(-(h // 10), h // 10 + 1))
        dx = int(rng.integers(-(w // 10), w // 10 + 1))
        if dy or dx:
            padded = np.pad(img, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
            img = padded[abs(dy) + dy:abs(dy) + dy + h, abs(dx) + dx:abs(dx) + dx + w]
        out[k] = img
    return out
