"""Driving the federation core's upload path without a network, as the servicer does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedagg.federation.federation import Federation, Outcome, TaskReply
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import encode_tensor
from fedagg.protocol.results import ResultsHeader, TaskResultsDecoder
from fedagg.protocol.tensor_fields import TensorRecord
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
) -> Outcome:
    """Admit, check, spool, seal and commit one upload as the servicer does; returns its outcome."""
    payload = task_results_bytes(collaborator, round_number, task, data_size, tensors)
    decoder = TaskResultsDecoder()
    events = [*decoder.feed(payload), *decoder.finish()]
    header = next(event for event in events if isinstance(event, ResultsHeader))
    admission = federation.admit(collaborator, header)
    if not admission.accepted:
        federation.note_ignored(admission)
        return Outcome(admission)
    intake = federation.open_intake(admission)
    for event in events:
        if isinstance(event, TensorRecord):
            intake.tensor(event)
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        intake.absorb(view[start : start + chunk], start)
    federation.seal(intake)
    return federation.commit(intake)


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
) -> Outcome:
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


def validate_locally(
    federation: Federation, collaborator: str, round_number: int, value: float = 1.0
) -> Outcome:
    """The locally tuned model's validation task: an ``acc`` metric of ``value``."""
    return submit(
        federation,
        collaborator,
        round_number,
        TASKS[2],
        5,
        [metric("acc", value, round_number, "validate_local")],
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
        validate_locally(federation, collaborator, round_number, value)


def hand_out(federation: Federation, collaborator: str) -> TaskReply:
    """GetTasks as the servicer answers it: a quit job is recorded before it is handed out."""
    reply = federation.get_tasks(collaborator)
    if reply.quit and not reply.quit_recorded:
        federation.record_quit(collaborator)
    return reply
