"""Images where they live: fsspec URLs (``s3://``, ``gs://``, ``https://``, ``file://``).

Every remote read in featx goes through here: which strings are URLs (:func:`is_url`), the file
system behind one (:func:`url_fs`), reading an object (:func:`read_bytes`, :func:`open_url`),
listing and globbing a prefix, and the words an error is reported in (:func:`io_reason`).
Credentials, endpoints and retries are the storage library's own (``~/.aws``, ``AWS_*``
variables, ``gcloud`` credentials, fsspec's configuration); featx never prints or stores them,
and a URL's ``user:password@`` part is left out of every name it reports (:func:`redact`).

Needs the ``cloud`` extra (fsspec, s3fs, gcsfs) for anything but ``file://``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import IO, Any

from featx.exceptions import FeatxError

__all__ = ["is_url", "url_fs", "open_url", "read_bytes", "local_path", "redact", "io_reason",
           "glob_urls", "list_files", "is_dir", "join", "parent"]

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


def is_url(text: Any) -> bool:
    """True for a string with a scheme (``s3://...``); Windows drive letters are not schemes."""
    return isinstance(text, str) and bool(_SCHEME.match(text))


def local_path(url: str) -> str | None:
    """The local path of a ``file://`` URL (or of a plain path); None for a remote URL."""
    if not is_url(url):
        return url
    if url.startswith("file://"):
        return url[len("file://"):]
    return None


def redact(url: str) -> str:
    """``url`` without a ``user:password@`` part, as it may be printed."""
    return _USERINFO.sub(r"\1", url)


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise FeatxError(
            "reading images from URLs (s3://, gs://, https://) needs fsspec and the storage's "
            "library, which are not installed: pip install 'featx[cloud]'."
        ) from None
    return fsspec


def url_fs(url: str) -> tuple[Any, str]:
    """The fsspec file system for ``url`` and the path on it.

    Raises a one-line :class:`FeatxError` naming the extra when the protocol's library (s3fs,
    gcsfs, aiohttp) is missing.
    """
    fsspec = _fsspec()
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        raise FeatxError(
            f"reading {scheme}:// URLs needs a library that is not installed ({exc}); install "
            "featx's cloud extra: pip install 'featx[cloud]'."
        ) from None
    except ValueError as exc:
        raise FeatxError(f"cannot read {redact(url)!r}: {exc}") from None


def open_url(url: str) -> IO[bytes]:
    """``url`` opened for reading bytes (a local path or ``file://`` URL without fsspec)."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    fs, p = url_fs(url)
    return fs.open(p, "rb")


def read_bytes(url: str) -> bytes:
    """The whole object at ``url`` (retried by the storage library as it is configured)."""
    path = local_path(url)
    if path is not None:
        with open(path, "rb") as f:
            return f.read()
    fs, p = url_fs(url)
    return fs.cat_file(p)


def io_reason(exc: BaseException) -> str:
    """What a failed read says, in a report's words (never credentials)."""
    if isinstance(exc, FileNotFoundError):
        return "not found (no such file or object, or HTTP 404)"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied (check the storage's credentials)"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = type(exc).__name__
    return f"could not be read: {kind}: {text}" if text else f"could not be read: {kind}"


def _with_protocol(fs: Any, path: str, like: str) -> str:
    if like.startswith("file://") or not is_url(like):
        return path
    return fs.unstrip_protocol(path)


def is_dir(url: str) -> bool:
    """True when ``url`` is a folder (or an object-store prefix holding objects)."""
    path = local_path(url)
    if path is not None:
        return os.path.isdir(path)
    if url.startswith(("http://", "https://")) and not url.endswith("/"):
        return False  # an HTTP "folder" is a page of links; reading it to know costs a download
    fs, p = url_fs(url)
    try:
        return bool(fs.isdir(p))
    except Exception:  # noqa: BLE001 - unreachable: reading it reports why, per item
        return False


def is_file(url: str) -> bool:
    path = local_path(url)
    if path is not None:
        return os.path.isfile(path)
    fs, p = url_fs(url)
    return bool(fs.isfile(p))


def glob_urls(pattern: str) -> list[str]:
    """The files matching ``pattern`` (``*``, ``?``, ``[...]``, ``**``), sorted, as URLs when
    ``pattern`` is one. A list: a glob names shards or parts, not every image."""
    path = local_path(pattern)
    if path is not None:
        import glob

        return sorted(glob.glob(path, recursive=True))
    fs, p = url_fs(pattern)
    return sorted(_with_protocol(fs, f, pattern) for f in fs.glob(p))


def list_files(url: str, extensions: tuple[str, ...], *, ordered: bool = True) -> Iterator[str]:
    """Files under the folder or prefix ``url`` whose name ends in one of ``extensions``,
    recursively. Local folders are walked lazily: with ``ordered`` one folder's names are
    sorted at a time; without, they come in the file system's order and nothing is held (a
    flat folder of a million files). An object store's listing is the storage library's (s3fs
    lists a prefix by pages, and keeps the listing)."""
    path = local_path(url)
    if path is not None:
        yield from _walk_local(path, extensions, ordered)
        return
    fs, p = url_fs(url)
    for f in sorted(fs.find(p)):
        if f.lower().endswith(extensions):
            yield _with_protocol(fs, f, url)


def _walk_local(root: str, extensions: tuple[str, ...], ordered: bool) -> Iterator[str]:
    with os.scandir(root) as it:
        entries: Iterable[tuple[str, bool]] = (
            (e.name, e.is_dir()) for e in it if not e.name.startswith("."))
        if ordered:
            entries = sorted(entries)  # one folder's names, not the tree's
        for name, folder in entries:
            full = os.path.join(root, name)
            if folder:
                yield from _walk_local(full, extensions, ordered)
            elif name.lower().endswith(extensions):
                yield full


def subfolders(url: str) -> list[str]:
    """The names of ``url``'s sub-folders (not hidden), sorted."""
    path = local_path(url)
    if path is not None:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    fs, p = url_fs(url)
    return sorted(os.path.basename(e["name"].rstrip("/")) for e in fs.ls(p, detail=True)
                  if e["type"] == "directory" and not os.path.basename(
                      e["name"].rstrip("/")).startswith("."))


def join(base: str, name: str) -> str:
    """``name`` under ``base`` (a path or a URL); an absolute path or a URL stays as it is."""
    if is_url(name) or os.path.isabs(name):
        return name
    if is_url(base) and local_path(base) is None:
        return base.rstrip("/") + "/" + name
    return os.path.join(local_path(base) or base, name)


def parent(url: str) -> str:
    """The folder holding ``url``."""
    if is_url(url) and local_path(url) is None:
        return url.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(local_path(url) or url))


def name_of(url: str) -> str:
    """The last part of a path or URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]
