"""``fedagg demo`` as a real subprocess: it trains, and leaves no process and no stale run behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fedagg.protocol.model_file import read_model
from tests.integration.cli import ROOT, fedagg


def stray_processes(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in command:
                found.append(command)
    return found


def test_demo_trains_and_accuracy_rises(tmp_path: Path) -> None:
    result = fedagg("demo", "--rounds", "2", "--dir", str(tmp_path / "demo"), timeout=120)
    summary = yaml.safe_load((tmp_path / "demo" / "summary.json").read_text())

    assert summary["rounds"] == [0, 1]
    assert summary["accuracy"][1] > summary["accuracy"][0]
    assert "accuracy of the global model rose" in result.stdout
    assert read_model(Path(summary["last_model"])).round_number == 2
    assert stray_processes(str(tmp_path / "demo")) == []


def test_demo_leaves_no_process_behind_on_ctrl_c(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "fedagg.cli", "demo", "--rounds", "50", "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert demo.stdout is not None
    for line in demo.stdout:
        if line.startswith("round 1 "):
            break
    demo.send_signal(signal.SIGINT)
    output = demo.communicate(timeout=60)[0]

    assert demo.returncode == 130
    assert "interrupted" in output
    deadline = time.monotonic() + 10
    while stray_processes(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)  # children were signalled; the kernel reaps them asynchronously
    assert stray_processes(str(workdir)) == []


def test_demo_run_twice_in_one_directory_replaces_the_first_run(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    arguments = ("demo", "--rounds", "2", "--collaborators", "1", "--features", "4", "--dir", str(workdir))

    first = fedagg(*arguments, timeout=120)
    second = fedagg(*arguments, timeout=120)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a demo")
    foreign = fedagg(*arguments[:-1], str(tmp_path / "mine"), check=False)

    assert "holds an earlier demo" not in first.stdout
    assert f"{workdir} holds an earlier demo: replacing" in second.stdout
    assert "accuracy of the global model rose" in second.stdout
    assert read_model(workdir / "state" / "last.pbuf").round_number == 2
    assert foreign.returncode == 1
    assert "holds files that are not an earlier demo's (notes.txt)" in foreign.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a demo"
