"""Image sources: as_items, content keys, decoding and resizing, batching, folders and CSV files."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from featx.embed.images import (
    Item,
    as_items,
    batched,
    load_image_csv,
    load_image_folder,
    load_pixels,
)
from featx.exceptions import FeatxError, ImageLoadError


def save(path: Path, arr: np.ndarray, **kwargs) -> Path:
    """Write ``arr`` as an image file (format from the extension) and return its path."""
    Image.fromarray(arr).save(path, **kwargs)
    return path


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def path_item(path: Path) -> Item:
    items, _ = as_items([path])
    return items[0]


def solid(h: int, w: int, colour=(10, 20, 30)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


@pytest.fixture
def small_png(tmp_path: Path, rng: np.random.Generator) -> Path:
    return save(tmp_path / "small.png", rng.integers(0, 256, (6, 7, 3), dtype=np.uint8))


# ---- as_items -------------------------------------------------------------------------------


def test_as_items_str_and_pathlib_paths(tmp_path: Path) -> None:
    names = [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    for X in (names, [Path(n) for n in names], tuple(names)):
        items, kind = as_items(X)
        assert kind == "images"
        assert [(i.kind, i.value, i.name) for i in items] == [("path", n, n) for n in names]


def test_as_items_bytes_and_pil_images() -> None:
    data = png_bytes(solid(2, 2))
    items, kind = as_items([data, bytearray(data)])
    assert kind == "images"
    assert [(i.kind, i.name) for i in items] == [("bytes", "bytes[0]"), ("bytes", "bytes[1]")]
    assert items[1].value == data and isinstance(items[1].value, bytes)

    img = Image.new("RGB", (3, 2))
    items, kind = as_items([img, img])
    assert kind == "images"
    assert [(i.kind, i.name) for i in items] == [("pil", "pil[0]"), ("pil", "pil[1]")]
    assert items[0].value is img


@pytest.mark.parametrize(
    "shape", [(3, 5, 6), (3, 5, 6, 1), (3, 5, 6, 3), (3, 5, 6, 4)], ids=str
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.uint16])
def test_as_items_image_arrays(shape, dtype) -> None:
    X = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    items, kind = as_items(X)
    assert kind == "images"
    assert [i.name for i in items] == ["array[0]", "array[1]", "array[2]"]
    assert all(i.kind == "array" for i in items)
    np.testing.assert_array_equal(items[2].value, X[2])


def test_as_items_list_of_arrays() -> None:
    arrays = [np.zeros((4, 5, 3), np.uint8), np.ones((6, 2), np.float32)]
    items, kind = as_items(arrays)
    assert kind == "images"
    assert [i.value.shape for i in items] == [(4, 5, 3), (6, 2)]


def test_as_items_two_d_numeric_array_is_vectors() -> None:
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    items, kind = as_items(X)
    assert kind == "vectors"
    assert [i.name for i in items] == [f"row[{i}]" for i in range(4)]
    np.testing.assert_array_equal(items[3].value, [9, 10, 11])


def test_as_items_pandas_series_and_one_column_frame(tmp_path: Path) -> None:
    names = [str(tmp_path / f"{i}.png") for i in range(3)]
    for X in (pd.Series(names, name="path"), pd.DataFrame({"path": names}),
              pd.Series(names, index=[10, 5, 7]), pd.Series(names, dtype="string")):
        items, kind = as_items(X)
        assert kind == "images"
        assert [i.value for i in items] == names
        assert all(i.kind == "path" for i in items)


def test_as_items_multi_column_frame_names_the_columns() -> None:
    X = pd.DataFrame({"path": ["a.png"], "label": ["cat"]})
    with pytest.raises(ValueError, match=r"got 2 columns \(\['path', 'label'\]\)"):
        as_items(X)


@pytest.mark.parametrize("single", ["a.png", b"\x89PNG", Path("a.png")])
def test_as_items_single_path_or_bytes_asks_for_a_list(single) -> None:
    with pytest.raises(TypeError, match=r"Wrap it in a list"):
        as_items(single)


def test_as_items_single_pil_image_asks_for_a_list() -> None:
    with pytest.raises(TypeError, match=r"one PIL image. Pass \[image\]"):
        as_items(Image.new("RGB", (2, 2)))


def test_as_items_unsupported_item_names_its_position() -> None:
    with pytest.raises(TypeError, match=r"item 2 is a int; expected a path"):
        as_items(["a.png", b"bytes", 3])
    with pytest.raises(TypeError, match=r"item 0 is a dict"):
        as_items([{"path": "a.png"}])


@pytest.mark.parametrize("shape", [(2, 4, 4, 5), (2, 4, 4, 3, 1), (2, 4, 4, 2)], ids=str)
def test_as_items_wrong_rank_names_the_expected_shapes(shape) -> None:
    expected = re.escape("(N, H, W), (N, H, W, 1) or (N, H, W, 3)")
    with pytest.raises(ValueError, match=f"{expected}.*got shape {re.escape(str(shape))}"):
        as_items(np.zeros(shape, np.uint8))


def test_as_items_one_d_array_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1-D array of shape \(5,\)"):
        as_items(np.zeros(5))


def test_as_items_complex_array_is_refused() -> None:
    with pytest.raises(ValueError, match="complex data is not supported"):
        as_items(np.zeros((2, 3, 3), np.complex64))


# ---- Item.key -------------------------------------------------------------------------------


def test_key_depends_on_content_only(tmp_path: Path) -> None:
    data = png_bytes(solid(4, 4))
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "copy.png").write_bytes(data)
    changed = bytearray(data)
    changed[-20] ^= 1

    k = Item("bytes", data, "x").key()
    assert len(k) == 64 and int(k, 16) >= 0
    assert Item("bytes", bytes(data), "other name").key() == k
    assert Item("bytes", bytes(changed), "x").key() != k
    assert path_item(tmp_path / "a.png").key() == k  # same file via path and via bytes
    assert path_item(tmp_path / "copy.png").key() == k
    assert as_items([data])[0][0].key() == k


def test_key_of_arrays_includes_shape_and_dtype() -> None:
    a = np.arange(24, dtype=np.uint8).reshape(4, 6)
    keys = {
        Item("array", a, "a").key(),
        Item("array", a.reshape(6, 4), "a").key(),
        Item("array", a.reshape(4, 6, 1), "a").key(),
        Item("array", a.view(np.int8), "a").key(),
        Item("array", np.arange(6, dtype=np.uint32).reshape(2, 3), "a").key(),
    }
    assert len(keys) == 5
    assert Item("array", a.copy(), "b").key() == Item("array", a, "a").key()
    # A non-contiguous view keys like its contiguous copy.
    assert Item("array", a[:, ::2], "a").key() == Item("array", a[:, ::2].copy(), "a").key()


def test_key_of_pil_images() -> None:
    a = Image.new("RGB", (4, 3), (1, 2, 3))
    assert Item("pil", a.copy(), "x").key() == Item("pil", a, "y").key()
    assert Item("pil", Image.new("RGB", (3, 4), (1, 2, 3)), "x").key() != Item("pil", a, "x").key()
    assert Item("pil", Image.new("RGB", (4, 3), (1, 2, 4)), "x").key() != Item("pil", a, "x").key()


def test_key_of_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageLoadError, match=r"nope\.png: file not found") as info:
        path_item(missing).key()
    assert info.value.source == str(missing)
    with pytest.raises(ImageLoadError, match="is a directory"):
        path_item(tmp_path).key()


# ---- load_pixels ----------------------------------------------------------------------------


def test_load_pixels_shape_dtype_and_range(small_png: Path) -> None:
    item = path_item(small_png)
    out = load_pixels(item, (5, 9))
    assert out.shape == (5, 9, 3) and out.dtype == np.uint8  # decoded pixels stay bytes
    assert 0 <= out.min() and out.max() <= 255
    # At its own size nothing is resampled: the pixels come back as they were.
    same = load_pixels(item, (6, 7))
    np.testing.assert_array_equal(same, np.asarray(Image.open(small_png), np.float32))


def test_load_pixels_from_bytes_and_pil_match_path(small_png: Path) -> None:
    want = load_pixels(path_item(small_png), (4, 4))
    np.testing.assert_array_equal(load_pixels(Item("bytes", small_png.read_bytes(), "b"), (4, 4)),
                                  want)
    with Image.open(small_png) as img:
        img.load()
        np.testing.assert_array_equal(load_pixels(Item("pil", img, "p"), (4, 4)), want)


def test_grey_image_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    out = load_pixels(path_item(save(tmp_path / "g.png", grey)), (4, 5))
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_channels_one(tmp_path: Path) -> None:
    rgb = solid(3, 4, (255, 0, 0))
    out = load_pixels(path_item(save(tmp_path / "r.png", rgb)), (2, 2), channels=1)
    assert out.shape == (2, 2, 1)
    np.testing.assert_allclose(out, 76, atol=1)  # ITU-R 601 luma of pure red
    grey = load_pixels(Item("array", np.full((3, 3), 9, np.uint8), "a"), (3, 3), channels=1)
    assert grey.shape == (3, 3, 1) and (grey == 9).all()


def test_transparent_pixels_composite_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[..., 3] = [[0, 255], [255, 128]]  # top-left fully transparent, bottom-right half
    out = load_pixels(path_item(save(tmp_path / "t.png", rgba)), (2, 2))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])
    assert out[1, 1, 0] == 255 and 120 <= out[1, 1, 1] <= 135  # half-way to white

    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), mode="LA")
    np.testing.assert_array_equal(load_pixels(Item("pil", la, "la"), (1, 2))[0, :, 0], [255, 0])


def test_palette_transparency_composites_onto_white(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png", transparency=0)
    out = load_pixels(path_item(tmp_path / "p.png"), (1, 2))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 255]])


def test_sixteen_bit_png_is_scaled_to_0_255(tmp_path: Path) -> None:
    arr = np.array([[0, 65535], [32896, 257 * 10]], np.uint16)
    path = save(tmp_path / "g16.png", arr)
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    out = load_pixels(path_item(path), (2, 2))
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 0], [[0, 255], [128, 10]], atol=1)


def test_cmyk_jpeg_decodes_to_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as img:
        assert img.mode == "CMYK"
    out = load_pixels(path_item(tmp_path / "c.jpg"), (4, 4))
    assert out.shape == (4, 4, 3)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), [255, 0, 0], atol=8)  # red


def _halves(h: int = 10, w: int = 20) -> np.ndarray:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, w // 2 :] = 255  # left half black, right half white
    return arr


def _save_with_orientation(path: Path, arr: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(path, arr, exif=exif, quality=95)


def test_exif_orientation_180_is_honoured(tmp_path: Path) -> None:
    path = _save_with_orientation(tmp_path / "o3.jpg", _halves(), 3)
    out = load_pixels(path_item(path), (10, 20))[..., 0]
    assert out[:, :8].min() > 200  # the white half is now on the left
    assert out[:, 12:].max() < 50
    plain = load_pixels(path_item(save(tmp_path / "plain.jpg", _halves(), quality=95)),
                        (10, 20))[..., 0]
    assert plain[:, :8].max() < 50


def test_exif_orientation_90_turns_the_image(tmp_path: Path) -> None:
    # Stored 20 wide x 10 high; orientation 6 shows it 10 wide x 20 high, black on top.
    path = _save_with_orientation(tmp_path / "o6.jpg", _halves(), 6)
    out = load_pixels(path_item(path), (20, 10))[..., 0]
    assert out[:8].max() < 50
    assert out[12:].min() > 200
    # center_crop into a tall target keeps the middle of the *displayed* (tall) image.
    crop = load_pixels(path_item(path), (4, 2), resize="center_crop")[..., 0]
    assert crop.shape == (4, 2)
    assert crop[0].max() < 100 and crop[-1].min() > 150


def test_large_jpeg_loads_through_draft_mode(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1500, 0:2000]
    arr = np.stack([xx * 255 // 1999, yy * 255 // 1499, np.full_like(xx, 90)], -1)
    arr = arr.astype(np.uint8)
    path = save(tmp_path / "big.jpg", arr, quality=90)

    out = load_pixels(path_item(path), (64, 64))
    assert out.shape == (64, 64, 3)
    plain = np.asarray(Image.fromarray(arr).resize((64, 64), Image.Resampling.BILINEAR),
                       np.float32)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), plain.mean(axis=(0, 1)), atol=3)
    assert np.abs(out - plain).mean() < 4
    assert out[0, 0, 0] < 20 and out[0, -1, 0] > 235  # the gradient runs the right way


def test_center_crop_keeps_the_centre(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 10:30] = 255  # a white centre square 20x20 in a wide black image
    item = path_item(save(tmp_path / "wide.png", arr))
    crop = load_pixels(item, (10, 10), resize="center_crop")
    assert crop.min() == 255
    squeezed = load_pixels(item, (10, 10))  # a plain resize keeps the black sides
    assert squeezed[:, 0].max() < 50 and squeezed[:, 5].min() == 255

    tall = np.zeros((40, 20), np.uint8)
    tall[10:30] = 200
    out = load_pixels(Item("array", tall.astype(np.float32), "f"), (5, 5), resize="center_crop")
    np.testing.assert_allclose(out, 200, atol=1e-3)
    out = load_pixels(Item("array", tall, "u"), (5, 5), resize="center_crop")
    assert (out == 200).all()


def test_truncated_jpeg_names_the_file(tmp_path: Path, rng: np.random.Generator) -> None:
    good = save(tmp_path / "good.jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg: .*truncated") as info:
        load_pixels(path_item(cut), (8, 8))
    assert info.value.source == str(cut)
    with pytest.raises(ImageLoadError, match=r"bytes\[0\]: .*truncated"):
        load_pixels(as_items([cut.read_bytes()])[0][0], (8, 8))


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n"], ids=["empty", "text"])
def test_non_image_file_names_the_file_and_a_reason(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=r"photo\.jpg: not an image file Pillow can read"):
        load_pixels(path_item(path), (4, 4))


def test_missing_file_in_load_pixels(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"gone\.png: file not found"):
        load_pixels(path_item(tmp_path / "gone.png"), (4, 4))


def test_max_pixels_refuses_large_images(tmp_path: Path) -> None:
    path = save(tmp_path / "big.png", solid(30, 40))
    with pytest.raises(ImageLoadError, match=r"big\.png: image is 40x30 pixels, over the limit "
                                             r"of 1000"):
        load_pixels(path_item(path), (4, 4), max_pixels=1000)
    assert load_pixels(path_item(path), (4, 4), max_pixels=1200).shape == (4, 4, 3)


def _open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    return {os.path.realpath(fd) for fd in fds.iterdir()} if fds.is_dir() else set()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_failed_loads_close_the_file(tmp_path: Path) -> None:
    big = save(tmp_path / "big.png", solid(30, 40))
    cut = tmp_path / "cut.png"
    cut.write_bytes(big.read_bytes()[:60])
    for path, kwargs in ((big, {"max_pixels": 10}), (cut, {})):
        with pytest.raises(ImageLoadError) as info:  # the traceback keeps the frame alive
            load_pixels(path_item(path), (4, 4), **kwargs)
        assert str(path.resolve()) not in _open_files(), info.value


def test_one_pixel_image(tmp_path: Path) -> None:
    path = save(tmp_path / "one.png", solid(1, 1, (7, 8, 9)))
    out = load_pixels(path_item(path), (3, 2))
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out, np.broadcast_to([7, 8, 9], (3, 2, 3)))
    assert load_pixels(path_item(path), (1, 1), resize="center_crop").shape == (1, 1, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_array_with_nan_is_refused(bad: float) -> None:
    arr = np.full((4, 4, 3), 100.0, np.float32)
    arr[1, 2, 0] = bad
    with pytest.raises(ImageLoadError, match=r"array\[0\]: .*NaN"):
        load_pixels(as_items(arr[None])[0][0], (2, 2))


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 3)], ids=str)
def test_float_array_resize_keeps_values(shape) -> None:
    item = Item("array", np.full(shape, 200.0, np.float64), "f")
    out = load_pixels(item, (9, 4))
    assert out.shape == (9, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 200.0, rtol=1e-6)
    np.testing.assert_allclose(load_pixels(item, (3, 3), channels=1), 200.0, rtol=1e-5)


def test_float_array_values_are_not_rescaled() -> None:
    arr = np.array([[0.0, 300.0], [-5.0, 17.25]], np.float32)
    out = load_pixels(Item("array", arr, "f"), (2, 2))
    np.testing.assert_array_equal(out[..., 1], arr)


def test_uint8_array_matches_the_same_png(tmp_path: Path, rng: np.random.Generator) -> None:
    arr = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    from_file = load_pixels(path_item(save(tmp_path / "a.png", arr)), (5, 5))
    from_array = load_pixels(as_items(arr[None])[0][0], (5, 5))
    np.testing.assert_array_equal(from_array, from_file)
    one = load_pixels(as_items(arr[None, ..., :1])[0][0], (9, 11))
    np.testing.assert_array_equal(one, np.repeat(arr[..., :1], 3, -1))


def test_array_of_wrong_shape_raises_image_load_error() -> None:
    with pytest.raises(ImageLoadError, match=r"bad: expected an image of shape .*got \(3, 3, 2\)"):
        load_pixels(Item("array", np.zeros((3, 3, 2), np.uint8), "bad"), (2, 2))


# ---- non-ASCII and long file names ----------------------------------------------------------


@pytest.mark.parametrize("name", ["ñandú_猫.png", "x" * 196 + ".png", "with space & 'quote'.jpg"])
def test_unusual_file_names_load_and_key(tmp_path: Path, name: str) -> None:
    arr = solid(5, 6, (40, 80, 120))
    path = save(tmp_path / name, arr, **({"quality": 95} if name.endswith("jpg") else {}))
    item = path_item(path)
    assert item.name == str(path)
    assert item.key() == Item("bytes", path.read_bytes(), "b").key()
    out = load_pixels(item, (5, 6))
    np.testing.assert_allclose(out, arr, atol=3)
    paths, labels, classes = load_image_folder(_one_class_folder(tmp_path, path))
    assert [Path(p).name for p in paths] == [name]


def _one_class_folder(tmp_path: Path, image: Path) -> Path:
    root = tmp_path / "root"
    (root / "ñ").mkdir(parents=True)
    os.link(image, root / "ñ" / image.name)
    return root


# ---- batched --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    seq=st.one_of(
        st.lists(st.integers(), max_size=20), st.integers(0, 300).map(lambda n: [*range(n)])
    ),
    size=st.one_of(st.integers(1, 8), st.integers(1, 320)),
)
def test_batched_concatenates_back_to_the_input(seq: list[int], size: int) -> None:
    batches = [list(b) for b in batched(seq, size)]
    assert [x for b in batches for x in b] == seq
    assert all(1 <= len(b) <= size for b in batches)
    assert all(len(b) == size for b in batches[:-1])
    assert len(batches) == -(-len(seq) // size)


def test_batched_on_arrays() -> None:
    X = np.arange(10).reshape(5, 2)
    np.testing.assert_array_equal(np.concatenate(list(batched(X, 2))), X)


@pytest.mark.parametrize("size", [0, -1])
def test_batched_refuses_sizes_below_one(size: int) -> None:
    with pytest.raises(ValueError, match=f"batch size must be at least 1; got {size}"):
        list(batched([1, 2], size))


# ---- load_image_folder ----------------------------------------------------------------------


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_folder_classes_and_labels(image_folder: Path) -> None:
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    (image_folder / "dog" / "Thumbs.db").write_bytes(b"\0")
    (image_folder / "README.md").write_text("a file at the top is not a class")
    (image_folder / ".hidden").mkdir()
    (image_folder / ".hidden" / "x.png").write_bytes(b"")

    paths, labels, classes = load_image_folder(image_folder)
    assert classes == ["cat", "dog"]
    assert labels.dtype == np.int64
    assert labels.tolist() == [0] * 4 + [1] * 4
    assert [Path(p).parent.name for p in paths] == ["cat"] * 4 + ["dog"] * 4
    assert [Path(p).name for p in paths[:4]] == ["cat0.jpg", "cat1.png", "cat2.jpg", "cat3.png"]
    assert all(Path(p).is_file() for p in paths)


def test_folder_class_order_matches_keras(tmp_path: Path) -> None:
    # keras.utils.image_dataset_from_directory sorts the sub-folder names as strings:
    # '10' < '9' < 'a' < 'b'.
    root = _tree(tmp_path / "data", {f"{c}/{c}.png": b"" for c in ["b", "a", "10", "9"]})
    paths, labels, classes = load_image_folder(root)
    assert classes == ["10", "9", "a", "b"]
    assert [Path(p).parent.name for p in paths] == classes
    assert labels.tolist() == [0, 1, 2, 3]


def test_folder_upper_case_extensions_and_nested_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a/X.JPG": b"", "a/deeper/y.Png": b"", "b/z.webp": b"",
                                  "b/skip.csv": b""})
    paths, labels, classes = load_image_folder(root)
    assert [Path(p).name for p in paths] == ["X.JPG", "y.Png", "z.webp"]
    assert labels.tolist() == [0, 0, 1]
    paths, _, _ = load_image_folder(root, extensions=[".webp"])
    assert [Path(p).name for p in paths] == ["z.webp"]


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FeatxError, match=r"'.*missing' does not exist or is not a folder"):
        load_image_folder(tmp_path / "missing")
    flat = _tree(tmp_path / "flat", {"a.png": b"", "b.png": b""})
    with pytest.raises(FeatxError, match=r"has no sub-folders; expected one sub-folder per class"):
        load_image_folder(flat)
    with pytest.raises(FeatxError, match="is not a folder"):
        load_image_folder(flat / "a.png")
    empty = _tree(tmp_path / "empty", {"cat/notes.txt": b"", "dog/data.csv": b""})
    with pytest.raises(FeatxError, match=r"class folders \['cat', 'dog'\] but no image files"):
        load_image_folder(empty)


# ---- load_image_csv -------------------------------------------------------------------------


def test_csv_relative_paths_and_labels(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    absolute = str(tmp_path / "abs.png")
    (folder / "list.csv").write_text(
        "path,label,extra\n"
        "imgs/a.jpg,dog,1\n"
        f"{absolute},cat,2\n"
        "../up.png,bird,3\n"
        "b.jpg,dog,4\n",
        encoding="utf-8",
    )
    paths, labels, classes = load_image_csv(folder / "list.csv")
    assert paths == [
        str(folder / "imgs" / "a.jpg"),
        absolute,
        str(tmp_path / "up.png"),
        str(folder / "b.jpg"),
    ]
    assert classes == ["bird", "cat", "dog"]
    assert labels.dtype == np.int64
    assert labels.tolist() == [2, 1, 0, 2]


def test_csv_paths_are_not_relative_to_the_working_directory(tmp_path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "l.csv").write_text("path,label\nx.png,a\n")
    monkeypatch.chdir(tmp_path)
    paths, _, _ = load_image_csv("sub/l.csv")
    assert paths == [str(tmp_path / "sub" / "x.png")]


def test_csv_other_columns_and_no_labels(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("file,class\nñandú_猫.png,z\nb.png,a\n", encoding="utf-8")
    paths, labels, classes = load_image_csv(tmp_path / "l.csv", path_column="file",
                                            label_column="class")
    assert [Path(p).name for p in paths] == ["ñandú_猫.png", "b.png"]
    assert labels.tolist() == [1, 0] and classes == ["a", "z"]

    paths, labels, classes = load_image_csv(tmp_path / "l.csv", path_column="file",
                                            label_column=None)
    assert labels is None and classes == []
    assert len(paths) == 2


def test_csv_missing_column_lists_the_columns(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(FeatxError, match=r"no column 'path'; its columns are \['file', 'class'\]"):
        load_image_csv(tmp_path / "l.csv")
    with pytest.raises(FeatxError, match=r"no column 'label'; its columns are"):
        load_image_csv(tmp_path / "l.csv", path_column="file")
    with pytest.raises(FeatxError, match=r"'.*nope\.csv' does not exist"):
        load_image_csv(tmp_path / "nope.csv")


def test_csv_written_by_excel_with_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path,label\na.png,x\n", encoding="utf-8-sig")
    paths, labels, classes = load_image_csv(tmp_path / "l.csv")
    assert [Path(p).name for p in paths] == ["a.png"]
    assert classes == ["x"]
