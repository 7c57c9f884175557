"""Embedding images: the scikit-learn transformer, the streaming pipeline it runs, and image
inputs."""

from __future__ import annotations

from featx.embed.embedder import ImageEmbedder
from featx.embed.engine import EmbeddingReport, embed_items
from featx.embed.images import (
    IMAGE_EXTENSIONS,
    as_items,
    load_image_csv,
    load_image_folder,
    load_pixels,
)

__all__ = [
    "ImageEmbedder",
    "embed_items",
    "EmbeddingReport",
    "IMAGE_EXTENSIONS",
    "as_items",
    "load_image_csv",
    "load_image_folder",
    "load_pixels",
]
