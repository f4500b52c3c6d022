"""The write fence refuses every commit once closed. The fence is process-wide and never reopens, so each case
runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
from pathlib import Path
from fedagg.federation.files import atomic_write_bytes
from fedagg.federation.store import StateStore
from fedagg.federation.write_fence import Fenced, close_fence

state = Path(sys.argv[1])
atomic_write_bytes(state / "checkpoint.json", b"before")
assert close_fence("the lease is held by replica-b", 5)
for name, write in (
    ("commit", lambda: atomic_write_bytes(state / "checkpoint.json", b"after")),
    ("probe", lambda: StateStore(state).probe()),
):
    try:
        write()
    except Fenced as error:
        print(name, "refused:", error.strerror)
"""


def test_a_closed_fence_refuses_commits_and_probes_and_leaves_the_state_as_it_was(tmp_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, check=False, timeout=60
    )

    assert ran.returncode == 0, ran.stderr
    refusal = "not the leader any more (the lease is held by replica-b): state writes refused"
    assert ran.stdout.splitlines() == [f"commit refused: {refusal}", f"probe refused: {refusal}"]
    assert (tmp_path / "checkpoint.json").read_bytes() == b"before"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.json"]  # no temporary left behind
