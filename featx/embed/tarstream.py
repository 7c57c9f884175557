"""Reading a tar stream's members in order, once, without seeking: what a shard is.

Python's ``tarfile`` parses each 512-byte header field by field (about 35 us a member here,
two members a WebDataset sample): more than the rest of reading a small image. This reader
parses only what a shard needs (the name: ustar's prefix, GNU long names, pax ``path``; the
size; the type), checks each header's checksum, and tells the end of an archive from a
truncated one (a stream that stops without the two zero blocks). Compressed shards
(``.tar.gz``) are read through :mod:`gzip`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

__all__ = ["TarError", "members"]

_BLOCK = 512
_ZERO = bytes(_BLOCK)
_REGULAR = (b"0", b"\0", b"7")


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class TarError(Exception):
    """The stream is not a tar archive, is damaged or stops early; ``member`` is the member
    being read when it did (None between members)."""

    def __init__(self, reason: str, member: str | None = None):
        super().__init__(reason)
        self.member = member


def _read(f: Readable, n: int) -> bytes:
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:  # a network stream may return less than asked
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256, for sizes of 8 GiB and more
        value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        return value
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_path(data: bytes) -> str | None:
    path = None
    pos = 0
    while pos < len(data):  # records: "<length> <key>=<value>\n"
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            path = value.decode("utf-8", "surrogateescape")
        pos += length
    return path


def members(f: Readable, want: Callable[[str], bool],
            skip: Callable[[str], bool] = lambda name: False) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` for each regular member whose name ``want`` accepts, in order; the
    data of a member ``skip`` names is not kept (``b""``). Raises :class:`TarError` when a
    header is damaged or the stream stops early."""
    long_name: str | None = None
    pax_name: str | None = None
    while True:
        header = _read(f, _BLOCK)
        if len(header) < _BLOCK:
            raise TarError("the shard ends without tar's end-of-archive blocks" if not header
                           else "unexpected end of data in a member's header")
        if header == _ZERO:
            return
        stored = header[148:156]
        try:
            if _number(stored) != sum(header) - sum(stored) + 8 * 32:
                raise TarError("a member's header is damaged (bad checksum)")
            size = _number(header[124:136])
        except ValueError:
            raise TarError("a member's header is damaged (not a tar header)") from None
        kind = header[156:157]
        padded = -(-size // _BLOCK) * _BLOCK
        if kind in (b"L", b"x"):  # the next member's long name, or its pax attributes
            data = _read(f, padded)
            if len(data) < padded:
                raise TarError("unexpected end of data")
            if kind == b"L":
                long_name = _text(data[:size])
            else:
                pax_name = _pax_path(data[:size]) or pax_name
            continue
        name = _text(header[:100])
        if header[257:262] == b"ustar" and header[345:346] != b"\0":
            name = _text(header[345:500]) + "/" + name
        name = pax_name or long_name or name
        long_name = pax_name = None
        if kind in _REGULAR and want(name):
            data = _read(f, padded)
            if len(data) < padded:
                raise TarError("unexpected end of data", name)
            yield name, b"" if skip(name) else data[:size]
        elif padded:
            _skip(f, padded, name)


def _skip(f: Readable, n: int, name: str) -> None:
    while n:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise TarError("unexpected end of data", name)
        n -= len(chunk)
