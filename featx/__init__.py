"""featx: frozen, pretrained Keras image networks as scikit-learn transformers.

Importing featx does not import Keras or TensorFlow; the network is built on first use.
"""

from __future__ import annotations

from featx._version import __version__
from featx.adapt import (
    CORAL,
    PredictionEntropyScorer,
    ReverseValidationScorer,
    SubspaceAlignment,
    TargetData,
)

# featx.audit is the audit package and, called, the audit: featx.audit(paths, y, cache=...).
# Importing it loads no network framework and no faiss (the index imports faiss when built).
from featx.audit import EmbeddingIndex
from featx.cache import EmbeddingCache
from featx.embed import (
    EmbeddingReport,
    ImageEmbedder,
    ParquetImages,
    TarShards,
    load_image_csv,
    load_image_folder,
    load_parquet,
    load_shards,
)
from featx.exceptions import (
    AdaptationError,
    CacheError,
    FeatxError,
    ImageLoadError,
    ModelVersionWarning,
    UnknownBackboneError,
    UntrustedModelError,
    WeightsNotFoundError,
)
from featx.heads import (
    DEFAULT_HEADS,
    HEADS,
    SCALABLE_HEADS,
    HeadPreset,
    HeadResult,
    IndexKNNClassifier,
    Leaderboard,
    SGDHead,
    cached_embeddings,
    list_heads,
    make_head,
    tune_heads,
)
from featx.model import FeatxModel, Prediction, load_model, read_manifest, save_model
from featx.nets import get_backbone, list_backbones
from featx.report import plot_confusion_matrix, plot_leaderboard
from featx.transfer import LayerProbe, ProbedLayer, fine_tune, probe_layers

__all__ = [
    "ImageEmbedder",
    "EmbeddingReport",
    "EmbeddingCache",
    "EmbeddingIndex",
    "audit",
    "load_image_folder",
    "load_image_csv",
    "load_shards",
    "load_parquet",
    "TarShards",
    "ParquetImages",
    "list_backbones",
    "get_backbone",
    "HEADS",
    "DEFAULT_HEADS",
    "SCALABLE_HEADS",
    "HeadPreset",
    "HeadResult",
    "Leaderboard",
    "list_heads",
    "make_head",
    "tune_heads",
    "SGDHead",
    "IndexKNNClassifier",
    "cached_embeddings",
    "fine_tune",
    "FeatxModel",
    "Prediction",
    "save_model",
    "load_model",
    "read_manifest",
    "plot_leaderboard",
    "plot_confusion_matrix",
    "probe_layers",
    "LayerProbe",
    "ProbedLayer",
    "CORAL",
    "SubspaceAlignment",
    "TargetData",
    "ReverseValidationScorer",
    "PredictionEntropyScorer",
    "FeatxError",
    "UnknownBackboneError",
    "WeightsNotFoundError",
    "ImageLoadError",
    "CacheError",
    "UntrustedModelError",
    "AdaptationError",
    "ModelVersionWarning",
    "__version__",
]
