"""Images at URLs: an S3-compatible server (moto's, on a free port, as s3fs's own tests run it)
and a local HTTP server, read through fsspec; shards, tables, folders, CSV files and single
images there; 404s and dropped connections reported per item; credentials never printed."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from featx import ParquetImages, TarShards, load_image_csv, load_image_folder
from featx.embed.images import as_items
from featx.exceptions import FeatxError
from tests.conftest import featx_main
from tests.sources_data import pngs, tiny_embedder, write_folder, write_parquet, write_shards


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files from a folder; ``/drop/NAME`` promises NAME's length and sends half, then closes."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith("/drop/"):
            data = Path(self.directory, self.path[len("/drop/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A local HTTP server over a folder: (base URL, folder)."""
    root = tmp_path_factory.mktemp("web")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_shards_tables_and_folders_in_a_bucket_hit_what_files_cached(s3, tmp_path):
    images = pngs(8, seed=5)
    files = write_folder(tmp_path / "files", images)
    for shard in write_shards(tmp_path / "shards", images, 3):
        s3.put(str(shard), f"featx/shards/{shard.name}")
    write_parquet(tmp_path / "part-0000.parquet", {"image": images})
    s3.put(str(tmp_path / "part-0000.parquet"), "featx/table/part-0000.parquet")
    for i, f in enumerate(files):
        s3.put(str(f), f"featx/photos/{'ab'[i % 2]}/{f.name}")
    shards = TarShards("s3://featx/shards/")
    assert [i.name for i in shards][3] == "s3://featx/shards/shard-00001.tar:000003.png"
    urls, y, classes = load_image_folder("s3://featx/photos")
    assert classes == ["a", "b"] and urls[0] == "s3://featx/photos/a/000000.png"
    cache = tmp_path / "emb.h5"
    expected = tiny_embedder(tmp_path, cache=cache).fit_transform([str(p) for p in files])
    embedder = tiny_embedder(tmp_path, cache=cache)
    for source in (shards, ParquetImages("s3://featx/table/*.parquet")):
        np.testing.assert_array_equal(embedder.transform(source), expected)
        assert embedder.report_.n_hits == 8
    order = np.argsort([u.rsplit("/", 1)[1] for u in urls])
    rows = tiny_embedder(tmp_path).transform(urls)  # no cache: decoded from the bucket
    np.testing.assert_allclose(rows[order], expected, rtol=1e-6)


def test_featx_embed_from_a_bucket_names_what_failed(s3, tmp_path):
    images = pngs(5, seed=6)
    images[2] = b"not an image"
    for shard in write_shards(tmp_path / "shards", images, 5):
        s3.put(str(shard), f"featx/bad/{shard.name}")
    tiny_embedder(tmp_path)
    result = featx_main("embed", "s3://featx/bad/", "--backbone", tmp_path / "tiny.keras",
                        "--input-size", "16", "--cache", tmp_path / "emb.h5")
    assert result.returncode == 0, result.stderr
    assert "embedded 4, already cached 0, failed 1 of 5 images" in result.stdout
    assert "s3://featx/bad/shard-00000.tar:000002.png: not an image file" in result.stdout
    assert "featx-secret" not in result.stdout + result.stderr
    [missing] = TarShards("s3://featx/bad/no-such-shard.tar")
    assert missing.kind == "failed" and "not found" in missing.value


def test_http_images_csv_404_and_a_dropped_connection(web, tmp_path):
    base, root = web
    images = pngs(4, seed=7)
    write_folder(root / "img", images)
    (root / "list.csv").write_text(
        "path,label\nimg/000000.png,x\nimg/000001.png,y\n"
        f"{base}/img/000002.png,x\nimg/missing.png,y\n")
    paths, y, classes = load_image_csv(f"{base}/list.csv")
    assert paths[:2] == [f"{base}/img/000000.png", f"{base}/img/000001.png"]
    assert (y.tolist(), classes) == ([0, 1, 0, 1], ["x", "y"])
    secret = base.replace("http://", "http://user:hunter2@")
    urls = [*paths, f"{secret}/drop/img/000003.png"]
    embedder = tiny_embedder(tmp_path, cache=tmp_path / "emb.h5", on_error="skip")
    with pytest.warns(UserWarning, match="skipped 2 of 5"):
        rows = embedder.fit_transform(urls)
    failed = {f.source: f.reason for f in embedder.report_.failures}
    assert rows.shape[0] == 3 and failed[f"{base}/img/missing.png"].startswith("not found")
    dropped = failed[f"{base}/drop/img/000003.png"]  # the name carries no password
    assert dropped.startswith("could not be read:")
    assert not any("hunter2" in f.source + f.reason for f in embedder.report_.failures)
    [item] = as_items([f"{base}/img/000001.png"])[0]
    assert item.key() == __import__("hashlib").sha256(images[1]).hexdigest()


def test_dropped_shard_download_and_missing_storage_library(web, tmp_path):
    base, root = web
    write_shards(root / "s", pngs(4, seed=8), 4)
    items = list(TarShards(f"{base}/drop/s/shard-00000.tar"))
    assert items[-1].kind == "failed" and "shard" in items[-1].value
    assert all(i.kind == "bytes" for i in items[:-1])
    with pytest.raises(FeatxError, match=r"pip install 'featx\[cloud\]'"):
        list(TarShards("gs://bucket/shard.tar"))  # gcsfs is not installed here
