"""Beyond the default cut: the layer probe and fine-tuning."""

from __future__ import annotations

from featx.transfer.finetune import fine_tune
from featx.transfer.probe import MAX_FLATTEN_WIDTH, LayerProbe, ProbedLayer, probe_layers

__all__ = [
    "MAX_FLATTEN_WIDTH",
    "LayerProbe",
    "probe_layers",
    "ProbedLayer",
    "fine_tune",
]
