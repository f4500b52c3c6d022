"""``make demo`` on a fresh clone installs what the demo needs (fedagg and its server extra), with visible
progress, and not the dev tools that ``make test`` installs (``make -n``: the commands, not their downloads)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


def planned(target: str, directory: Path) -> list[str]:
    make = shutil.which("make")
    require(make is not None, "make is not installed")
    assert make is not None
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")  # set when the suite itself runs under make
    environment = {key: value for key, value in os.environ.items() if key not in outer}
    result = subprocess.run(
        [make, "-n", "--no-print-directory", target, "PYTHON=python3"],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def fresh_clone(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_make_demo_installs_the_server_extra_only_and_says_so(tmp_path: Path) -> None:
    commands = planned("demo", fresh_clone(tmp_path))
    installs = [command for command in commands if " -m pip install " in command]

    assert commands[0] == 'echo "creating the virtual environment .venv"'
    assert "python3 -m venv .venv" in commands
    assert installs == [
        ".venv/bin/python -m pip install --progress-bar off -c constraints.txt -e '.[server]'"
    ]
    assert "--quiet" not in installs[0]
    assert any(command.startswith('echo "installing fedagg and its server extra') for command in commands)
    assert commands[-1] == ".venv/bin/fedagg demo"


def test_make_test_still_installs_the_dev_tools(tmp_path: Path) -> None:
    commands = planned("test", fresh_clone(tmp_path))

    assert ".venv/bin/python -m pip install --quiet -c constraints.txt -e '.[server,dev]'" in commands
    assert commands[-1] == ".venv/bin/python -m pytest"
