"""A round's work for the ingest tier's round tests, and what it is compared with: the single pod's federation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from fedagg.federation.federation import Federation
from fedagg.federation.serving import TensorRequest
from fedagg.protocol import base_pb2
from tests.support.servers import make_federation
from tests.support.uploads import metric, submit
from tests.tier.conftest import COLLABORATORS
from tests.tier.ingest_tier import INITIAL, PLAN, Root, site_weight, trained

Work = tuple[str, int, list[base_pb2.NamedTensor]]


def work(index: int, round_number: int) -> list[Work]:
    """Collaborator ``index``'s three tasks of a round: (task, data size, tensors)."""
    value = 0.1 * (index + 1) + round_number
    return [
        ("aggregated_model_validation", 5, [metric("acc", value, round_number, "validate_agg")]),
        ("train", site_weight(index), trained(index, round_number)),
        ("locally_tuned_model_validation", 5, [metric("acc", value, round_number, "validate_local")]),
    ]


def single_pod(state: Path) -> Federation:
    federation = make_federation(state, PLAN, INITIAL)
    for round_number in range(PLAN.rounds_to_train):
        for index, name in enumerate(COLLABORATORS):
            for task, size, tensors in work(index, round_number):
                assert submit(federation, name, round_number, task, size, tensors).accepted
    return federation


def model(federation: Federation, round_number: int) -> dict[str, np.ndarray]:
    return {
        name: np.array(
            federation.served_tensor(TensorRequest(name, round_number, False, ("model",), True)).values()
        )
        for name in INITIAL
    }


async def tick_on_partials(root: Root) -> None:
    """The root's round end runs as a partial arrives (as its server ticks it)."""
    loop = asyncio.get_running_loop()
    while True:
        await root.service.partial_arrived.wait()
        root.service.partial_arrived.clear()
        await loop.run_in_executor(None, root.parts.federation.tick)
