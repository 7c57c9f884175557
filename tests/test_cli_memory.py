"""featx.cli.main.return_freed_memory: the featx command hands freed blocks of rows back."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import sys
import numpy as np
from featx.cli.main import return_freed_memory
if sys.argv[1] == "on":
    assert return_freed_memory()
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) // 1024
first = np.ones(30 << 20, np.uint8)
del first  # glibc now keeps allocations under 30 MB in its heap
base = rss()
big, small = [], []
for _ in range(10):
    big.append(np.ones(16 << 20, np.uint8))
    small.append(np.ones(200 << 10, np.uint8))  # kept: the big ones' pages are holes below it
del big
print(rss() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (Linux)")
def test_freed_blocks_go_back_to_the_system_only_with_the_setting():
    def held_mb(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True,
                             check=True)
        return int(out.stdout.split()[-1])

    assert held_mb("off") >= 100  # 160 MB of freed 16 MB blocks kept by the heap
    assert held_mb("on") <= 20


def test_a_user_setting_is_left_alone(monkeypatch):
    from featx.cli.main import return_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert return_freed_memory() is False
