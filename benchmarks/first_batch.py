"""A new process's first batch: ``python -m benchmarks.first_batch FOLDER`` embeds 32 photos with
the ImageNet MobileNet on the default engine and prints one JSON line: the seconds featx took
(building or reading the network, converting, the batch) and whether TensorFlow was imported."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    from featx import ImageEmbedder

    paths = sorted(str(p) for p in Path(sys.argv[1]).glob("*.jpg"))[:32]
    t0 = time.perf_counter()
    rows = ImageEmbedder("mobilenet", batch_size=32).fit_transform(paths)
    seconds = time.perf_counter() - t0
    assert rows.shape == (32, 1024)
    print(json.dumps({"featx_s": seconds, "tensorflow": "tensorflow" in sys.modules}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
