"""Tar shards as a source: members streamed in order, labels from sibling members, damaged
shards and members reported where they stopped, the same content keys as files."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile

import numpy as np
import pytest

from featx import TarShards, load_shards
from featx.exceptions import FeatxError
from tests.conftest import featx_main
from tests.sources_data import pngs, tiny_embedder, write_folder, write_shards, write_tar


def test_members_in_order_with_names_and_labels(tmp_path):
    images = pngs(7)
    write_shards(tmp_path / "shards", images, 3, labels=[str(i % 3 * 5) for i in range(7)])
    for source in (tmp_path / "shards", str(tmp_path / "shards" / "*.tar"),
                   [tmp_path / "shards" / f"shard-0000{s}.tar" for s in range(3)]):
        items = list(TarShards(source))
        assert [item.value for item in items] == images
    assert items[4].name.endswith("shard-00001.tar:000004.png")
    shards, y, classes = load_shards(tmp_path / "shards")
    assert classes == ["0", "5", "10"]  # class indices sort as numbers
    assert y.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert [i.label for i in shards] == [str(i % 3 * 5) for i in range(7)]


def test_json_field_labels_and_compressed_shards(tmp_path):
    images = pngs(3)
    members = []
    for i, data in enumerate(images):
        members += [(f"a/{i:04d}.jpg.json", b"{}"), (f"a/{i:04d}.png", data),
                    (f"a/{i:04d}.json", json.dumps({"label": ["cat", "dog"][i % 2]}).encode()),
                    (f"a/{i:04d}.txt", b"a caption")]
    write_tar(tmp_path / "s.tar.gz", members)
    shards, y, classes = load_shards(tmp_path / "s.tar.gz", label="json:label")
    assert [i.value for i in shards] == images
    assert (classes, y.tolist()) == (["cat", "dog"], [0, 1, 0])
    with pytest.raises(FeatxError, match=r"s\.tar\.gz:a/0000\.png has no label \(a \.cls member"):
        load_shards(tmp_path / "s.tar.gz")
    with pytest.raises(FeatxError, match="no tar shards at"):
        load_shards(str(tmp_path / "none-*.tar"))


@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT,
                                  tarfile.PAX_FORMAT])
def test_long_names_in_every_tar_format_and_a_damaged_header(tmp_path, form):
    images = pngs(2)
    names = ["d" * 90 + "/" + "e" * 60 + "/0001.png", "x/" + "f" * 120 + ".png"]
    if form == tarfile.USTAR_FORMAT:
        names[1] = "x/f.png"  # ustar holds long paths in its prefix field, not long names
    path = tmp_path / "long.tar"
    with tarfile.open(path, "w", format=form) as tf:
        tf.addfile(tarfile.TarInfo("folder"))  # not a file: skipped
        for name, data in zip(names, images, strict=True):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    items = list(TarShards(path))
    assert [(i.name, i.value) for i in items] == [(f"{path}:{n}", d)
                                                  for n, d in zip(names, images, strict=True)]
    raw = bytearray(path.read_bytes())
    at = raw.find(images[1]) - 512  # the second image's header
    raw[at + 130] ^= 0x01  # its size field: the checksum no longer matches
    path.write_bytes(bytes(raw))
    items = list(TarShards(path))
    assert items[0].value == images[0] and items[1].kind == "failed"
    assert "bad checksum" in items[1].value


def test_parts_are_small_references(tmp_path):
    images = pngs(6)
    write_shards(tmp_path, images, 2)
    shards = TarShards(tmp_path)
    parts = list(shards.parts())
    assert len(parts) == 3
    sent = [pickle.dumps(p) for p in parts]
    assert max(len(b) for b in sent) < 1000  # a path, not the images
    assert [i.value for p in sent for i in pickle.loads(p)] == images


def test_truncated_shard_gives_what_it_holds_then_one_failure(tmp_path):
    images = pngs(4)
    [path] = write_shards(tmp_path / "full", images, 4)
    raw = path.read_bytes()
    ends = []  # where each member's data ends
    offset = 0
    for size in (len(d) for d in images):
        offset += 512 + -(-size // 512) * 512
        ends.append(offset)
    mid = tmp_path / "mid.tar"
    mid.write_bytes(raw[: ends[1] + 700])  # inside the third member's data
    items = list(TarShards(mid))
    assert [i.value for i in items[:2]] == images[:2]
    assert items[2].kind == "failed" and items[2].name == f"{mid}:000002.png"
    assert "truncated or damaged shard" in items[2].value
    edge = tmp_path / "edge.tar"
    edge.write_bytes(raw[: ends[2]])  # exactly after a member: no end-of-archive blocks
    items = list(TarShards(edge))
    assert [i.value for i in items[:3]] == images[:3]
    assert items[3].kind == "failed" and "after member 000002.png" in items[3].value
    _, y, _ = load_shards(edge, label=None)
    assert y is None


def test_keys_are_the_bytes_so_a_folder_cached_image_is_a_hit_from_a_shard(tmp_path):
    images = pngs(6)
    files = write_folder(tmp_path / "files", images)
    write_shards(tmp_path / "shards", images, 4)
    items = list(TarShards(tmp_path / "shards"))
    assert [i.key() for i in items] == [hashlib.sha256(d).hexdigest() for d in images]
    cache = tmp_path / "emb.h5"
    from_files = tiny_embedder(tmp_path, cache=cache).fit_transform([str(p) for p in files])
    embedder = tiny_embedder(tmp_path, cache=cache)
    from_shards = embedder.transform(TarShards(tmp_path / "shards"))
    assert (embedder.report_.n_hits, embedder.report_.n_embedded) == (6, 0)
    np.testing.assert_array_equal(from_shards, from_files)


def test_corrupt_member_and_truncated_shard_are_reported_and_remembered(tmp_path):
    images = pngs(5)
    images[1] = b"\x89PNG not really"
    paths = write_shards(tmp_path / "shards", images, 3)
    paths[1].write_bytes(paths[1].read_bytes()[:700])  # the second shard breaks off
    embedder = tiny_embedder(tmp_path, cache=tmp_path / "emb.h5", on_error="skip")
    report = embedder.embed_to_cache(TarShards(tmp_path / "shards"))
    failed = {f.source: f.reason for f in report.failures}
    assert report.n_items == 4 and report.n_embedded == 2
    assert "not an image file" in failed[f"{paths[0]}:000001.png"]
    assert "truncated or damaged shard" in failed[f"{paths[1]}:000003.png"]
    again = embedder.embed_to_cache(TarShards(tmp_path / "shards"))
    assert again.n_hits == 2 and "remembered" in {
        f.source: f.reason for f in again.failures}[f"{paths[0]}:000001.png"]


def test_featx_embed_and_heads_on_shards(tmp_path):
    images = pngs(12, seed=3)
    labels = ["a" if i % 2 else "b" for i in range(12)]
    write_shards(tmp_path / "shards", images, 5, labels=labels)
    tiny_embedder(tmp_path)  # writes tiny.keras
    backbone = ("--backbone", tmp_path / "tiny.keras", "--input-size", "16",
                "--cache", tmp_path / "emb.h5")
    embedded = featx_main("embed", str(tmp_path / "shards" / "shard-*.tar"), *backbone)
    assert embedded.returncode == 0, embedded.stderr
    assert "embedded 12, already cached 0, failed 0 of 12 images" in embedded.stdout
    tuned = featx_main("heads", tmp_path / "shards", "--cache", tmp_path / "emb.h5",
                       "--heads", "logreg", "--cv", "2", "--out", tmp_path / "out")
    assert tuned.returncode == 0, tuned.stderr
    assert "12 images in 2 classes" in tuned.stdout and "12 embeddings from the cache" in \
        tuned.stdout
    predicted = featx_main("predict", tmp_path / "out" / "model.featx",
                           tmp_path / "shards" / "shard-00002.tar")
    assert predicted.returncode == 0, predicted.stderr
    rows = predicted.stdout.splitlines()
    assert len(rows) == 3 and rows[1].startswith(f"{tmp_path / 'shards' / 'shard-00002.tar'}:"
                                                 "000010.png,")
