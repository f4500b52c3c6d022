"""Named crash points for fault-injection tests, inert unless ``FEDAGG_FAILPOINTS`` is set.

The variable lists ``name=action[@hit]`` entries separated by commas, e.g.
``FEDAGG_FAILPOINTS=round_end.model_written=kill@2``: the second time the code passes that point, the process
kills itself with SIGKILL, exactly as an OOM kill or a node failure would. The only action is ``kill``. This is
the technique of etcd's gofail and FreeBSD's fail points: crashes land at precise places in the crash-ordering
rules, so the tests that prove recovery are deterministic.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENVIRONMENT_VARIABLE = "FEDAGG_FAILPOINTS"
_lock = threading.Lock()  # guards _hits; never held across anything but a counter update
_hits: Counter[str] = Counter()


def _parse(text: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, _, action = entry.partition("=")
        kind, _, hit = action.partition("@")
        if kind != "kill" or (hit and not hit.isdigit()):
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: {entry!r} is not name=kill[@hit]")
        points[name.strip()] = int(hit or 1)
    return points


_armed = _parse(os.environ.get(ENVIRONMENT_VARIABLE, ""))


def failpoint(name: str) -> None:
    """Pass the crash point ``name``; kills the process if a test armed it for this hit."""
    if not _armed or name not in _armed:
        return
    with _lock:
        _hits[name] += 1
        due = _hits[name] == _armed[name]
    if due:
        os.kill(os.getpid(), signal.SIGKILL)
