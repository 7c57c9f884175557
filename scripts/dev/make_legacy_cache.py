"""Write tests/data/legacy/: a cache made by featx as it was before the fingerprint codec.

Run once from the repository root (``.venv/bin/python scripts/dev/make_legacy_cache.py``) by
the featx that wrote the files; ``tests/test_cache_legacy.py`` checks that later versions read
and hit them. Do not run it again: the point is that the files were made by older code.

- ``tiny.keras``: a tiny convolutional network (no registry, no ImageNet weights), so that the
  fingerprint names the file's sha256 and no Keras version;
- ``emb.h5``: its embeddings of :func:`legacy_images` (12 arrays of 16 x 16 x 3, seed 29), at
  16 px, average pooled, float32 (made with ``backbone="tests/data/legacy/tiny.keras"``, a
  relative path, so the group's label names the file where the tests find it);
- ``fingerprint.json``: the group's fingerprint, its stored fields and its rows as written.

``fields.json`` beside them (the stored fields of a few registry, Keras Hub and reduced-precision
configurations) was recorded by the same featx, from ``resolve_backbone(...).fingerprint_fields``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path("tests/data/legacy")


def legacy_images() -> np.ndarray:
    return np.random.default_rng(29).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)


def main() -> int:
    import keras

    from featx import ImageEmbedder
    from featx.cache.store import EmbeddingCache

    HERE.mkdir(parents=True, exist_ok=True)
    init = keras.initializers.GlorotUniform(seed=29)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=init, name="conv")(x)
    keras.Model(inp, x, name="legacy_tiny").save(HERE / "tiny.keras")
    embedder = ImageEmbedder(str(HERE / "tiny.keras"), input_size=16, engine="keras",
                             cache=HERE / "emb.h5")
    rows = embedder.fit_transform(legacy_images())
    EmbeddingCache(HERE / "emb.h5").compact()
    config = embedder.config_
    record = {"fingerprint": config.fingerprint, "fields": config.fingerprint_fields,
              "label": config.label, "rows": rows.tolist()}
    (HERE / "fingerprint.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
