"""The event loop never blocks: disk syncs and multi-MB copies happen in executor threads during a whole federation.

Regression of issue 8, defect 10: quit checkpoints used to fsync on the loop, and tensor replies were joined on it,
so no RPC and no health probe was answered meanwhile.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedagg.server import replies
from tests.conftest import COLLABORATORS
from tests.support.pki import Pki
from tests.support.runners import zero_model
from tests.support.servers import make_federation, make_plan, serving
from tests.support.training import train


def recording(calls: list[str], function: Callable[..., Any]) -> Callable[..., Any]:
    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(threading.current_thread().name)
        return function(*args, **kwargs)

    return record


def test_no_fsync_and_no_tensor_reply_is_made_on_the_event_loop(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    federation = make_federation(tmp_path, make_plan(COLLABORATORS, 2), zero_model())
    fsyncs: list[str] = []
    made: list[str] = []
    monkeypatch.setattr(os, "fsync", recording(fsyncs, os.fsync))
    monkeypatch.setattr(replies, "tensor_reply", recording(made, replies.tensor_reply))

    with serving(federation, pki) as thread:
        train(thread.address, pki)
        thread.call(thread.server.wait_for_quit_jobs(), timeout=30)

    loop_name = "fedagg-test-server"
    assert federation.all_quit_jobs_sent
    assert len(fsyncs) > 20, "uploads, round ends and quit jobs were synced"
    assert loop_name not in fsyncs
    assert made, "tensors were served"
    assert loop_name not in made
