"""The networks of this process: built on first use from their configurations, then shared.

:func:`get_network` turns one or several :class:`~featx.nets.backbones.BackboneConfig` (the same
backbone cut at several layers) into a :class:`~featx.nets.network.Network`: one model, one
forward pass, one output per configuration. Built networks are kept in a process-level registry
keyed by fingerprint, so every clone of an estimator in one process shares one network.

Two engines run the forward pass:

- ``"keras"``: a compiled function of the Keras model (:mod:`featx.nets.keras_model`);
- ``"openvino"``: the model and its preprocessing converted to OpenVINO and run on the CPU, in
  float32 or bfloat16 (:mod:`featx.nets.openvino_engine`); ``engine="auto"`` falls back to Keras
  when the conversion fails.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from featx.exceptions import FeatxError
from featx.nets.backbones import BackboneConfig
from featx.nets.keras_model import keras_network
from featx.nets.network import Network

__all__ = ["clear_networks", "get_builder_network", "get_network"]

_NETWORKS: dict[str, Network] = {}
_NETWORKS_LOCK = threading.Lock()


def get_network(
    configs: BackboneConfig | Sequence[BackboneConfig],
    sample_shape: tuple[int, ...] | None = None,
) -> Network:
    """Return the network for one configuration, or for several cuts of one backbone.

    Built on first use in this process and shared afterwards.

    Parameters
    ----------
    configs : BackboneConfig or sequence of BackboneConfig
        Several configurations must differ only in ``layer`` and ``pooling``: the network then
        returns one output per configuration from one forward pass.
    sample_shape : tuple of int, optional
        The shape of one sample; needed only for a backbone function (``kind="builder"``).
    """
    configs = [configs] if isinstance(configs, BackboneConfig) else list(configs)
    if not configs:
        raise ValueError("get_network needs at least one configuration.")
    _check_same_backbone(configs)
    first = configs[0]
    if first.kind == "builder" and sample_shape is None:
        raise FeatxError("a builder backbone needs the sample shape; pass sample_shape")
    # A model file loaded with safe_mode=False is not handed to an embedder that did not ask.
    key = "+".join(c.fingerprint for c in configs) + f":{first.engine}"
    key += ("" if first.safe_mode else ":unsafe") + (f":{sample_shape}" if sample_shape else "")
    with _NETWORKS_LOCK:
        net = _NETWORKS.get(key)
        if net is None:
            net = _build_network(configs, sample_shape)
            _NETWORKS[key] = net
        return net


def get_builder_network(config: BackboneConfig, sample_shape: tuple[int, ...]) -> Network:
    """Return the network a builder function makes for samples of ``sample_shape``."""
    return get_network(config, tuple(sample_shape))


def clear_networks() -> None:
    """Forget every network built in this process (frees their memory)."""
    with _NETWORKS_LOCK:
        _NETWORKS.clear()


def _check_same_backbone(configs: list[BackboneConfig]) -> None:
    def rest(c: BackboneConfig) -> dict[str, Any]:
        fields = dict(c.fingerprint_fields)
        fields.pop("layer")
        fields.pop("pooling")
        return {**fields, "engine": c.engine, "safe_mode": c.safe_mode}

    first = rest(configs[0])
    for c in configs[1:]:
        if rest(c) != first:
            raise ValueError(
                f"one network can only return several cuts of the same backbone; "
                f"{configs[0].label} and {c.label} differ in more than layer and pooling."
            )


def _build_network(configs: list[BackboneConfig], sample_shape: tuple[int, ...] | None) -> Network:
    config = configs[0]
    if config.engine == "openvino":
        from featx.nets.openvino_engine import NotConvertible, openvino_network

        try:
            return openvino_network(configs, sample_shape)
        except NotConvertible as exc:
            if not config.engine_auto:
                raise FeatxError(
                    f"OpenVINO could not convert {config.label}: {exc}. Pass engine='keras' to "
                    "run it with Keras instead."
                ) from exc.__cause__
            from dataclasses import replace

            note = f"engine='auto' runs Keras: OpenVINO could not convert the network ({exc})"
            keras_configs = [replace(c, engine="keras") for c in configs]
            net = keras_network(keras_configs, sample_shape)
            net.note = note
            return net
    net = keras_network(configs, sample_shape)
    net.note = config.engine_note
    return net
