"""Offline real data and the end-to-end demo."""

from __future__ import annotations

from featx.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    load_digits_images,
    load_fashion_mnist,
    stratified_subset,
    write_image_folder,
)
from featx.data.demo import run_demo

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "load_digits_images",
    "load_fashion_mnist",
    "stratified_subset",
    "write_image_folder",
    "run_demo",
]
