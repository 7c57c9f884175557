"""featx: frozen, pretrained Keras image networks as scikit-learn transformers.

Importing featx does not import Keras or TensorFlow; the network is built on first use.
"""

from __future__ import annotations

from featx.backbones import get_backbone, list_backbones
from featx.cache import EmbeddingCache
from featx.embedder import EmbeddingReport, ImageEmbedder
from featx.exceptions import (
    CacheError,
    FeatxError,
    ImageLoadError,
    UnknownBackboneError,
    WeightsNotFoundError,
)
from featx.images import load_image_csv, load_image_folder

__version__ = "0.1.0"

__all__ = [
    "ImageEmbedder",
    "EmbeddingReport",
    "EmbeddingCache",
    "load_image_folder",
    "load_image_csv",
    "list_backbones",
    "get_backbone",
    "FeatxError",
    "UnknownBackboneError",
    "WeightsNotFoundError",
    "ImageLoadError",
    "CacheError",
    "__version__",
]
