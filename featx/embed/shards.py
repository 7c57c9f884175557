"""Tar shards (the WebDataset convention: img2dataset's and clip-retrieval's format), read as
streams (:mod:`featx.embed.tarstream`), never unpacked.

A shard is a plain tar file whose consecutive members sharing a basename are one sample
(``000017.jpg``, ``000017.cls``, ``000017.json``). Each image member (found by its extension)
is an item named ``<shard>:<member>``; its label is a sibling member's text (``label="cls"``)
or a field of its ``.json`` sibling (``label="json:FIELD"``). A shard that cannot be opened, a
truncated shard and a damaged member each become one failed item named where it stopped
(``kind="failed"``): the run goes on and the report names it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from featx.embed.item import Item
from featx.embed.listing import IMAGE_EXTENSIONS, encode_labels
from featx.embed.remote import glob_urls, io_reason, is_dir, list_files, open_url, redact
from featx.embed.stream import ItemStream
from featx.embed.tarstream import TarError, members
from featx.exceptions import FeatxError

__all__ = ["SHARD_EXTENSIONS", "TarShards", "load_shards", "shard_urls"]

SHARD_EXTENSIONS = (".tar", ".tar.gz", ".tgz")

#: WebDataset's sample key: everything up to the first dot of the member's file name.
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def shard_urls(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The shards ``source`` names: a ``.tar`` path or URL, a folder or prefix of them, a glob
    (``shards/train-*.tar``, ``s3://bucket/train-{...}`` as a glob), or a list of those."""
    if isinstance(source, (list, tuple)):
        return [u for s in source for u in shard_urls(s)]
    text = os.fspath(source)  # type: ignore[arg-type]
    if _has_glob(text):
        return glob_urls(text)
    if not text.lower().endswith(SHARD_EXTENSIONS) and is_dir(text):
        return list(list_files(text, SHARD_EXTENSIONS))
    return [text]


class TarShards(ItemStream):
    """The image members of tar shards, in shard and member order, each read once per pass.

    Parameters
    ----------
    source : path, URL, glob, or list of them
        A ``.tar`` (or ``.tar.gz``) file, a folder or object-store prefix of them, or a glob.
    label : str or None, default=None
        Where a sample's label is: the extension of a sibling member holding it as text
        (``"cls"``, ``"txt"``), ``"json:FIELD"`` for a field of its ``.json`` member, or None.
    extensions : sequence of str
        Member extensions counted as images.
    """

    def __init__(self, source: Any, *, label: str | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.source = source
        self.label = label
        self.extensions = tuple(e.lower() for e in extensions)
        self._urls: list[str] | None = None

    def urls(self) -> list[str]:
        """The shards, listed once (a glob or a folder names shards, not images)."""
        if self._urls is None:
            self._urls = shard_urls(self.source)
        return self._urls

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def parts(self) -> Iterator[TarShards]:
        for url in self.urls():
            part = TarShards([url], label=self.label, extensions=self.extensions)
            part._urls = [url]
            yield part

    def __iter__(self) -> Iterator[Item]:
        for url in self.urls():
            yield from read_shard(url, label=self.label, extensions=self.extensions)

    def describe(self) -> str:
        return f"tar shards {_say(self.source)}"


def _say(source: Any) -> str:
    if isinstance(source, (list, tuple)):
        return f"{redact(os.fspath(source[0]))}" + (f" (+{len(source) - 1})" if len(source) > 1
                                                    else "")
    return redact(os.fspath(source))


def read_shard(url: str, *, label: str | None = None,
               extensions: Sequence[str] = IMAGE_EXTENSIONS,
               images: bool = True) -> Iterator[Item]:
    """The image members of one shard as items (``images=False``: their names and labels
    only, the image bytes skipped), then one failed item if the shard is damaged or truncated."""
    name = redact(url)
    exts = tuple(extensions)
    label_ext = None if label is None else ("json" if label.startswith("json:") else label)
    try:
        raw = open_url(url)
    except FeatxError:
        raise
    except Exception as exc:  # noqa: BLE001 - a 404, a refused connection, a bad bucket
        yield Item("failed", io_reason(exc), name)
        return

    def split(member: str) -> tuple[str, str]:
        match = _KEY.match(member)
        return (match.group(1), match.group(2)) if match else (member, "")

    def is_image(member: str) -> bool:
        return ("." + split(member)[1].lower()).endswith(exts)

    def wanted(member: str) -> bool:
        return is_image(member) or split(member)[1] == label_ext

    group: list[tuple[str, str, bytes, bool]] = []
    group_key: str | None = None
    last: str | None = None
    try:
        with raw:
            stream = gzip.GzipFile(fileobj=raw) if url.lower().endswith((".gz", ".tgz")) else raw
            skip = (lambda member: False) if images else is_image
            for member, data in members(stream, wanted, skip):
                key, ext = split(member)
                if key != group_key:
                    yield from _sample(name, group, label)
                    group, group_key = [], key
                group.append((member, ext, data, is_image(member)))
                last = member
        yield from _sample(name, group, label)
    except Exception as exc:  # noqa: BLE001 - a cut or damaged shard; gzip's, the store's errors
        yield from _sample(name, group, label)
        current = exc.member if isinstance(exc, TarError) else None
        what = str(exc) or type(exc).__name__
        where = f"{name}:{current}" if current else name
        after = f" after member {last}" if last and not current else ""
        yield Item("failed", f"truncated or damaged shard ({what}{after}); the rest of the "
                   "shard was not read", where)


def _sample(shard: str, group: list[tuple[str, str, bytes, bool]],
            label: str | None) -> Iterator[Item]:
    value = None if label is None else _label_of(group, label)
    for member, _, data, is_image in group:
        if is_image:
            yield Item("bytes", data, f"{shard}:{member}", value)


def _label_of(group: list[tuple[str, str, bytes, bool]], label: str) -> Any:
    field = label[len("json:"):] if label.startswith("json:") else None
    for _, ext, data, is_image in group:
        if is_image:
            continue
        if field is None and ext == label:
            return data.decode("utf-8", "replace").strip()
        if field is not None and ext == "json":
            try:
                value = json.loads(data)
            except ValueError:
                return None
            return value.get(field) if isinstance(value, dict) else None
    return None


def load_shards(
    source: Any,
    *,
    label: str | None = "cls",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[TarShards, np.ndarray | None, list[str]]:
    """Tar shards as images for :class:`featx.ImageEmbedder`, with their labels.

    Parameters
    ----------
    source : path, URL, glob, or list of them
        ``shards/train-*.tar``, ``s3://bucket/shards/``, a ``.tar`` file, ...
    label : str or None, default="cls"
        The sibling member holding each sample's label as text (``"cls"``), a ``.json``
        field (``"json:label"``), or None for none. Labels are read in one pass over the
        shards (tar has no index; image bytes are skipped, not decoded).
    extensions : sequence of str
        Member extensions counted as images.

    Returns
    -------
    images : TarShards
        A stream :class:`featx.ImageEmbedder` takes as ``X`` (each pass reads the shards).
    labels : ndarray of int or None
        Indices into ``class_names``; -1 for an item its shard could not deliver (it fails
        to embed and is reported). None when ``label`` is None.
    class_names : list of str
        Sorted (numbers as numbers: ``.cls`` files usually hold class indices).

    Raises
    ------
    FeatxError
        When ``source`` names no shard, or a sample has no label.
    """
    shards = TarShards(source, label=label, extensions=extensions)
    if not shards.urls():
        raise FeatxError(f"no tar shards at {_say(source)!r}; expected a .tar file, a folder of "
                         "them or a glob such as 'shards/*.tar'.")
    if label is None:
        return shards, None, []
    raw: list[Any] = []
    for url in shards.urls():
        for item in read_shard(url, label=label, extensions=extensions, images=False):
            if item.kind != "failed" and item.label is None:
                how = (f"a .{label} member" if not label.startswith("json:")
                       else f"a .json member with the field {label[5:]!r}")
                raise FeatxError(
                    f"{item.name} has no label ({how} with the same basename); pass label= to "
                    "say where labels are (e.g. 'cls' or 'json:label'), or label=None."
                )
            raw.append(item.label)
    named = [v for v in raw if v is not None]
    codes, classes = encode_labels(named)
    y = np.full(len(raw), -1, dtype=np.int64)
    y[[i for i, v in enumerate(raw) if v is not None]] = codes
    return shards, y, classes
