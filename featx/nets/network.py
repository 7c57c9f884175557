"""A built network: its configurations, input shape and widths, and a forward pass to run.

A :class:`Network` is what every engine builds (Keras in :mod:`featx.nets.keras_model`,
OpenVINO in :mod:`featx.nets.openvino_engine`) and what the embedding pipeline runs: it stacks
decoded samples into a batch, pads the batch to a power of two and starts the forward pass,
returning a function that waits for the rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from featx.nets.backbones import BackboneConfig

__all__ = ["Forward", "Network"]


class Network:
    """A built, frozen feature network with its preprocessing and a compiled forward function.

    Attributes
    ----------
    configs : list of BackboneConfig
        One per output: the same backbone cut at different layers (or pooled differently).
    config : BackboneConfig
        The first of ``configs``.
    engine : {"keras", "openvino"}
        What runs the forward pass.
    note : str
        Why the engine is not the one asked for (``engine="auto"`` fell back), or ``""``.
    sample_shape : tuple of int
        The shape of one input sample, e.g. ``(224, 224, 3)`` or ``(12,)``.
    widths : list of int
        Length of one embedding, per output.
    width : int
        ``widths[0]``.
    n_seen : int
        How many samples went through the network in this process (used by tests and reports).
    """

    def __init__(
        self,
        configs: Sequence[BackboneConfig],
        sample_shape: tuple[int, ...],
        widths: Sequence[int],
        forward: Forward,
        *,
        engine: str,
        note: str = "",
    ):
        self.configs = list(configs)
        self.config = self.configs[0]
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.widths = [int(w) for w in widths]
        self.width = self.widths[0]
        self.engine = engine
        self.note = note
        self.n_seen = 0
        self._forward = forward
        self._lock = threading.Lock()
        # A user's own Python preprocessing function runs on the batch first, in NumPy;
        # every other preprocessing runs inside the compiled function.
        self._numpy_preprocess = self.config.preprocess_fn

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def channels(self) -> int:
        return self.sample_shape[-1] if self.is_image else 0

    def prepare(self, samples: list[np.ndarray]) -> np.ndarray:
        """Stack decoded samples into a batch; uint8 stays uint8 (a quarter of the bytes to
        move). A user's own preprocessing function is applied here, in NumPy."""
        batch = np.stack(samples)
        if self._numpy_preprocess is not None:
            batch = np.asarray(self._numpy_preprocess(batch.astype(np.float32)), np.float32)
        elif batch.dtype != np.uint8:
            batch = batch.astype(np.float32, copy=False)
        return batch

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a prepared batch; return the first output's float32 rows."""
        return self.dispatch(batch)()[0]

    def dispatch(self, batch: np.ndarray) -> Callable[[], list[np.ndarray]]:
        """Start the network on a prepared batch; return a function that waits for its rows,
        one float32 array per output.

        The forward pass runs asynchronously where the engine can (JAX, OpenVINO): the caller
        hands over the next batch before reading this one back, so the device never idles
        between batches.
        """
        n = len(batch)
        if n == 0:
            return lambda: [np.zeros((0, w), np.float32) for w in self.widths]
        # Pad to a power of two so that a compiled function sees few distinct shapes.
        padded = 1 << (n - 1).bit_length()
        if padded != n:
            pad = np.zeros((padded - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        with self._lock:
            wait = self._forward(batch)
            self.n_seen += n
        return lambda: [np.asarray(y)[:n].astype(np.float32, copy=False) for y in wait()]


#: A forward pass: takes a batch, starts the network, returns a function that waits for the
#: outputs (one array per configuration).
Forward = Callable[[np.ndarray], Callable[[], Sequence[Any]]]
