"""featx on a Ray cluster: embedding into one cache, heads through joblib."""

from __future__ import annotations

from featx.distributed.cluster import ClusterError, object_store_array, ray_joblib, ray_session
from featx.distributed.driver import RayEmbeddingReport, embed_on_ray

__all__ = [
    "embed_on_ray",
    "RayEmbeddingReport",
    "ClusterError",
    "object_store_array",
    "ray_joblib",
    "ray_session",
]
