"""A real OpenFL collaborator (``Collaborator`` + ``AggregatorGRPCClient``) for the benchmark, with timestamps.

Runs only with an OpenFL venv's python (``.venv-openfl``, built by ``scripts/openfl-venv``); fedagg never
imports openfl. It is tests/interop/openfl_side/collaborator.py without the bookkeeping that a correctness test
needs and a benchmark cannot afford: that runner keeps every round's global and trained model as Python lists
(about 32 bytes per parameter, 6 GB for a 100M-parameter model), this one keeps nothing but OpenFL's own state.
The training arithmetic is the same (``trained = global + step * (round + 1)``, ``acc = mean(weights) + step``),
the task list is the default plan's, and OpenFL's code (collaborator loop, tensor database, client, delta
updates) runs unmodified. The client is OpenFL's, subclassed only to write down when each call started and
ended (wall clock, comparable across processes), so round times come from the same code for both aggregators.

``--timings FILE`` receives JSON ``{"name", "calls": [[call, round, started, ended], ...]}`` with ``call`` one
of ``get_tasks`` (``round`` is the round of the tasks received, or -1 for a sleep or quit reply),
``get_tensor`` and ``send_results``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from openfl.component.collaborator.collaborator import Collaborator
from openfl.federated.task.runner import TaskRunner
from openfl.transport.grpc.aggregator_client import AggregatorGRPCClient
from openfl.utilities import TensorKey, change_tags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's root
from tests.interop.openfl_side.numpy_task import TASK_CONFIG, SizedLoader

logger = logging.getLogger("bench.openfl_collaborator")


class LeanRunner(TaskRunner):
    """Deterministic numpy task runner that holds only the weights it was last given."""

    def __init__(self, loader: SizedLoader, shapes: dict[str, tuple[int, ...]], step: float) -> None:
        super().__init__(loader)
        self.shapes = shapes
        self.step = step

    def get_required_tensorkeys_for_function(self, func_name: str, **kwargs: Any) -> list[TensorKey]:
        if func_name == "validate_task" and kwargs["apply"] == "local":
            return [TensorKey(name, "LOCAL", 0, False, ("trained",)) for name in self.shapes]
        return [TensorKey(name, "GLOBAL", 0, False, ("model",)) for name in self.shapes]

    def _inputs(self, tensors: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays = {name: np.asarray(tensors[name], np.float32) for name in self.shapes}
        for name, array in arrays.items():
            if array.shape != tuple(self.shapes[name]):
                raise ValueError(f"tensor {name!r} has shape {array.shape}, expected {self.shapes[name]}")
        return arrays

    @staticmethod
    def _mean(arrays: dict[str, np.ndarray]) -> float:
        total = sum(float(array.sum(dtype=np.float64)) for array in arrays.values())
        return total / sum(array.size for array in arrays.values())

    def train_task(
        self, col_name: str, round_num: int, input_tensor_dict: dict[str, Any], **kwargs: Any
    ) -> tuple[dict[TensorKey, Any], dict[TensorKey, Any]]:
        increment = np.float32(self.step * (round_num + 1))
        trained = {name: array + increment for name, array in self._inputs(input_tensor_dict).items()}
        loss = np.float32(self.step / (round_num + 1))
        out: dict[TensorKey, Any] = {TensorKey("loss", col_name, round_num, True, ("metric",)): loss}
        out.update({TensorKey(k, col_name, round_num, False, ("trained",)): v for k, v in trained.items()})
        return out, {}

    def validate_task(
        self, col_name: str, round_num: int, input_tensor_dict: dict[str, Any], **kwargs: Any
    ) -> tuple[dict[TensorKey, Any], dict[TensorKey, Any]]:
        local = kwargs["apply"] == "local"
        acc = np.float32(self._mean(self._inputs(input_tensor_dict)) + self.step)
        tags = change_tags(("metric",), add_field="validate_local" if local else "validate_agg")
        return {TensorKey("acc", col_name, round_num, True, tags): acc}, {}


class TimedClient(AggregatorGRPCClient):
    """OpenFL's client; every call's start and end go to :attr:`calls`."""

    calls: list[list[Any]]

    def get_tasks(self, collaborator_name: str) -> Any:
        started = time.time()
        reply = super().get_tasks(collaborator_name)
        tasks, round_number, _sleep, _quit = reply
        self.calls.append(["get_tasks", round_number if tasks else -1, started, time.time()])
        return reply

    def get_aggregated_tensor(
        self, collaborator_name: str, tensor_name: str, round_number: int, *args: Any
    ) -> Any:
        started = time.time()
        reply = super().get_aggregated_tensor(collaborator_name, tensor_name, round_number, *args)
        self.calls.append(["get_tensor", round_number, started, time.time()])
        return reply

    def send_local_task_results(self, collaborator_name: str, round_number: int, *args: Any) -> Any:
        started = time.time()
        reply = super().send_local_task_results(collaborator_name, round_number, *args)
        self.calls.append(["send_results", round_number, started, time.time()])
        return reply


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    return {str(name): tuple(int(d) for d in dims) for name, dims in json.loads(text).items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--aggregator-uuid", required=True)
    p.add_argument("--federation-uuid", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--shapes", type=parse_shapes, required=True, help='JSON like {"w": [2, 3]}')
    p.add_argument("--step", type=float, default=1.0)
    p.add_argument("--train-size", type=int, default=10)
    p.add_argument("--valid-size", type=int, default=5)
    p.add_argument(
        "--delta-updates", choices=("true", "false"), default="true", help="OpenFL's default: true"
    )
    p.add_argument("--timings", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=1800, help="exit 3 after this many seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    def expire() -> None:
        logger.error("%s: no quit job after %.0f s", args.name, args.timeout)
        os._exit(3)

    timer = threading.Timer(args.timeout, expire)
    timer.daemon = True
    timer.start()

    client = TimedClient(
        "localhost",
        args.port,
        root_certificate=args.ca,
        certificate=args.cert,
        private_key=args.key,
        use_tls=args.ca is not None,
        require_client_auth=args.cert is not None,
        aggregator_uuid=args.aggregator_uuid,
        federation_uuid=args.federation_uuid,
        single_col_cert_common_name=None,
        client_reconnect_interval=1,
    )
    client.calls = []
    collaborator = Collaborator(
        collaborator_name=args.name,
        aggregator_uuid=args.aggregator_uuid,
        federation_uuid=args.federation_uuid,
        client=client,
        task_runner=LeanRunner(SizedLoader(args.train_size, args.valid_size), args.shapes, args.step),
        task_config=TASK_CONFIG,
        opt_treatment="RESET",
        delta_updates=args.delta_updates == "true",
        compression_pipeline=None,
        db_store_rounds=1,
    )
    collaborator.run()  # returns when the aggregator sends quit
    args.timings.write_text(json.dumps({"name": args.name, "calls": client.calls}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
