"""Parquet and Arrow tables as a source: image bytes or Hugging Face's {bytes, path} struct,
label and id columns, record batches, bad rows named by row, clear errors."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pyarrow as pa
import pytest

from featx import ParquetImages, load_parquet
from featx.exceptions import FeatxError
from tests.conftest import featx_main
from tests.sources_data import pngs, tiny_embedder, write_folder, write_parquet


def test_bytes_and_hugging_face_struct_with_labels_and_ids(tmp_path):
    images = pngs(7)
    write_parquet(tmp_path / "parts" / "part-0000.parquet",
                  {"image": images[:4], "label": [2, 0, 1, 2]}, row_group_size=3)
    write_parquet(tmp_path / "parts" / "part-0001.parquet",
                  {"image": [{"bytes": b, "path": None} for b in images[4:]],
                   "label": [0, 1, 1]})
    table, y, classes = load_parquet(tmp_path / "parts")
    assert table.count == 7
    items = list(table)
    assert [i.value for i in items] == images
    assert items[5].name == f"{tmp_path / 'parts' / 'part-0001.parquet'}:row 1"
    assert (y.tolist(), classes) == ([2, 0, 1, 2, 0, 1, 1], ["0", "1", "2"])
    assert [i.key() for i in items] == [hashlib.sha256(d).hexdigest() for d in images]
    named = ParquetImages(str(tmp_path / "parts" / "*.parquet"), id_column="label")
    assert [i.name.rsplit(":", 1)[1] for i in named][:2] == ["2", "0"]
    assert len(list(table.parts())) == 2


def test_class_label_names_paths_arrow_files_and_tables_in_memory(tmp_path):
    images = pngs(3)
    files = write_folder(tmp_path / "files", images)
    hf = {"info": {"features": {"label": {"names": ["cat", "dog"], "_type": "ClassLabel"},
                                "image": {"_type": "Image"}}}}
    write_parquet(tmp_path / "t.parquet",
                  {"image": [{"bytes": None, "path": f"files/{p.name}"} for p in files],
                   "label": [1, 0, 1]}, metadata={b"huggingface": json.dumps(hf).encode()})
    table, y, classes = load_parquet(tmp_path / "t.parquet")
    assert (classes, y.tolist()) == (["cat", "dog"], [1, 0, 1])
    assert [i.kind for i in table] == ["path"] * 3 and [i.key() for i in table] == [
        hashlib.sha256(d).hexdigest() for d in images]
    arrow = pa.table({"img": images, "y": ["b", "a", "b"]})
    with pa.OSFile(str(tmp_path / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, arrow.schema) as writer:
        writer.write_table(arrow, max_chunksize=2)
    streamed, y, classes = load_parquet(tmp_path / "data-00000-of-00001.arrow",
                                        image_column="img", label_column="y")
    assert [i.value for i in streamed] == images and y.tolist() == [1, 0, 1]
    in_memory, y, _ = load_parquet(arrow, image_column="img", label_column="y")
    assert in_memory.count == 3 and [i.name for i in in_memory][2] == "table:row 2"
    rows = tiny_embedder(tmp_path).fit_transform(arrow.rename_columns(["image", "y"]))
    np.testing.assert_allclose(rows, tiny_embedder(tmp_path).transform(
        [str(p) for p in files]), rtol=1e-6)


def test_bad_rows_are_named_and_the_run_goes_on(tmp_path):
    images = pngs(4)
    write_parquet(tmp_path / "part-0003.parquet",
                  {"image": [images[0], b"GIF89a broken", None, images[3]]})
    embedder = tiny_embedder(tmp_path, cache=tmp_path / "emb.h5", on_error="skip")
    report = embedder.embed_to_cache(ParquetImages(tmp_path / "part-0003.parquet"))
    failed = {f.source: f.reason for f in report.failures}
    where = str(tmp_path / "part-0003.parquet")
    assert report.n_embedded == 2 and set(failed) == {f"{where}:row 1", f"{where}:row 2"}
    assert "no image in this row" in failed[f"{where}:row 2"]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not a parquet file")
    [item] = ParquetImages(broken)
    assert item.kind == "failed" and "not a Parquet or Arrow file" in item.value


def test_missing_column_and_missing_extra_say_how_to_fix(tmp_path, monkeypatch):
    write_parquet(tmp_path / "t.parquet", {"jpg": pngs(1), "cls": [0]})
    with pytest.raises(FeatxError, match=r"has no column 'image'; its columns are \['jpg', "
                       r"'cls'\]\. Name yours with image_column="):
        load_parquet(tmp_path / "t.parquet")
    result = featx_main("embed", tmp_path / "t.parquet", "--backbone", "mobilenet",
                        "--cache", tmp_path / "e.h5")
    assert result.returncode != 0
    assert "has no column 'image'; its columns are ['jpg', 'cls']" in result.stderr
    assert "--image-column" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(FeatxError, match=r"pip install 'featx\[parquet\]'"):
        load_parquet(tmp_path / "t.parquet", image_column="jpg", label_column="cls")
