"""Tiny real sources for the tests of tar shards, tables and URLs: PNG bytes, shards, Parquet
files and a folder holding the same images."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def pngs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct small PNG images (16 x 16 to 19 x 18)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (16 + i % 4, 16 + i % 3, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar file of ``members`` (name, bytes), in that order; ``.tar.gz`` compresses it."""
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_shards(folder: Path, images: list[bytes], per_shard: int, *,
                 labels: list[str] | None = None) -> list[Path]:
    """WebDataset shards ``shard-00000.tar``, ... of ``per_shard`` samples: ``{i:06d}.png`` and,
    with ``labels``, ``{i:06d}.cls``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, len(images), per_shard)):
        members = []
        for i in range(start, min(start + per_shard, len(images))):
            if labels is not None:
                members.append((f"{i:06d}.cls", labels[i].encode()))
            members.append((f"{i:06d}.png", images[i]))
        paths.append(write_tar(folder / f"shard-{s:05d}.tar", members))
    return paths


def write_folder(folder: Path, images: list[bytes]) -> list[Path]:
    """The images as files ``{i:06d}.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(images):
        (folder / f"{i:06d}.png").write_bytes(data)
        paths.append(folder / f"{i:06d}.png")
    return paths


def write_parquet(path: Path, columns: dict, *, row_group_size: int | None = None,
                  metadata: dict | None = None) -> Path:
    """A Parquet file of ``columns`` (name -> list of values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def tiny_embedder(base: Path, **params):
    """An :class:`featx.ImageEmbedder` on conftest's tiny saved network at 16 px."""
    from featx import ImageEmbedder
    from tests.conftest import save_tiny_convnet

    model = base / "tiny.keras"
    if not model.exists():
        save_tiny_convnet(model, 16)
    return ImageEmbedder(str(model), input_size=16, **params)
