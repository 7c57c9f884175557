"""Tests of featx.data.datasets: Fashion-MNIST from the Debian package, digits, and PNG class
folders."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx import FeatxError, load_image_folder
from featx.data.datasets import (
    FASHION_MNIST_CLASSES,
    load_digits_images,
    load_fashion_mnist,
    stratified_subset,
    write_image_folder,
)


@pytest.fixture(scope="module")
def fashion_test() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return load_fashion_mnist("test")


def test_fashion_mnist_test_split(fashion_test):
    images, labels, classes = fashion_test
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.int64
    assert classes == FASHION_MNIST_CLASSES and len(classes) == 10
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"
    assert np.bincount(labels).tolist() == [1000] * 10
    assert 0 < images.mean() < 255  # real pixels, not zeros


def test_fashion_mnist_train_split():
    images, labels, _ = load_fashion_mnist("train")
    assert images.shape == (60_000, 28, 28) and labels.shape == (60_000,)
    assert np.bincount(labels).tolist() == [6000] * 10


def test_fashion_mnist_subset_is_stratified_and_deterministic(fashion_test):
    all_images, all_labels, _ = fashion_test
    images, labels, classes = load_fashion_mnist("test", n=100)
    assert images.shape == (100, 28, 28) and labels.dtype == np.int64 and len(classes) == 10
    assert np.bincount(labels, minlength=10).tolist() == [10] * 10
    for c in range(10):  # the first images of each class, in file order
        np.testing.assert_array_equal(images[labels == c], all_images[all_labels == c][:10])
    again, again_labels, _ = load_fashion_mnist("test", n=100)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_labels, labels)


def test_stratified_subset_rounds_by_largest_remainder():
    labels = np.repeat(np.arange(10), 5)
    keep = stratified_subset(labels, 25)
    assert len(keep) == 25 and np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep]).tolist() == [3] * 5 + [2] * 5
    assert stratified_subset(labels, 0).tolist() == []
    assert len(stratified_subset(labels, 50)) == 50


@pytest.mark.parametrize("n", [-1, 51, 2.5, True])
def test_stratified_subset_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n=.* is not valid"):
        stratified_subset(np.zeros(50, np.int64), n)


def test_fashion_mnist_bad_split():
    with pytest.raises(ValueError, match="split='validation' is not valid"):
        load_fashion_mnist("validation")


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FeatxError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)


def _write_gz(path: Path, data: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(data)


def test_fashion_mnist_checks_magic_numbers_and_sizes(tmp_path):
    header = (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2, 28, 28))
    _write_gz(tmp_path / "t10k-images-idx3-ubyte.gz", header + bytes(2 * 28 * 28))
    _write_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", (0x0803).to_bytes(4, "big") + bytes(6))
    with pytest.raises(FeatxError, match="magic number 0x00000803; expected 0x00000801"):
        load_fashion_mnist("test", root=tmp_path)
    labels = (0x0801).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes([3, 7])
    _write_gz(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    images, y, _ = load_fashion_mnist("test", root=tmp_path)
    assert images.shape == (2, 28, 28) and y.tolist() == [3, 7]
    _write_gz(tmp_path / "t10k-images-idx3-ubyte.gz", header + bytes(100))
    with pytest.raises(FeatxError, match="declares shape"):
        load_fashion_mnist("test", root=tmp_path)


def test_digits_images():
    images, labels, classes = load_digits_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert classes == [str(d) for d in range(10)]
    assert images.min() == 0 and images.max() == 255
    sub, sub_labels, _ = load_digits_images(n=50)
    assert sub.shape == (50, 8, 8) and np.bincount(sub_labels).tolist() == [5] * 10


def _read_png(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_write_image_folder_round_trips(tmp_path, fashion_test):
    all_images, all_labels, classes = fashion_test
    images, labels = all_images[:40], all_labels[:40]  # unsorted labels
    root = write_image_folder(images, labels, classes, tmp_path / "fm")
    assert root == tmp_path / "fm"
    paths, y, folders = load_image_folder(root)
    assert folders[0] == "0_T-shirt_top" and folders[9] == "9_Ankle_boot"
    assert [f.split("_", 1)[0] for f in folders] == [str(k) for k in range(10)]
    assert len(paths) == 40
    # Within a class, files list in input order; the file name is the input position.
    positions = [int(Path(p).stem) for p in paths]
    np.testing.assert_array_equal(labels[positions], y)
    for pos, path in zip(positions, paths, strict=True):
        np.testing.assert_array_equal(_read_png(path), images[pos])


def test_write_image_folder_sorted_labels_keep_input_order(tmp_path):
    images, labels, classes = load_digits_images(n=30)
    order = np.argsort(labels, kind="stable")
    images, labels = images[order], labels[order]
    paths, y, _ = load_image_folder(write_image_folder(images, labels, classes, tmp_path / "d"))
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(np.stack([_read_png(p) for p in paths]), images)


def test_write_image_folder_rgb_and_many_classes(tmp_path, rng):
    images = rng.integers(0, 256, size=(12, 5, 7, 3), dtype=np.uint8)
    labels = np.arange(12)
    names = [f"class {k}/x" for k in range(12)]
    paths, y, folders = load_image_folder(write_image_folder(images, labels, names, tmp_path))
    assert folders[:3] == ["00_class_0_x", "01_class_1_x", "02_class_2_x"]
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(np.stack([_read_png(p) for p in paths]), images)


def test_write_image_folder_rewrites_but_refuses_foreign_files(tmp_path):
    images, labels, classes = load_digits_images(n=20)
    root = write_image_folder(images, labels, classes, tmp_path / "d")
    before = {p: p.read_bytes() for p in root.rglob("*.png")}
    write_image_folder(images, labels, classes, root)  # the same images again: fine
    assert {p: p.read_bytes() for p in root.rglob("*.png")} == before
    with pytest.raises(FeatxError, match="would not write"):
        write_image_folder(images[:10], labels[:10], classes, root)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FeatxError, match="notes.txt"):
        write_image_folder(images, labels, classes, tmp_path / "other")


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((2, 4, 4), np.float32), np.array([0, 1]), "expected uint8 images"),
        (np.zeros((2, 4), np.uint8), np.array([0, 1]), "expected uint8 images"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0]), "one integer label per image"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0, 2]), "indices into the 2 class names"),
    ],
)
def test_write_image_folder_rejects_bad_input(tmp_path, images, labels, match):
    with pytest.raises(ValueError, match=match):
        write_image_folder(images, labels, ["a", "b"], tmp_path)
