"""featx neighbors: the nearest cached images to a query, as a table and an HTML page."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx.cache.failure import Failure
from featx.cache.store import EmbeddingCache
from tests.conftest import featx_main, save_tiny_convnet


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight small images embedded by a tiny saved model into a cache."""
    base = tmp_path_factory.mktemp("neighbors")
    save_tiny_convnet(base / "tiny.keras", 16)
    rng = np.random.default_rng(0)
    (base / "images").mkdir()
    for i in range(8):
        arr = rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
        arr[..., i % 3] = 30 * i
        Image.fromarray(arr).save(base / "images" / f"img{i}.png")
    done = featx_main("embed", base / "images", "--backbone", base / "tiny.keras",
                      "--input-size", "16", "--cache", base / "emb.h5", "-q")
    assert done.returncode == 0, done.stderr
    return base


def test_a_cached_image_finds_itself_first(embedded, tmp_path):
    query = tmp_path / "copy of img3.png"
    shutil.copy(embedded / "images" / "img3.png", query)
    out = tmp_path / "out"
    done = featx_main("neighbors", query, "--cache", embedded / "emb.h5", "-k", "3",
                      "--out", out)
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip().splitlines()
    assert "8 cached images" in said[0]
    lines = said[1:]
    assert lines[0].split() == ["query", "rank", "similarity", "neighbour"]
    first = lines[1].split()
    assert first[-1].endswith("img3.png") and float(first[-2]) == pytest.approx(1.0, abs=1e-4)
    assert len(lines) == 5 and lines[4].startswith("wrote ")
    assert (embedded / "emb.h5.index").is_dir()  # kept beside the cache
    csv_lines = (out / "neighbors.csv").read_text().splitlines()
    assert csv_lines[0] == "query,rank,similarity,neighbor" and len(csv_lines) == 4
    page = (out / "neighbors.html").read_text()
    assert page.count("data:image/png;base64") == 4 and "img3.png" in page
    assert sorted(p.name for p in out.iterdir()) == ["neighbors.csv", "neighbors.html"]


def test_a_folder_of_queries_with_an_unreadable_image(embedded, tmp_path):
    folder = tmp_path / "queries"
    folder.mkdir()
    shutil.copy(embedded / "images" / "img1.png", folder / "a.png")
    (folder / "b.png").write_bytes(b"not a PNG at all")
    done = featx_main("neighbors", folder, "--cache", embedded / "emb.h5", "-k", "20")
    assert done.returncode == 0, done.stderr
    assert "b.png" in done.stdout and "left out" in done.stdout
    table = [line for line in done.stdout.splitlines() if line.startswith(str(folder / "a.png"))]
    assert len(table) == 8  # -k above the cached images: every one, once
    only_bad = tmp_path / "bad.png"
    only_bad.write_bytes(b"nope")
    done = featx_main("neighbors", only_bad, "--cache", embedded / "emb.h5")
    assert done.returncode == 1 and "no query image could be read" in done.stderr


def test_bad_input_is_one_line(embedded, tmp_path):
    done = featx_main("neighbors", tmp_path / "missing.png", "--cache", embedded / "emb.h5")
    assert done.returncode == 1 and "does not exist" in done.stderr
    query = embedded / "images" / "img0.png"
    done = featx_main("neighbors", query, "--cache", tmp_path / "none.h5")
    assert done.returncode == 1 and "featx embed SRC --backbone NAME --cache" in done.stderr
    done = featx_main("neighbors", query, "--cache", embedded / "emb.h5", "--group", "zzz")
    assert done.returncode == 1 and "matches no group" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    empty = EmbeddingCache(tmp_path / "failed.h5")
    empty.append("fp0", [], np.zeros((0, 4), np.float32), [],
                 failed=[Failure(source="x.png", reason="bad", key="a" * 64)])
    done = featx_main("neighbors", query, "--cache", empty.path)
    assert done.returncode == 1 and "holds no embeddings (1 failed item(s) only)" in done.stderr
