"""Running the real OpenFL (1.7.1, 1.8, 1.9: collaborators, its own aggregator, fx, its model tools) in
separate processes."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedagg.collaborator import ClientTls
from fedagg.federation.plan import StragglerPolicyKind, StragglerPolicySpec
from fedagg.federation.store import StateStore
from fedagg.openfl_workspace import load_openfl_workspace
from fedagg.protocol.model_file import read_model
from tests.conftest import require
from tests.support.pki import Pki
from tests.support.process import FedaggProcess

ROOT = Path(__file__).resolve().parents[2]
SIDE = ROOT / "tests" / "interop" / "openfl_side"
TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")
MetricKey = tuple[int, str, str]
"""(round, task, metric) of an aggregated metric."""


def openfl_python(version: str = "1.7.1") -> Path:
    """The python of OpenFL ``version``'s venv (1.7.1, 1.8 or 1.9), building the venv on first use.

    The venvs are cached (``.venv-openfl/`` for 1.7.1, ``.venv-openfl-<version>/`` otherwise) and pinned by
    ``tests/interop/openfl[-<version>]-constraints.txt``; see ``scripts/openfl-venv``.
    """
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "openfl-venv"), version],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    require(result.returncode == 0, f"cannot build the OpenFL {version} venv: {result.stderr[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class CollaboratorSpec:
    """One OpenFL collaborator's training behaviour (see openfl_side/collaborator.py).

    ``stall_before_task`` with ``stall_seconds`` makes it a deterministic straggler: it sleeps that long at
    the start of that task's work in every round, or only in ``stall_round`` (the uploads of the tasks
    before it are already sent). In an fx workspace the same fields are the collaborator's
    ``data/<name>/collaborator.json`` (see openfl_side/numpy_task.py).
    """

    name: str
    step: float
    train_size: int
    valid_size: int
    stall_before_task: str | None = None
    stall_seconds: float = 0.0
    stall_round: int | None = None

    def profile(self) -> dict[str, Any]:
        """The ``collaborator.json`` of an fx workspace's data directory."""
        profile: dict[str, Any] = {
            "step": self.step,
            "train_size": self.train_size,
            "valid_size": self.valid_size,
        }
        if self.stall_before_task:
            profile["stall"] = {
                "task": self.stall_before_task,
                "seconds": self.stall_seconds,
                "round": self.stall_round,
            }
        return profile


def start_collaborator(
    python: Path,
    spec: CollaboratorSpec,
    port: int,
    federation_uuid: str,
    aggregator_uuid: str,
    pki: Pki | None,
    delta: bool,
    result: Path,
    log: Path,
    *,
    tls: ClientTls | None = None,
    timeout: float = 240,
) -> subprocess.Popen[bytes]:
    """Start a real OpenFL Collaborator process against localhost:port over mTLS.

    ``python`` picks the OpenFL version (``openfl_python(version)``). ``tls`` overrides the client
    certificate (default: ``pki``'s certificate of ``spec.name``), e.g. for an impostor or an fx
    workspace's ``cert/client/col_<name>.*``.
    """
    if tls is None:
        assert pki is not None, "give pki or tls"
        tls = pki.client(spec.name)
    command = [
        str(python),
        str(SIDE / "collaborator.py"),
        "--name",
        spec.name,
        "--address",
        "localhost",
        "--port",
        str(port),
        "--aggregator-uuid",
        aggregator_uuid,
        "--federation-uuid",
        federation_uuid,
        "--ca",
        str(tls.root_certificate),
        "--cert",
        str(tls.certificate),
        "--key",
        str(tls.private_key),
        "--delta-updates",
        str(delta).lower(),
        "--step",
        str(spec.step),
        "--train-size",
        str(spec.train_size),
        "--valid-size",
        str(spec.valid_size),
        *(
            ["--stall-before-task", spec.stall_before_task, "--stall-seconds", str(spec.stall_seconds)]
            if spec.stall_before_task
            else []
        ),
        *(["--stall-round", str(spec.stall_round)] if spec.stall_round is not None else []),
        "--result",
        str(result),
        "--timeout",
        str(timeout),
    ]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=_clean_env())


def start_oracle(
    python: Path,
    collaborators: list[str],
    rounds: int,
    init_model: Path,
    federation_uuid: str,
    aggregator_uuid: str,
    pki: Pki,
    state_dir: Path,
    output: Path,
    *,
    stragglers: StragglerPolicySpec | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """Start OpenFL's own aggregator; return the process and its port.

    ``stragglers`` picks OpenFL's straggler handling policy the way a fedagg plan's does (None: OpenFL's
    default, ``CutoffTimeBasedStragglerHandling`` with an infinite cutoff, i.e. wait for everyone).
    """
    command = [
        str(python),
        str(SIDE / "oracle_aggregator.py"),
        "--port",
        "0",
        "--collaborators",
        ",".join(collaborators),
        "--rounds",
        str(rounds),
        "--init-model",
        str(init_model),
        "--federation-uuid",
        federation_uuid,
        "--aggregator-uuid",
        aggregator_uuid,
        "--ca",
        str(pki.ca),
        "--cert",
        str(pki.server_dir / "tls.crt"),
        "--key",
        str(pki.server_dir / "tls.key"),
        "--state-dir",
        str(state_dir),
        "--output",
        str(output),
        *_oracle_straggler_args(stragglers),
        "--timeout",
        "300",
    ]
    return _listening_oracle(command, output)


def _oracle_straggler_args(spec: StragglerPolicySpec | None) -> list[str]:
    """oracle_aggregator.py's options for the OpenFL policy that ``spec`` describes."""
    if spec is None:
        return []
    minimum = ["--minimum-reporting", str(spec.minimum_reporting)]
    if spec.kind == StragglerPolicyKind.PERCENTAGE:
        return [
            "--straggler-policy",
            "percentage",
            "--percent-collaborators-needed",
            repr(spec.percent_needed),
            *minimum,
        ]
    cutoff = "inf" if math.isinf(spec.cutoff_seconds) else repr(spec.cutoff_seconds)
    return ["--straggler-policy", "cutoff_time", "--straggler-cutoff-time", cutoff, *minimum]


def pbuf_to_npz(python: Path, source: Path, target: Path) -> dict[str, object]:
    """Read a .pbuf with OpenFL's own deconstruct_model_proto; return its JSON summary."""
    return _json_from(python, "pbuf_tool.py", "to-npz", str(source), str(target))


def plan_uuid(python: Path, plan: Path, cols: Path) -> dict[str, object]:
    """What OpenFL's Plan.parse computes for a plan and cols file."""
    return _json_from(python, "plan_uuid.py", "--plan", str(plan), "--cols", str(cols))


def _json_from(python: Path, script: str, *args: str) -> dict[str, object]:
    result = subprocess.run(
        [str(python), str(SIDE / script), *args],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
        timeout=120,
    )
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def _listening_oracle(
    command: list[str], output: Path, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start OpenFL's aggregator (oracle_aggregator.py, its log in ``output/oracle.log``) and read its port."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=(output / "oracle.log").open("wb"),
        text=True,
        env=_clean_env(),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("PORT="):
            return process, int(line.removeprefix("PORT=").strip())
    raise AssertionError(
        f"the OpenFL aggregator exited with {process.wait()} before listening:\n"
        + (output / "oracle.log").read_text()[-3000:]
    )


def _clean_env() -> dict[str, str]:
    """Environment without this venv's paths, so OpenFL never sees fedagg's packages."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


# ---- fx workspaces (OpenFL 1.8 and 1.9) -------------------------------------------------------------------

FX_TEMPLATE = "torch/template"
"""The template fx copies; its plan is the default plan (every section from plan/defaults). Only its task
runner and data loader (torch) are swapped for openfl_side/numpy_task.py: no torch, no data needed."""


def free_port() -> int:
    """A loopback port the kernel just handed out (fx needs the port in the plan before anything listens)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def fx_env() -> dict[str, str]:
    """fx's environment: no fedagg paths, unbuffered output."""
    return {**_clean_env(), "PYTHONUNBUFFERED": "1"}


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
    return _listening_oracle(command, output, workspace.root)


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


# ---- results -----------------------------------------------------------------------------------------------


def fedagg_models(state_dir: Path, rounds: int) -> list[dict[str, np.ndarray]]:
    """The model fedagg aggregated in each round (round r's aggregate is the global model of round r+1)."""
    store = StateStore(state_dir)
    return [dict(read_model(store.model_path(r + 1)).tensors) for r in range(rounds)]


def fedagg_metrics(state_dir: Path, rounds: int) -> dict[MetricKey, float]:
    """fedagg's aggregated metrics of the first ``rounds`` rounds, from its state directory."""
    return {
        (int(m["round_number"]), str(m["task"]), str(m["name"])): float(m["value"])
        for m in StateStore(state_dir).load_metrics(rounds)
        if m["origin"] == "aggregator"
    }


def oracle_models(output: Path, rounds: int) -> list[dict[str, np.ndarray]]:
    """The model OpenFL's aggregator produced in each round (``round-<r>.npz`` of oracle_aggregator.py)."""
    models = []
    for r in range(rounds):
        with np.load(output / f"round-{r}.npz") as archive:
            models.append({name: archive[name] for name in archive.files})
    return models


def oracle_metrics(output: Path) -> dict[MetricKey, float]:
    """OpenFL's aggregated metrics (``metrics.json`` of oracle_aggregator.py)."""
    return {
        (int(m["round"]), str(m["task_name"]), str(m["metric_name"])): float(m["metric_value"])
        for m in json.loads((output / "metrics.json").read_text())
    }


def closed_form(
    specs: tuple[CollaboratorSpec, ...], rounds: int
) -> tuple[list[float], dict[MetricKey, float]]:
    """What every aggregator must produce when all ``specs`` count in every round (WeightedAverage).

    Returns the value of every element of each round's aggregated model, and the aggregated metrics: with
    weights n (train size) and v (valid size), G(0) = 0 and G(r+1) = G(r) + (r+1) * sum(n s) / sum(n).
    """
    n = np.array([s.train_size for s in specs], np.float64)
    v = np.array([s.valid_size for s in specs], np.float64)
    step = np.array([s.step for s in specs], np.float64)
    models, metrics, model = [], {}, 0.0
    for r in range(rounds):
        trained = model + step * (r + 1)
        metrics[(r, "aggregated_model_validation", "acc")] = float(np.sum(v * (model + step)) / v.sum())
        metrics[(r, "train", "loss")] = float(np.sum(n * step / (r + 1)) / n.sum())
        metrics[(r, "locally_tuned_model_validation", "acc")] = float(np.sum(v * (trained + step)) / v.sum())
        model = float(np.sum(n * trained) / n.sum())
        models.append(model)
    return models, metrics


def assert_models_equal(
    actual: list[dict[str, np.ndarray]], expected: list[dict[str, np.ndarray]], what: str
) -> None:
    assert len(actual) == len(expected), what
    for r, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.keys() == want.keys(), (what, r)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=f"{what}: round {r} {name}")


def assert_models_closed_form(actual: list[dict[str, np.ndarray]], expected: list[float], what: str) -> None:
    assert len(actual) == len(expected), what
    for r, (got, value) in enumerate(zip(actual, expected, strict=True)):
        for name, array in got.items():
            np.testing.assert_allclose(
                array, np.full(array.shape, value, np.float32), rtol=1e-6, err_msg=f"{what}: round {r} {name}"
            )


def assert_metrics_equal(actual: dict[MetricKey, float], expected: dict[MetricKey, float], what: str) -> None:
    assert actual.keys() == expected.keys(), (what, sorted(actual), sorted(expected))
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-6), (what, key, actual[key], value)


def assert_fedagg_closed_form(workspace: FxWorkspace, specs: tuple[CollaboratorSpec, ...], what: str) -> None:
    """fedagg's models and metrics are what ``specs`` give when all of them count in every round."""
    rounds = workspace.rounds
    models, metrics = closed_form(specs, rounds)
    assert_models_closed_form(fedagg_models(workspace.state_dir, rounds), models, what)
    assert_metrics_equal(fedagg_metrics(workspace.state_dir, rounds), metrics, what)


def assert_last_model(
    workspace: FxWorkspace, directory: Path, rounds: int, final: dict[str, Any], openfl_reader: bool
) -> None:
    """fedagg's ``save/last.pbuf`` (the plan's last_state_path) is the final aggregate (round R).

    ``openfl_reader``: read it with OpenFL's own ``deconstruct_model_proto`` (another OpenFL process).
    """
    path = workspace.root / "save" / "last.pbuf"
    if openfl_reader:
        summary = pbuf_to_npz(workspace.python, path, directory / "last.npz")
        assert summary["round_number"] == rounds, "fedagg's last.pbuf holds round R (OpenFL's reader)"
        with np.load(directory / "last.npz") as archive:
            last = {name: archive[name] for name in archive.files}
    else:
        model = read_model(path)
        assert model.round_number == rounds, "fedagg's last.pbuf holds round R"
        last = dict(model.tensors)
    assert_models_equal([last], [final], "fedagg's last.pbuf vs the final model")
