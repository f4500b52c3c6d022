"""OpenFL workspaces made by fx (OpenFL 1.8 and 1.9) as a site makes them, fedagg serving their plan, and
OpenFL's own aggregator built from it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedagg.collaborator import ClientTls
from fedagg.openfl_workspace import load_openfl_workspace
from tests.interop.openfl import SIDE, CollaboratorSpec, clean_env, listening_oracle
from tests.support.process import FedaggProcess

FX_TEMPLATE = "torch/template"
"""The template fx copies; its plan is the default plan (every section from plan/defaults). Only its task
runner and data loader (torch) are swapped for openfl_side/numpy_task.py: no torch, no data needed."""


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def fx_env() -> dict[str, str]:
    """fx's environment: no fedagg paths, unbuffered output."""
    return {**clean_env(), "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class FxWorkspace:
    """An OpenFL workspace made by fx (``fx workspace create``, ``fx plan initialize``), with the numpy runner."""

    root: Path
    python: Path

    @property
    def fx(self) -> Path:
        return self.python.parent / "fx"

    @property
    def plan(self) -> Path:
        return self.root / "plan" / "plan.yaml"

    @property
    def cols(self) -> Path:
        return self.root / "plan" / "cols.yaml"

    @property
    def state_dir(self) -> Path:
        """fedagg's state when it serves this workspace's plan without storage.state_dir."""
        return self.root / "local_state" / "fedagg"

    def plan_config(self) -> dict[str, Any]:
        config: dict[str, Any] = yaml.safe_load(self.plan.read_text())
        return config

    @property
    def port(self) -> int:
        return int(self.plan_config()["network"]["settings"]["agg_port"])

    @property
    def rounds(self) -> int:
        return int(self.plan_config()["aggregator"]["settings"]["rounds_to_train"])

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``fx ARGS`` in the workspace and wait for it; its output is returned (not checked)."""
        return subprocess.run(
            [str(self.fx), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
            env=fx_env(),
            timeout=timeout,
        )

    def start(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        """Start ``fx ARGS`` in the workspace, output to ``log``.

        fx's console log is rich, wrapped at 160 columns; the same lines unwrapped (OpenFL's ``LOG_FILE``)
        go to :meth:`plain_log`.
        """
        return subprocess.Popen(
            [str(self.fx), *args],
            cwd=self.root,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**fx_env(), "LOG_FILE": f"logs/{log.name}"},
        )

    def plain_log(self, log: Path) -> Path:
        """The unwrapped log of the fx process started with console log ``log``."""
        return self.root / "logs" / log.name

    def start_collaborator(self, name: str, log: Path) -> subprocess.Popen[bytes]:
        """``fx collaborator start -n NAME``: the collaborator exactly as a site runs it."""
        return self.start(log, "collaborator", "start", "-n", name)

    def set_collaborators(self, specs: tuple[CollaboratorSpec, ...]) -> None:
        """``plan/cols.yaml`` lists ``specs``; ``plan/data.yaml`` maps each to ``data/<name>`` (its profile)."""
        self.cols.write_text(yaml.safe_dump({"collaborators": [spec.name for spec in specs]}))
        (self.root / "plan" / "data.yaml").write_text(
            "".join(f"{spec.name},data/{spec.name}\n" for spec in specs)
        )
        for spec in specs:
            self.set_profile(spec)

    def set_profile(self, spec: CollaboratorSpec) -> None:
        """(Re)write the collaborator's ``data/<name>/collaborator.json``."""
        directory = self.root / "data" / spec.name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "collaborator.json").write_text(json.dumps(spec.profile()) + "\n")

    def records(self, name: str) -> list[list[dict[str, Any]]]:
        """What each process of collaborator ``name`` did (``rounds-<pid>.json``), oldest process first."""
        files = sorted((self.root / "data" / name).glob("rounds-*.json"), key=lambda p: p.stat().st_mtime_ns)
        return [json.loads(path.read_text()) for path in files]

    def uuids(self) -> tuple[str, str]:
        """The federation and aggregator uuids, as fedagg computes them from the plan (in this process).

        They equal OpenFL's (tests/interop/test_openfl_plan.py; an fx collaborator in the same federation
        checks them too: it asserts them on every reply).
        """
        federation = load_openfl_workspace(self.plan, self.cols).overlay["federation"]
        return str(federation["federation_uuid"]), str(federation["aggregator_uuid"])

    def client_tls(self, name: str) -> ClientTls:
        """The workspace's certificate files of collaborator ``name`` (``cert/client/col_<name>.*``)."""
        cert = self.root / "cert"
        return ClientTls(
            cert / "cert_chain.crt", cert / "client" / f"col_{name}.crt", cert / "client" / f"col_{name}.key"
        )


def make_fx_workspace(
    python: Path,
    root: Path,
    specs: tuple[CollaboratorSpec, ...],
    rounds: int | None,
    port: int,
    cert_dir: Path,
    *,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> FxWorkspace:
    """Build a workspace as a site would: ``fx workspace create --template torch/template``, then the plan
    as fx merged it with its defaults, with only these changes: ``rounds_to_train`` (unless ``rounds`` is
    None: the template's), ``agg_port`` (a fixed free port instead of ``auto``, set before fx computes the
    plan hash), ``client_reconnect_interval: 1``, the numpy task runner and data loader, and whatever
    ``edit`` does; ``plan/cols.yaml`` lists ``specs``, ``plan/data.yaml`` maps each to ``data/<name>``;
    ``cert/`` is copied from ``cert_dir`` (OpenFL's layout, e.g. ``fedagg certs``' ``openfl/cert/``);
    finally ``fx plan initialize -a localhost`` writes ``save/init.pbuf`` (zeros) and the plan with
    ``agg_addr: localhost``.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    created = subprocess.run(
        [str(python.parent / "fx"), "workspace", "create", "--prefix", root.name, "--template", FX_TEMPLATE],
        cwd=root.parent,
        capture_output=True,
        text=True,
        check=False,
        env=fx_env(),
        timeout=120,
    )
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
    workspace = FxWorkspace(root, python)
    shutil.copy(SIDE / "numpy_task.py", root / "src" / "numpy_task.py")

    plan = workspace.plan_config()
    if rounds is not None:
        plan["aggregator"]["settings"]["rounds_to_train"] = rounds
    network = plan["network"]["settings"]
    network["agg_port"] = port
    network["client_reconnect_interval"] = 1
    plan["data_loader"]["template"] = "src.numpy_task.PlanDataLoader"
    plan["task_runner"]["template"] = "src.numpy_task.PlanTaskRunner"
    if edit is not None:
        edit(plan)
    workspace.plan.write_text(yaml.safe_dump(plan))
    workspace.set_collaborators(specs)
    shutil.copytree(cert_dir, root / "cert", dirs_exist_ok=True)

    initialized = workspace.run("plan", "initialize", "-a", "localhost")
    assert initialized.returncode == 0, initialized.stdout[-5000:] + initialized.stderr[-3000:]
    assert (root / "save" / "init.pbuf").is_file(), initialized.stdout[-3000:]
    return workspace


def copy_fx_workspace(
    workspace: FxWorkspace,
    root: Path,
    port: int,
    *,
    specs: tuple[CollaboratorSpec, ...] | None = None,
    rounds: int | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> FxWorkspace:
    """Another site of ``workspace``'s plan: the workspace copied (before anything ran in it) with
    ``agg_port`` changed, so its plan hashes to another federation, and optionally other collaborators
    (``specs``: cols, data, profiles), ``rounds`` and plan changes (``edit``), as an operator edits an
    initialized workspace.

    fx reads the plan at every start and ``fx plan initialize``'s outputs (``save/init.pbuf``, the merged
    plan) do not depend on these settings, so this equals building the workspace anew with fx; it spares
    the OpenFL processes of ``fx workspace create`` and ``fx plan initialize`` (several seconds of CPU each).
    """
    shutil.copytree(workspace.root, root)
    copy = FxWorkspace(root, workspace.python)
    plan = copy.plan_config()
    plan["network"]["settings"]["agg_port"] = port
    if rounds is not None:
        plan["aggregator"]["settings"]["rounds_to_train"] = rounds
    if edit is not None:
        edit(plan)
    copy.plan.write_text(yaml.safe_dump(plan))
    if specs is not None:
        copy.set_collaborators(specs)
    return copy


def write_ops_config(directory: Path, **sections: dict[str, Any]) -> Path:
    """A fedagg ``--config`` for serving a workspace: loopback, ephemeral ops ports, short sleeps, no hooks.

    It sets nothing the plan says (federation, port, TLS files), except what ``sections`` add.
    """
    config: dict[str, Any] = {
        "federation": {"sleep_seconds": 1},
        "server": {"bind_address": "127.0.0.1", "auth_failure_max_delay": 0},
        "ops": {
            "bind_address": "127.0.0.1",
            "port": 0,
            "metrics_bind_address": "127.0.0.1",
            "metrics_port": 0,
            "drain_seconds": 0.5,
            "grace_seconds": 10,
        },
        "hooks": {"kubernetes": {"enabled": "false"}},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ops.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve_workspace(workspace: FxWorkspace, directory: Path, rounds_kept: int, *extra: str) -> FedaggProcess:
    """``fedagg serve --openfl-plan plan/plan.yaml --openfl-cols plan/cols.yaml --config ops.yaml``,
    listening.

    ``rounds_kept`` global models stay in the state directory (enough to compare every round).
    """
    config = write_ops_config(directory, federation={"sleep_seconds": 1, "rounds_kept": rounds_kept})
    process = FedaggProcess(
        config, "--openfl-plan", str(workspace.plan), "--openfl-cols", str(workspace.cols), *extra
    )
    return process.wait_for_federation(timeout=60)


def start_plan_oracle(
    workspace: FxWorkspace, output: Path, *, sleep_time: int | None = 1, timeout: float = 300
) -> tuple[subprocess.Popen[str], int]:
    """OpenFL's own aggregator built from the workspace's plan (``Plan.get_aggregator()``), in the workspace,
    on 127.0.0.1 and the plan's port, with the workspace's certificates. Returns the process and its port.

    ``sleep_time`` replaces the 10 s OpenFL tells idle collaborators to sleep (None: keep it); like fedagg's
    ``federation.sleep_seconds``, it changes only how long a round takes, never its result.
    """
    output.mkdir(parents=True, exist_ok=True)
    cert = workspace.root / "cert"
    command = [
        str(workspace.python),
        str(SIDE / "oracle_aggregator.py"),
        "--plan",
        str(workspace.plan),
        "--cols",
        str(workspace.cols),
        "--port",
        str(workspace.port),
        "--ca",
        str(cert / "cert_chain.crt"),
        "--cert",
        str(cert / "server" / "agg_localhost.crt"),
        "--key",
        str(cert / "server" / "agg_localhost.key"),
        "--output",
        str(output),
        *(["--sleep-time", str(sleep_time)] if sleep_time is not None else []),
        "--timeout",
        str(timeout),
    ]
    return listening_oracle(command, output, workspace.root)


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """A list to put started processes in; whatever still runs at the end is killed (tests that fail)."""
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
