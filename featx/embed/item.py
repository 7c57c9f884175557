"""One input sample (:class:`Item`): what it is, its readable name, its label, its content key.

The content key is the sha256 of the image's bytes wherever they come from: a file, a tar
member, a Parquet cell or a URL give the same key for the same bytes, so an image cached from
a folder is a cache hit when it comes from a shard or a bucket.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, ImageLoadError

__all__ = ["Item", "os_reason"]


@dataclass
class Item:
    """One input sample.

    Attributes
    ----------
    kind : {"path", "bytes", "url", "pil", "array", "failed", "key"}
        ``"url"``: an fsspec URL, read once (for the key and the decode) when first needed.
        ``"failed"``: a sample its source could not deliver (a truncated shard, a missing
        object); ``value`` is the reason, and reading it raises :class:`ImageLoadError`.
        ``"key"``: an image read before, of which only the content key (``value``) is kept,
        to find its row in a cache (:meth:`keyed`); it cannot be decoded.
    value : Any
        The path, bytes, URL, PIL image, array or reason.
    name : str
        What reports call it: a path, a URL (without credentials), ``shard.tar:000017.jpg``,
        ``part-0003.parquet:row 17``, ``array[4]``.
    label : Any, optional
        The label its source gave it (a tar sample's ``.cls``, a table's label column, a class
        folder), or None.
    """

    kind: str  # "path" | "bytes" | "url" | "pil" | "array" | "failed" | "key"
    value: Any
    name: str
    label: Any = None

    def __post_init__(self) -> None:
        self._data: bytes | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = None  # a reference travels, not the bytes fetched for it
        return state

    def fetch(self) -> bytes:
        """The encoded bytes of a ``"url"`` item, read once and kept until :meth:`release`."""
        if self.kind == "failed":
            raise ImageLoadError(self.name, str(self.value))
        if self._data is None:
            from featx.embed.remote import io_reason, read_bytes

            try:
                self._data = read_bytes(self.value)
            except FeatxError:
                raise
            except Exception as exc:  # noqa: BLE001 - the storage library's errors vary
                raise ImageLoadError(self.name, io_reason(exc)) from None
        return self._data

    def keyed(self) -> Item:
        """This item as its content key and name alone (a tar member's or a table row's bytes
        are not kept: a million of them would not fit in memory)."""
        if self.kind in ("path", "key", "failed"):
            return self
        return Item("key", self.key(), self.name, self.label)

    def release(self) -> None:
        """Forget fetched bytes (after decoding)."""
        self._data = None

    def key(self) -> str:
        """The content hash the cache stores this item under (sha256, hex)."""
        if self.kind == "key":
            return str(self.value)
        h = hashlib.sha256()
        if self.kind == "path":
            try:
                with open(self.value, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as exc:
                raise ImageLoadError(self.name, os_reason(exc)) from None
        elif self.kind == "bytes":
            h.update(self.value)
        elif self.kind in ("url", "failed"):
            h.update(self.fetch())
        elif self.kind == "pil":
            img = self.value
            h.update(f"pil:{img.mode}:{img.size}".encode())
            h.update(img.tobytes())
        else:
            arr = np.ascontiguousarray(self.value)
            h.update(f"array:{arr.dtype.str}:{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()


def os_reason(exc: OSError) -> str:
    """A file error in a report's words."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)
