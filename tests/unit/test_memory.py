"""Heap tuning: large buffers get their own mappings, so freeing them gives the memory back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROGRAM = """
import ctypes.util, sys
from fedagg.federation.memory import map_large_buffers
took = map_large_buffers() if sys.argv[1] == "tuned" else None
freed = bytearray(4 << 20)
del freed  # one large mapped buffer freed: glibc's dynamic threshold rises above 2 MiB
def resident_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
before = resident_mib()
# Many 2 MiB buffers alive at once, then every second one freed (as concurrent uploads leave them): with the
# default dynamic threshold they sit in the heap and the freed holes stay resident.
buffers = [bytearray(2 << 20) for _ in range(100)]
del buffers[::2]
print(took, round(resident_mib() - before))
"""


def run(environment: dict[str, str], mode: str = "tuned") -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True, env=environment
    )
    took, growth = result.stdout.split()
    return took, int(growth)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux-only")
def test_freed_large_buffers_leave_the_process_and_an_operator_setting_wins() -> None:
    base = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    took, growth = run(base)
    assert took == "True"
    assert growth < 110, f"50 live buffers of 2 MiB should hold about 100 MiB, not {growth} MiB"

    _, untuned = run(base, "stock")
    assert untuned > 150, (
        f"without the setting the freed buffers stay resident (the test's premise): {untuned}"
    )

    took, _ = run({**base, "MALLOC_MMAP_THRESHOLD_": str(64 << 20)})
    assert took == "False", "MALLOC_MMAP_THRESHOLD_ from the environment is left alone"
