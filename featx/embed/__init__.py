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
from featx.embed.listing import CsvImages, FolderImages
from featx.embed.shards import TarShards, load_shards
from featx.embed.stream import ItemStream
from featx.embed.tables import ParquetImages, load_parquet

__all__ = [
    "ImageEmbedder",
    "embed_items",
    "EmbeddingReport",
    "IMAGE_EXTENSIONS",
    "as_items",
    "load_image_csv",
    "load_image_folder",
    "load_pixels",
    "ItemStream",
    "FolderImages",
    "CsvImages",
    "TarShards",
    "load_shards",
    "ParquetImages",
    "load_parquet",
]
