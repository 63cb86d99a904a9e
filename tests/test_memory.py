"""Freed host memory goes back to the operating system (the training loop relies on it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from openhart.utils.memory import _glibc_malloc_trim

# In a fresh interpreter, so the test process's own heap history does not blur the numbers:
# 2,000 blocks of 100 kB sit in the heap below one block that stays alive, so freeing them cannot
# shrink the heap from the top; only malloc_trim returns their pages.
_PROBE = """
import json, os
from openhart.utils.memory import release_freed_memory

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

blocks = [bytearray(100_000) for _ in range(2000)]
pinned = bytearray(100_000)
del blocks
before = rss()
released = release_freed_memory()
print(json.dumps({"released": released, "before": before, "after": rss()}))
"""


@pytest.mark.skipif(_glibc_malloc_trim() is None, reason="needs glibc's malloc_trim (Linux)")
def test_release_freed_memory_returns_fragmented_heap_pages():
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    numbers = json.loads(result.stdout)
    assert numbers["released"] is True
    # 200 MB were freed; at least half of it must leave the resident set.
    assert numbers["before"] - numbers["after"] > 100e6, numbers
