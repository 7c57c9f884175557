"""Streams of unknown length through the engine: read a chunk at a time (nothing listed up
front), rows in input order, one progress bar with a running count; folders listed lazily."""

from __future__ import annotations

import numpy as np

from featx.cache.store import EmbeddingCache
from featx.embed import engine
from featx.embed.item import Item
from featx.embed.listing import FolderImages
from featx.embed.stream import ChainedStream, ItemList
from tests.sources_data import pngs, tiny_embedder, write_folder


def test_a_generator_is_embedded_a_chunk_at_a_time_in_order(tmp_path, monkeypatch, capsys):
    images = pngs(10, seed=9)
    monkeypatch.setattr(engine, "CHUNK", 4)
    embedder = tiny_embedder(tmp_path, cache=tmp_path / "emb.h5", verbose=True)
    expected = tiny_embedder(tmp_path).fit_transform(images)
    group = embedder.backbone_config().fingerprint
    held_at_eight: list[int] = []

    def items():
        for i, data in enumerate(images):
            if i == 8:  # the third chunk, read ahead while the second is embedded: the first
                # (or both) committed before it was read
                cache = EmbeddingCache(tmp_path / "emb.h5")
                held_at_eight.append(int(cache.contains(
                    group, [Item("bytes", d, "").key() for d in images]).sum()))
            yield Item("bytes", data, f"gen[{i}]")

    rows = embedder.transform(items())
    np.testing.assert_allclose(rows, expected, rtol=1e-6)
    assert held_at_eight in ([4], [8]) and embedder.report_.n_items == 10
    assert "img" in capsys.readouterr().err  # the bar counts items though their number is unknown
    embedder.set_params(on_error="skip")
    report = embedder.embed_to_cache(iter([Item("bytes", images[0], "again"),
                                           Item("failed", "the shard broke off", "s.tar:9.png")]))
    assert (report.n_items, report.n_hits, report.n_failed) == (2, 1, 1)
    assert report.failures[0].source == "s.tar:9.png"


def test_folders_are_walked_lazily_and_streams_chain(tmp_path):
    images = pngs(5)
    write_folder(tmp_path / "flat", images[:2])
    write_folder(tmp_path / "classes" / "b", images[2:4])
    write_folder(tmp_path / "classes" / "a" / "deeper", images[4:])
    flat = FolderImages(tmp_path / "flat")
    walk = iter(FolderImages(tmp_path / "classes"))
    first = next(walk)  # nothing else has been read yet
    assert (first.label, first.value) == ("a", str(tmp_path / "classes/a/deeper/000000.png"))
    assert [i.label for i in walk] == ["b", "b"]
    chained = ChainedStream([flat, ItemList([Item("bytes", images[0], "x")], "one")])
    assert chained.count is None and len(list(chained)) == 3
    assert ChainedStream([ItemList([], "none")]).count == 0


def test_a_keyed_item_keeps_the_key_and_name_not_the_bytes():
    import pytest

    from featx.embed.images import load_pixels
    from featx.exceptions import ImageLoadError

    item = Item("bytes", pngs(1)[0], "s.tar:1.png", "cat")
    keyed = item.keyed()
    assert (keyed.kind, keyed.value, keyed.name, keyed.label) == ("key", item.key(),
                                                                  "s.tar:1.png", "cat")
    assert keyed.key() == item.key() and keyed.keyed() is keyed
    with pytest.raises(ImageLoadError, match="only its content key was kept"):
        load_pixels(keyed, (8, 8))
