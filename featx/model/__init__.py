"""The model: an embedder and a fitted head predicting from images, saved as one .featx file."""

from __future__ import annotations

from featx.model.featx_model import (
    FeatxModel,
    Prediction,
    load_model,
    predictions_csv_rows,
    save_model,
)
from featx.model.saved import MODEL_FORMAT_VERSION, TRUSTED_TYPES, read_manifest

__all__ = [
    "FeatxModel",
    "load_model",
    "Prediction",
    "predictions_csv_rows",
    "save_model",
    "MODEL_FORMAT_VERSION",
    "TRUSTED_TYPES",
    "read_manifest",
]
