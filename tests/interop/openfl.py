"""Running the real OpenFL (1.7.1, 1.8, 1.9: collaborators, its own aggregator, its model tools) in separate
processes. Workspaces made by fx are in fx_workspace.py; comparing what the aggregators produced, in
openfl_results.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedagg.collaborator import ClientTls
from fedagg.federation.plan import StragglerPolicyKind, StragglerPolicySpec
from tests.conftest import require
from tests.support.pki import Pki, tls_options

ROOT = Path(__file__).resolve().parents[2]
SIDE = ROOT / "tests" / "interop" / "openfl_side"
TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")


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
    reconnect_seconds: int = 1,
) -> subprocess.Popen[bytes]:
    """Start a real OpenFL Collaborator process against localhost:port over mTLS.

    ``python`` picks the OpenFL version (``openfl_python(version)``). ``tls`` overrides the client
    certificate (default: ``pki``'s certificate of ``spec.name``), e.g. for an impostor or an fx
    workspace's ``cert/client/col_<name>.*``. ``reconnect_seconds`` is the client's ``client_reconnect_interval``
    (1.8/1.9 wait that long before each retry; their default is 5).
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
        *tls_options(tls),
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
        "--reconnect-interval",
        str(reconnect_seconds),
        "--result",
        str(result),
        "--timeout",
        str(timeout),
    ]
    return subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=clean_env())


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
    train_aggregation: dict[str, Any] | None = None,
    sleep_time: int | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """Start OpenFL's own aggregator; return the process and its port.

    ``stragglers`` picks OpenFL's straggler handling policy the way a fedagg plan's does (None: OpenFL's
    default, ``CutoffTimeBasedStragglerHandling`` with an infinite cutoff, i.e. wait for everyone).
    ``train_aggregation``: the train task's ``aggregation_type`` as a plan gives it (``template``, ``settings``;
    None: WeightedAverage). ``sleep_time`` replaces the 10 s OpenFL tells idle collaborators to sleep (None: keep
    it); it changes how long a round takes, never its result.
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
        *(["--train-aggregation", json.dumps(train_aggregation)] if train_aggregation else []),
        *(["--sleep-time", str(sleep_time)] if sleep_time is not None else []),
        "--timeout",
        "300",
    ]
    return listening_oracle(command, output)


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
        env=clean_env(),
        timeout=120,
    )
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def listening_oracle(
    command: list[str], output: Path, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], int]:
    """Start OpenFL's aggregator (oracle_aggregator.py, its log in ``output/oracle.log``) and read its port."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=(output / "oracle.log").open("wb"),
        text=True,
        env=clean_env(),
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("PORT="):
            return process, int(line.removeprefix("PORT=").strip())
    raise AssertionError(
        f"the OpenFL aggregator exited with {process.wait()} before listening:\n"
        + (output / "oracle.log").read_text()[-3000:]
    )


def clean_env() -> dict[str, str]:
    """Environment without this venv's paths, so OpenFL never sees fedagg's packages."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
