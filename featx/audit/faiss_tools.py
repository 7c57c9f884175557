"""faiss as featx uses it: imported when first needed, its threads limited to this process's
cores, and the rules that size an inverted-file index (shared by :class:`~featx.audit.index.
EmbeddingIndex` and the kNN head, :class:`~featx.heads.knn_index.IndexKNNClassifier`).

The rules were measured as recall@10 against exact search (2 cores): see
:mod:`featx.heads.knn_index`.
"""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = ["faiss_module", "auto_nlist", "auto_nprobe", "subquantizers"]


def faiss_module() -> Any:
    """faiss, its threads limited to the cores this process may use."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError(
            f"featx's nearest-neighbour index needs faiss, which could not be imported ({exc}). "
            "Install it: pip install faiss-cpu"
        ) from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    faiss.omp_set_num_threads(max(1, cores or 1))
    return faiss


def auto_nlist(n_rows: int) -> int:
    """The inverted file's cells for ``n_rows`` rows: the power of two nearest ``2 sqrt(n)``, at
    most ``n / 39`` (k-means wants 39 training rows a cell). 1,000,000 rows: 2,048 cells, so the
    k-means sample (39 rows a cell) is 80,000 rows, 330 MB at width 1,024."""
    nlist = 2 ** round(math.log2(max(1.0, 2 * math.sqrt(n_rows))))
    return min(nlist, 2 ** max(0, (n_rows // 39).bit_length() - 1))


def auto_nprobe(nlist: int) -> int:
    """Cells searched per query: twice the largest power of two at most ``sqrt(nlist)`` (4,096
    cells: 128; 2,048: 64; 256: 32), so recall@10 stays >= 0.95 as the cells grow finer."""
    return min(nlist, 2 * 2 ** ((max(1, nlist).bit_length() - 1) // 2))


def subquantizers(dim: int) -> int:
    """Product-quantisation sub-vectors for ``dim`` values, each a 4-bit code: one per 4 values
    above 256 wide (1,024 wide, 32 candidates a neighbour re-ranked: recall@10 0.976), one per 2
    values up to 256 (64 wide Gaussian clusters: 0.944 at 4 values, 0.977 at 2; wider rows at 2
    values train 3 times as long for 0.002 more recall); the largest divisor of ``dim`` at most
    that."""
    most = max(1, dim // 4 if dim > 256 else dim // 2)
    return next(m for m in range(most, 0, -1) if dim % m == 0)
