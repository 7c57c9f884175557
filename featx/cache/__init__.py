"""The embedding cache: lookups and appends, its files on disk, its groups, its writer thread."""

from __future__ import annotations

from featx.cache.failure import Failure
from featx.cache.groups import (
    choose_group,
    describe_group,
    embedder_params_from_cache,
    embedder_params_from_group,
)
from featx.cache.store import CACHE_FORMAT_VERSION, EmbeddingCache, GroupInfo, open_cache
from featx.cache.writer import CacheWriter

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EmbeddingCache",
    "GroupInfo",
    "open_cache",
    "choose_group",
    "describe_group",
    "embedder_params_from_cache",
    "embedder_params_from_group",
    "CacheWriter",
    "Failure",
]
