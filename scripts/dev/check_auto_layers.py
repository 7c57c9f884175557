"""Build every registry backbone (weights=None, variables uninitialised) and check that each of
its ``layers="auto"`` layers exists, shallow to deep. Minutes: the tests check one per family.

Run: .venv/bin/python scripts/dev/check_auto_layers.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_nets_auto_layers import check, layer_names  # noqa: E402

from featx import list_backbones  # noqa: E402


def main() -> int:
    failed = 0
    for name in list_backbones():
        started = time.perf_counter()
        try:
            check(name, layer_names(name))
            status = "ok"
        except AssertionError as exc:
            failed += 1
            status = f"FAILED: {exc}"
        print(f"{name:24s} {time.perf_counter() - started:5.1f} s  {status}", flush=True)
    print(f"{len(list_backbones()) - failed} of {len(list_backbones())} backbones ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
