"""Driving the federation core's upload path without a network, as the servicer does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedagg.federation.federation import Admission, Federation
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import encode_tensor
from fedagg.protocol.results import ResultsHeader, TaskResultsDecoder
from fedagg.protocol.stream import TensorRecord
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID

TASKS = ("aggregated_model_validation", "train", "locally_tuned_model_validation")


def task_results_bytes(
    collaborator: str, round_number: int, task: str, data_size: int, tensors: Sequence[base_pb2.NamedTensor]
) -> bytes:
    return aggregator_pb2.TaskResults(
        header=aggregator_pb2.MessageHeader(
            sender=collaborator, receiver=AGGREGATOR_UUID, federation_uuid=FEDERATION_UUID
        ),
        round_number=round_number,
        task_name=task,
        data_size=data_size,
        tensors=list(tensors),
    ).SerializeToString()


def submit(
    federation: Federation,
    collaborator: str,
    round_number: int,
    task: str,
    data_size: int,
    tensors: Sequence[base_pb2.NamedTensor],
    chunk: int = 1000,
) -> Admission:
    """Decode, admit, validate, spool and commit one upload; returns the final admission."""
    payload = task_results_bytes(collaborator, round_number, task, data_size, tensors)
    decoder = TaskResultsDecoder()
    events = []
    for start in range(0, len(payload), chunk):
        events += decoder.feed(payload[start : start + chunk])
    events += decoder.finish()
    header = events[0]
    assert isinstance(header, ResultsHeader)
    admission = federation.admit(collaborator, header)
    if not admission.accepted:
        return admission
    uploaded = tuple(
        federation.check_tensor(admission, event) for event in events if isinstance(event, TensorRecord)
    )
    spool = federation.open_spool()
    spool.write(payload)
    spool.sync()
    return federation.commit(admission, spool, uploaded)


def metric(name: str, value: float, round_number: int, *tags: str) -> base_pb2.NamedTensor:
    return encode_tensor(
        name, np.float32(value), round_number=round_number, tags=("metric", *tags), report=True
    )


def weights(
    name: str, value: float, shape: tuple[int, ...], round_number: int, delta: bool = False
) -> base_pb2.NamedTensor:
    tags = ("trained", "delta") if delta else ("trained",)
    return encode_tensor(
        name, np.full(shape, value, np.float32), round_number=round_number, tags=tags, lossless=not delta
    )


def submit_training(
    federation: Federation,
    collaborator: str,
    round_number: int,
    value: float,
    size: int,
    shapes: dict[str, tuple[int, ...]],
    delta: bool = False,
) -> Admission:
    """The train task's upload: a loss metric and every weight set to ``value``."""
    trained = [weights(name, value, shape, round_number, delta) for name, shape in shapes.items()]
    return submit(
        federation,
        collaborator,
        round_number,
        TASKS[1],
        size,
        [metric("loss", value, round_number), *trained],
    )


def run_round(
    federation: Federation,
    round_number: int,
    contributions: dict[str, tuple[float, int]],
    shapes: dict[str, tuple[int, ...]],
    delta: bool = False,
) -> None:
    """Every collaborator runs the three default tasks; training sets every weight to ``value``."""
    for collaborator, (value, size) in contributions.items():
        submit(
            federation,
            collaborator,
            round_number,
            TASKS[0],
            5,
            [metric("acc", value, round_number, "validate_agg")],
        )
        submit_training(federation, collaborator, round_number, value, size, shapes, delta)
        submit(
            federation,
            collaborator,
            round_number,
            TASKS[2],
            5,
            [metric("acc", value, round_number, "validate_local")],
        )
