"""Heap tuning: 2 MiB buffers reuse the heap's memory instead of faulting in fresh pages, the heap's free pages
go back to the system when trimmed, and an operator's glibc setting wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
from fedagg.federation.memory import trim_heap, tune_heap
took = tune_heap() if sys.argv[1] == "tuned" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def resident_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
keep = bytearray(2 << 20)
# 2 MiB messages arriving one after the other, each freed before the next (an upload's stream).
before = faults()
for _ in range(100):
    message = bytearray(2 << 20)
    del message
fresh_pages = faults() - before
# Many 2 MiB buffers alive at once, then every second one freed (as concurrent uploads leave them).
resident = resident_mib()
buffers = [bytearray(2 << 20) for _ in range(100)]
del buffers[::2]
held = resident_mib() - resident
trim_heap()
print(took, fresh_pages, round(held), round(resident_mib() - resident))
"""
PAGES_PER_MESSAGE = (2 << 20) // 4096


def run(environment: dict[str, str], mode: str = "tuned") -> tuple[str, int, int, int]:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True, env=environment
    )
    took, fresh_pages, held, trimmed = result.stdout.split()
    return took, int(fresh_pages), int(held), int(trimmed)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux-only")
def test_messages_reuse_the_heap_and_a_trim_gives_its_free_pages_back() -> None:
    base = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    took, fresh_pages, held, trimmed = run(base)
    assert took == "True"
    assert fresh_pages < 10 * PAGES_PER_MESSAGE, (
        f"100 messages of 2 MiB, each freed before the next, faulted {fresh_pages} fresh pages: the heap should "
        "serve them from the same memory"
    )
    assert held > 150, (
        f"the freed holes stay in the heap until it is trimmed (the test's premise): {held} MiB"
    )
    assert trimmed < 110, (
        f"after the trim only the 50 live buffers (100 MiB) stay resident, not {trimmed} MiB"
    )

    _, mapped_pages, _, _ = run({**base, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}, "stock")
    assert mapped_pages > 50 * PAGES_PER_MESSAGE, (
        f"with buffers mapped on their own every message faults in fresh pages (the premise): {mapped_pages}"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
@pytest.mark.parametrize("setting", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operator_setting_from_the_environment_is_left_alone(setting: str) -> None:
    base = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    took, *_ = run({**base, setting: str(64 << 20)})
    assert took == "False"
