"""Read a legacy (non-zip) PyTorch state dict without PyTorch and without running its pickle.

``torch.save`` wrote files in this layout until PyTorch 1.6 (and still does with
``_use_new_zipfile_serialization=False``): five pickles and raw tensor bytes, one after the other::

    magic number | protocol version | system info | the object | storage keys
    then, for each key in that order: numel (int64, little-endian) and numel * itemsize bytes

The object pickle refers to storages by a persistent id ``("storage", <type>, key, location,
numel, view)`` and rebuilds tensors with ``torch._utils._rebuild_tensor_v2``.
:func:`load_state_dict` reads it with an unpickler that resolves only the globals a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the ``torch.*Storage`` types,
each mapped to a harmless stand-in) and refuses every other global, so a file cannot run code.
Tensors come back as NumPy arrays.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from featx.exceptions import FeatxError

__all__ = ["MAGIC_NUMBER", "load_state_dict"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
"""The first pickle of a legacy ``torch.save`` file."""

_PROTOCOL_VERSION = 1001

#: ``torch.<Name>Storage`` -> the NumPy dtype of its elements.
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.<name>Storage``: only its element type is kept."""

    name: str
    dtype: np.dtype[Any]


@dataclass
class _TensorRef:
    """A tensor whose bytes come later in the file: storage key, offset, shape, strides."""

    key: str
    dtype: np.dtype[Any]
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: tuple[str, np.dtype[Any]],
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    key, dtype = storage
    return _TensorRef(key, dtype, int(storage_offset), tuple(size), tuple(stride))


def _describe(source: str | os.PathLike[str] | IO[bytes]) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    return repr(getattr(source, "name", "the stream"))


class _StateDictUnpickler(pickle.Unpickler):
    """An unpickler that builds ordered dicts and tensor references and nothing else."""

    def __init__(self, file: IO[bytes], where: str):
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise FeatxError(
            f"{self._where} refers to {module}.{name}, which a PyTorch state dict does not need; "
            "featx reads only tensors and ordered dicts from .pth files and refused to load it. "
            "Expected a state dict saved with torch.save(model.state_dict(), path)."
        )

    def persistent_load(self, pid: Any) -> tuple[str, np.dtype[Any]]:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise FeatxError(
                f"{self._where} holds the persistent id {pid!r}; expected a storage reference "
                "('storage', type, key, location, size, view) of a legacy torch.save file."
            )
        _, storage_type, key, _location, _numel, view = pid
        if view is not None:
            raise FeatxError(
                f"{self._where}: storage {key!r} is a view of another storage, which featx does "
                "not read; re-save the state dict with its tensors cloned."
            )
        if not isinstance(storage_type, _StorageType):
            raise FeatxError(f"{self._where}: storage {key!r} has no known element type")
        return str(key), storage_type.dtype


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles: plain values only, no globals at all."""

    def __init__(self, file: IO[bytes], where: str):
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        raise FeatxError(f"{self._where}: unexpected global {module}.{name} in the file header")


def load_state_dict(source: str | os.PathLike[str] | IO[bytes]) -> dict[str, np.ndarray]:
    """Read a legacy PyTorch ``.pth`` state dict into NumPy arrays, without importing PyTorch.

    Parameters
    ----------
    source : str, path-like or binary file object
        The ``.pth`` file, or an open binary stream positioned at its start (a member of a zip
        archive works: it is read sequentially).

    Returns
    -------
    dict of str to numpy.ndarray
        The state dict, in the file's order. Each array is a contiguous copy with the tensor's
        shape and dtype (``float32`` for ``FloatStorage``, ``int64`` for ``LongStorage`` ...).

    Raises
    ------
    FeatxError
        If the file is a zip-format ``torch.save`` file, is not a legacy ``torch.save`` file at
        all, is truncated, holds anything but tensors in (ordered) dicts (its pickle refers to
        another global: nothing of it is run), or a tensor reaches beyond its storage.

    Examples
    --------
    >>> import io, pickle, struct
    >>> from featx.weights.torch_pickle import MAGIC_NUMBER, load_state_dict
    >>> load_state_dict(io.BytesIO(pickle.dumps("a note, not a state dict")))
    Traceback (most recent call last):
    ...
    featx.exceptions.FeatxError: 'the stream' is not a legacy PyTorch file...
    """
    where = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return _load(f, where)
    return _load(source, where)


def _load(f: IO[bytes], where: str) -> dict[str, np.ndarray]:
    data = f.read()
    if data[:2] == b"PK":
        raise FeatxError(
            f"{where} is a zip-format torch.save file (PyTorch 1.6 or later); featx reads the "
            "legacy format only. Re-save it with torch.save(obj, path, "
            "_use_new_zipfile_serialization=False)."
        )
    stream = io.BytesIO(data)
    header = _PlainUnpickler(stream, where)
    try:
        magic = header.load()
    except FeatxError:
        raise
    except Exception as error:
        raise FeatxError(
            f"{where} is not a legacy PyTorch file ({type(error).__name__}: {error}); expected "
            "a state dict written by torch.save."
        ) from error
    if magic != MAGIC_NUMBER:
        raise FeatxError(
            f"{where} is not a legacy PyTorch file: its first pickle is {magic!r}, expected the "
            "magic number torch.save writes."
        )
    try:
        version = header.load()
        if version != _PROTOCOL_VERSION:
            raise FeatxError(
                f"{where} has torch.save protocol version {version!r}; featx reads "
                f"{_PROTOCOL_VERSION}."
            )
        sys_info = header.load()
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
            raise FeatxError(f"{where} was written on a big-endian machine; featx cannot read it.")
        obj = _StateDictUnpickler(stream, where).load()
        keys = _PlainUnpickler(stream, where).load()
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError) as error:
        raise FeatxError(f"{where} is truncated or damaged: {error}") from error

    storages = _read_storages(stream, keys, _storage_dtypes(obj), where)
    return _materialise(obj, storages, where)


def _read_exactly(stream: IO[bytes], n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise FeatxError(f"{what} is truncated: {n - len(data)} of {n} bytes missing")
    return data


def _tensor_refs(obj: Any) -> list[_TensorRef]:
    if isinstance(obj, _TensorRef):
        return [obj]
    if isinstance(obj, dict):
        return [ref for value in obj.values() for ref in _tensor_refs(value)]
    return []


def _storage_dtypes(obj: Any) -> dict[str, np.dtype[Any]]:
    return {ref.key: ref.dtype for ref in _tensor_refs(obj)}


def _read_storages(
    stream: IO[bytes], keys: Any, dtypes: dict[str, np.dtype[Any]], where: str
) -> dict[str, np.ndarray]:
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise FeatxError(f"{where}: expected the list of storage keys after the object, got "
                         f"{type(keys).__name__}")
    storages = {}
    for key in keys:
        if key not in dtypes:
            raise FeatxError(f"{where}: storage {key!r} is stored but no tensor uses it")
        dtype = dtypes[key]
        (numel,) = struct.unpack("<q", _read_exactly(stream, 8, where))
        if numel < 0:
            raise FeatxError(f"{where}: storage {key!r} has a negative size {numel}")
        data = _read_exactly(stream, numel * dtype.itemsize, f"{where} storage {key!r}")
        storages[key] = np.frombuffer(data, dtype=dtype)
    return storages


def _materialise(obj: Any, storages: dict[str, np.ndarray], where: str) -> Any:
    if isinstance(obj, _TensorRef):
        return _tensor(obj, storages, where)
    if isinstance(obj, dict):
        return {str(k): _materialise(v, storages, where) for k, v in obj.items()}
    raise FeatxError(
        f"{where} holds a {type(obj).__name__}; expected a state dict (names -> tensors)"
    )


def _tensor(ref: _TensorRef, storages: dict[str, np.ndarray], where: str) -> np.ndarray:
    if ref.key not in storages:
        raise FeatxError(f"{where}: the data of storage {ref.key!r} is missing")
    storage = storages[ref.key]
    if len(ref.shape) != len(ref.stride) or min((*ref.shape, *ref.stride), default=0) < 0:
        raise FeatxError(f"{where}: tensor shape {ref.shape} and strides {ref.stride} disagree")
    if 0 in ref.shape:
        return np.zeros(ref.shape, dtype=storage.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if ref.offset < 0 or last >= storage.size:
        raise FeatxError(
            f"{where}: a tensor of shape {ref.shape} at offset {ref.offset} reaches element "
            f"{last} of storage {ref.key!r}, which holds {storage.size}"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * storage.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, order="C", copy=True)

