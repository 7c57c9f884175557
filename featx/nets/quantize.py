"""INT8 for the OpenVINO engine: NNCF post-training quantization of the cut, pooled network.

The calibration images are decoded by the embedder (``featx.embed.calibration``) and handed
here by digest (:func:`register_calibration`), so that this layer never reads an image; the
digest is part of the fingerprint (``"int8@openvino:<digest>"``). :func:`quantize` runs NNCF on
the converted float32 model; :mod:`featx.nets.openvino_engine` keeps the result on disk beside
the converted models, keyed by the network and that digest.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

__all__ = ["MIN_CALIBRATION", "int8_units", "register_calibration", "is_registered",
           "registered_calibrations", "quantize", "check_int8_cpu"]

#: The fewest calibration images accepted (NNCF's statistics are unstable below this).
MIN_CALIBRATION = 32
#: The most calibration images used (NNCF's default subset size).
MAX_CALIBRATION = 300

_CALIBRATION: dict[str, np.ndarray] = {}


def register_calibration(digest: str, pixels: np.ndarray) -> None:
    """Keep the decoded calibration images (uint8, N x H x W x C) of ``digest`` for this process."""
    _CALIBRATION[digest] = pixels


def is_registered(digest: str) -> bool:
    """Whether this process holds the calibration images of ``digest``."""
    return digest in _CALIBRATION


def registered_calibrations() -> list[str]:
    """The digests of every calibration set this process holds, in the order registered."""
    return list(_CALIBRATION)


@functools.cache
def int8_units() -> list[str]:
    """This CPU's INT8 dot-product units (``amx_int8``, ``avx512_vnni``, ``avx_vnni``; Arm's
    ``asimddp``, ``i8mm``), read from ``/proc/cpuinfo`` (no framework is imported). Where that
    file is missing (not Linux) the flags are unknown: ``["unchecked"]``, and INT8 is offered."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith(("flags", "Features"))), [])
    except OSError:  # pragma: no cover - not Linux
        return ["unchecked"]
    wanted = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")
    return [flag for flag in wanted if flag in flags]


def check_int8_cpu() -> None:
    """Raise a clear error when this CPU has no INT8 units (``FEATX_ALLOW_INT8=1`` skips it)."""
    if int8_units() or os.environ.get("FEATX_ALLOW_INT8") == "1":
        return
    raise ValueError(
        "precision='int8' needs a CPU with INT8 dot-product units (Intel/AMD AVX-VNNI or "
        "AVX512-VNNI, Intel AMX, Arm dot-product); this CPU has none, so INT8 would run at about "
        "float32 speed or slower and cost accuracy. Use precision='mixed_bfloat16' (CPUs with "
        "bfloat16) or 'float32'; set FEATX_ALLOW_INT8=1 to quantize anyway."
    )


def quantize(ov_model: Any, digest: str) -> Any:
    """NNCF post-training quantization of ``ov_model`` (float32 pixels in) on the calibration
    images registered under ``digest``."""
    try:
        import nncf
    except ImportError as exc:
        raise ImportError(
            "precision='int8' quantizes the network with NNCF, which is not installed; install "
            "featx's int8 extra: pip install 'featx[int8]'."
        ) from exc
    pixels = _CALIBRATION.get(digest)
    if pixels is None:
        raise ValueError(
            f"no calibration images are registered for digest {digest!r} in this process; "
            "embed through ImageEmbedder(precision='int8'), which decodes them first."
        )
    batches = [pixels[i:i + 1].astype(np.float32) for i in range(len(pixels))]
    return nncf.quantize(
        ov_model, nncf.Dataset(batches), subset_size=len(batches),
        fast_bias_correction=False,  # mean cosine to float32 0.995 against 0.945 (issue 21)
    )
