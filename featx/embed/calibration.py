"""The calibration set of ``precision="int8"``: which images, their digest, their pixels.

:func:`calibrated_config` decodes the calibration images (the ``calibration=`` set, or the first
images of the run) as the embedder would, registers them with :mod:`featx.nets.quantize` and
returns the configuration whose fingerprint names them (``"int8@openvino:<digest>"``): the same
images give the same digest, whatever their order or names. :func:`cached_calibration` finds
the calibration of an INT8 group a cache already holds for the same configuration, so that the
clones of a search (each fitted on another fold) share one quantized network and one group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from featx.cache.store import EmbeddingCache, open_cache
from featx.embed.engine import cache_group
from featx.embed.images import Item, as_items, load_pixels
from featx.exceptions import FeatxError, ImageLoadError
from featx.nets.backbones import BackboneConfig
from featx.nets.quantize import (
    MAX_CALIBRATION,
    MIN_CALIBRATION,
    register_calibration,
    registered_calibrations,
)

__all__ = ["cached_calibration", "calibrated_config"]


def cached_calibration(config: BackboneConfig, cache: Any) -> BackboneConfig | None:
    """``config`` with the calibration of an INT8 group ``cache`` already holds for it, or None.

    Only calibrations this process holds are candidates (the quantized network is built from
    them); of several groups, the one with the most rows. A search's first fold calibrates on
    its own images and embeds into its group; every later clone, fitted on another fold, finds
    that group here instead of calibrating on other images (another network, another group, every
    image embedded again).

    Parameters
    ----------
    config : BackboneConfig
        An INT8 configuration, not yet calibrated.
    cache : path or EmbeddingCache
        The embedder's cache.
    """
    digests = registered_calibrations()
    if not digests:
        return None  # nothing calibrated in this process: the cache is not read
    store = cache if isinstance(cache, EmbeddingCache) else open_cache(cache)
    rows = {g.fingerprint: g.rows for g in store.groups()}
    held = [(rows[group], candidate)
            for candidate in (replace(config, calibration_id=d) for d in digests)
            if (group := cache_group(candidate, None)) in rows]
    if not held:
        return None
    return max(held, key=lambda pair: pair[0])[1]


def calibrated_config(
    config: BackboneConfig, calibration: Any, items: Sequence[Item]
) -> BackboneConfig:
    """``config`` with its calibration digest, the decoded calibration images registered.

    ``calibration`` is a collection of images (as ``X``), or None for the first
    ``MAX_CALIBRATION`` images of ``items``. Unreadable images are left out; fewer than
    ``MIN_CALIBRATION`` readable ones raise a :class:`FeatxError` that names the minimum.
    """
    if not config.input_size:
        raise FeatxError(
            "precision='int8' calibrates on images, and this backbone takes vectors or has no "
            "input size; pass input_size=, or use precision='float32'."
        )
    source = "the first images of the run" if calibration is None else "calibration="
    chosen = items[:MAX_CALIBRATION] if calibration is None else as_items(calibration)[0]
    keys: list[str] = []
    pixels: list[np.ndarray] = []
    bad: list[str] = []
    for item in chosen[:MAX_CALIBRATION]:
        try:
            keys.append(item.key())
            pixels.append(load_pixels(item, config.input_size, resize=config.resize,
                                      decoder=config.decoder))
        except ImageLoadError as exc:
            bad.append(f"{exc.source}: {exc.reason}")
            if len(keys) > len(pixels):
                keys.pop()
    if len(pixels) < MIN_CALIBRATION:
        why = f"; unreadable: {'; '.join(bad[:3])}" if bad else ""
        raise FeatxError(
            f"precision='int8' needs at least {MIN_CALIBRATION} readable calibration images; "
            f"{source} gave {len(pixels)} of {len(chosen)}{why}. Pass calibration= with "
            f"{MIN_CALIBRATION} to {MAX_CALIBRATION} images like the ones you embed."
        )
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    stack = np.stack([p if p.dtype == np.uint8 else np.clip(p, 0, 255).astype(np.uint8)
                      for p in pixels])
    register_calibration(digest, stack)
    return replace(config, calibration_id=digest)
