"""What names a backbone's pieces in a fingerprint, found without importing Keras: a file's
sha256, the weights' identity, a model's, the Keras version and backend, and where featx's own
networks live now that their fingerprint names are fixed.

The registry (:mod:`featx.nets.backbones`) and the Keras Hub presets (:mod:`featx.nets.hub`)
both build fingerprints from these; they live here, below both.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from featx.exceptions import FeatxError, WeightsNotFoundError

__all__ = [
    "file_sha256",
    "import_named_module",
    "is_keras_model",
    "keras_backend_name",
    "keras_version",
    "model_identity",
    "weights_identity",
]

#: featx's own networks are named in fingerprints (so in caches, saved models and tuned files)
#: by the module path they had in featx 0.1. A name is an identity: it stays when the code moves,
#: and this table says where the module lives now.
_MODULE_HOMES = {"featx.efficientnet_lite": "featx.nets.efficientnet_lite"}


def import_named_module(name: str) -> Any:
    """Import the module a registry entry or a preprocessing name calls ``name``."""
    import importlib

    return importlib.import_module(_MODULE_HOMES.get(name, name))


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASH_MEMO[memo_key] = h.hexdigest()
    return _HASH_MEMO[memo_key]


def keras_version() -> str:
    try:
        return importlib.metadata.version("keras")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def keras_backend_name() -> str:
    """The Keras backend in use, found without importing Keras when it is not imported yet."""
    import sys

    if "keras" in sys.modules:
        return str(sys.modules["keras"].backend.backend())
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return str(json.loads(config.read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError):
        return "tensorflow"


def weights_identity(weights: Any) -> str:
    if weights is None:
        # Seeded random initialisers draw different numbers on different backends.
        return f"random@seed0:{keras_backend_name()}"
    if isinstance(weights, str) and weights == "imagenet":
        return f"imagenet@keras-{keras_version()}"
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"weights file {str(path)!r} does not exist. Expected weights='imagenet', "
                "weights=None (random initialisation) or the path of an existing weights file."
            )
        return f"sha256:{file_sha256(path)}"
    raise FeatxError(
        f"weights={weights!r} is not understood. Expected 'imagenet', None or a file path."
    )


def model_identity(model: Any) -> str:
    h = hashlib.sha256(model.to_json().encode())
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def is_keras_model(obj: Any) -> bool:
    # Checked by class name so that resolving a registry name never imports Keras.
    return any(
        c.__module__.startswith("keras") and c.__name__ in ("Model", "Functional", "Sequential")
        for c in type(obj).__mro__
    )
