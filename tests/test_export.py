"""featx export: a cache group's rows as .npy/Parquet shards, read back row for row; refusals
(a folder in the way, a damaged cache, an unknown group) leave nothing behind."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featx.cache.export import MANIFEST, export_group
from featx.cache.store import EmbeddingCache
from featx.cli import main
from featx.exceptions import CacheGroupError, FeatxError

WIDTH = 8


def key(i: int) -> str:
    return f"{i:064x}"


def filled(path: Path, fingerprint: str = "fp") -> EmbeddingCache:
    """A group over several files (no merges), with keys repeated across them: 230 rows."""
    cache = EmbeddingCache(path)
    cache.merge = False
    rng = np.random.default_rng(0)
    for lo, hi in ((0, 100), (80, 150), (150, 151), (140, 230)):
        ids = range(lo, hi)
        cache.append(fingerprint, [key(i) for i in ids],
                     rng.normal(size=(hi - lo, WIDTH)).astype(np.float32),
                     [f"dir/{i}.png" for i in ids])
    return cache


def cached_rows(cache: EmbeddingCache, fingerprint: str = "fp") -> dict[str, tuple]:
    keys, vectors, sources = cache.read_group(fingerprint)
    return {k: (v, s) for k, v, s in zip(keys, vectors, sources, strict=True)}


def shard_index(name: str) -> int:
    return int(re.search(r"_(\d+)\.", name).group(1))


def check_rows(rows: dict[str, tuple], keys: list[str], vectors: np.ndarray,
               paths: list[str]) -> None:
    assert len(keys) == len(rows) == len(set(keys))
    for k, v, p in zip(keys, vectors, paths, strict=True):
        assert np.array_equal(v, rows[k][0]) and p == rows[k][1]


def test_npy_shards_hold_the_group_row_for_row(tmp_path):
    cache = filled(tmp_path / "emb.h5")
    out = tmp_path / "out"
    done = export_group(cache, None, out, shard_rows=23, block_rows=10)
    assert done.rows == 230 and done.width == WIDTH and len(done.shards) == 10
    npys = sorted((out / "img_emb").iterdir())
    metas = sorted((out / "metadata").iterdir())
    # Zero-padded as clip-retrieval names them: name order is row order, and the two folders
    # pair up file by file (what embedding-reader's parquet_npy format assumes).
    assert [p.name for p in npys] == [f"img_emb_{i}.npy" for i in range(10)]
    assert [p.name for p in metas] == [f"metadata_{i}.parquet" for i in range(10)]
    keys, paths, parts = [], [], []
    for npy, meta in zip(npys, metas, strict=True):
        vectors = np.load(npy)
        table = pq.read_table(meta)
        assert vectors.dtype == np.dtype("<f4") and vectors.shape == (table.num_rows, WIDTH)
        assert table.schema.names == ["key", "image_path"]
        keys += table["key"].to_pylist()
        paths += table["image_path"].to_pylist()
        parts.append(vectors)
        # embedding-reader finds shape and dtype with a regular expression on the first line
        first = npy.read_bytes()[:300].split(b"\n")[0]
        assert re.search(r"'shape': \(([0-9]+), ([0-9]+)\)", str(first)).groups() == (
            str(len(vectors)), str(WIDTH))
        assert re.search(r"'descr': '([<f0-9]+)'", str(first)).group(1) == "<f4"
    assert [len(p) for p in parts] == [23] * 10
    check_rows(cached_rows(cache), keys, np.concatenate(parts), paths)
    # in the cache's stored order, which the block reader gives
    assert keys == [k.decode() for b in cache.blocks("fp", block_rows=50) for k in b.keys]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["rows"] == 230 and manifest["fingerprint"] == "fp"
    assert manifest["shards"] == [f"img_emb/{p.name}" for p in npys]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parquet_shards_hold_embedding_key_and_source(tmp_path):
    cache = filled(tmp_path / "emb.h5")
    out = tmp_path / "out"
    done = export_group(cache, "f", out, format="parquet", shard_rows=100, block_rows=64)
    assert done.shards == [f"img_emb/img_emb_{i}.parquet" for i in range(3)]
    tables = [pq.read_table(out / s) for s in done.shards]
    assert [t.num_rows for t in tables] == [100, 100, 30]
    assert tables[0].schema.field("embedding").type == pa.list_(pa.float32())
    table = pa.concat_tables(tables)
    vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    check_rows(cached_rows(cache), table["key"].to_pylist(), vectors,
               table["image_path"].to_pylist())


def test_cli_exports_and_refuses_a_folder_in_the_way(tmp_path, capsys):
    cache = filled(tmp_path / "emb.h5")
    out = tmp_path / "out"
    args = ["export", "--cache", str(cache.path), "--out", str(out), "--shard-rows", "1000", "-q"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.npy"]
    before = (out / "img_emb" / "img_emb_0.npy").read_bytes()

    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not empty" in err and "--overwrite" in err
    assert (out / "img_emb" / "img_emb_0.npy").read_bytes() == before

    assert main([*args, "--format", "parquet", "--overwrite"]) == 0  # an earlier export: replaced
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == ["img_emb_0.parquet"]
    assert not (out / "metadata").exists()

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["export", "--cache", str(cache.path), "--out", str(other), "--overwrite"]) == 1
    assert "is not a featx export" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "--cache", str(cache.path), "--out", str(empty), "-q"]) == 0
    assert (empty / MANIFEST).is_file()


def test_unknown_group_and_several_groups(tmp_path, capsys):
    cache = filled(tmp_path / "emb.h5", "aa11")
    cache.append("bb22", [key(1)], np.ones((1, 3), np.float32), ["x.png"])
    with pytest.raises(CacheGroupError, match="holds 2 groups"):
        export_group(cache, None, tmp_path / "out")
    assert main(["export", "--cache", str(cache.path), "--group", "cc", "--out",
                 str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "group 'cc' matches no group" in err and "aa11" in err
    assert not (tmp_path / "out").exists()
    done = export_group(cache, "bb", tmp_path / "out")
    assert np.load(tmp_path / "out" / done.shards[0]).tolist() == [[1.0, 1.0, 1.0]]


def test_damaged_cache_file_leaves_nothing(tmp_path, capsys):
    cache = filled(tmp_path / "emb.h5")
    segment = sorted(cache.segment_dir.glob("[!.]*.h5"))[-1]
    data = segment.read_bytes()
    out = tmp_path / "out"
    # Damaged after this object indexed it: the read fails mid-way, after shards were written.
    segment.write_bytes(data[:2048] + b"\0" * (len(data) - 2048))
    written = []
    with pytest.raises(FeatxError, match=r"could not be read.*Move it aside"):
        export_group(cache, None, out, shard_rows=50, block_rows=20,
                     progress=lambda n, total: written.append(n))
    assert sum(written) >= 100  # two shards were done
    # Truncated: a new process would skip the segment with a warning; an export that must hold
    # every row refuses instead.
    segment.write_bytes(data[: len(data) // 2])
    assert main(["export", "--cache", str(cache.path), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "damaged segment" in err and "Move it aside" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.h5", "emb.h5.lock",
                                                          "emb.h5.segments"]


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    cache = filled(tmp_path / "emb.h5")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(FeatxError, match=r"pip install 'featx\[parquet\]'"):
        export_group(cache, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_help_and_usage_errors(capsys, tmp_path):
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: featx export") and "--shard-rows" in out and "-q" in out
    assert main(["export", "--cache", "x.h5", "--out", str(tmp_path / "o"),
                 "--shard-rows", "0"]) == 2
    assert main(["export", "--cache", str(tmp_path / "none.h5"), "--out",
                 str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
