"""Test-only fault injection: kill this process with SIGKILL at a named point of a run.

``FEATX_FAULT_INJECT="cache.segment_written:3"`` kills the process the 3rd time it reaches the
point ``cache.segment_written``, exactly as ``kill -9`` or the out-of-memory killer would: no
``finally`` block, no ``atexit`` handler and no buffered write runs. Several points are separated
by commas. ``tests/test_cache_crash.py`` uses it to kill ``featx embed`` between two precise steps
of a commit; it is unset in normal use, where each point costs one environment lookup.

The points (see ``docs/robustness.md``):

=========================== ======================================================================
``images.decode``           an image is about to be decoded (nothing of its batch is committed)
``cache.segment_partial``   a segment's temporary file is half written (group made, no rows yet)
``cache.segment_written``   the temporary file is complete and synced, not yet renamed (no commit)
``cache.segment_committed`` the segment has just been renamed into place (committed)
``cache.compact_copied``    compaction's new main file is complete, not yet renamed over the old
``cache.compact_replaced``  the new main file is in place; the folded segments are not yet deleted
=========================== ======================================================================
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "FEATX_FAULT_INJECT"

_counts: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(name: str) -> None:
    """Kill the process here if ``$FEATX_FAULT_INJECT`` asks for this point (test-only)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for part in spec.split(","):
        point, _, nth = part.strip().partition(":")
        if point != name:
            continue
        with _lock:
            count = _counts[name] = _counts.get(name, 0) + 1
        if count == int(nth or 1):
            kill = getattr(signal, "SIGKILL", None)
            if kill is None:  # pragma: no cover - not POSIX
                os._exit(137)
            os.kill(os.getpid(), kill)
