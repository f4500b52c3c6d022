"""Building replies: protobuf messages from federation answers, and large replies as bytes off the event loop.

A tensor reply is the small reply head followed by the tensor, whose data is a view of a model file: joining them
is the one copy of the tensor a reply costs, so :func:`tensor_reply` and :func:`trained_model_reply` run in an
executor thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedagg.federation.events import ExperimentStatus
from fedagg.federation.federation import TaskReply
from fedagg.federation.metric_log import MetricRecord
from fedagg.federation.plan import FederationPlan
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.wire import length_delimited_prefix

_TENSOR_FIELD = 3  # GetAggregatedTensorResponse.tensor
_MODEL_PROTO_FIELD = 1  # TrainedModelResponse.model_proto


def reply_header(plan: FederationPlan, collaborator: str) -> aggregator_pb2.MessageHeader:
    """The header of every reply to ``collaborator``: from this aggregator, of this federation."""
    return aggregator_pb2.MessageHeader(
        sender=plan.aggregator_uuid,
        receiver=collaborator,
        federation_uuid=plan.federation_uuid,
        single_col_cert_common_name=plan.single_col_cert_common_name,
    )


def tasks_reply(header: aggregator_pb2.MessageHeader, reply: TaskReply) -> aggregator_pb2.GetTasksResponse:
    """GetTasksResponse: every Task field filled (name, function, type, apply_local), as OpenFL 1.7.1 reads them."""
    return aggregator_pb2.GetTasksResponse(
        header=header,
        round_number=reply.round_number,
        tasks=[
            aggregator_pb2.Task(
                name=task.name,
                function_name=task.function,
                task_type=task.task_type,
                apply_local=task.apply_local,
            )
            for task in reply.tasks
        ],
        sleep_time=reply.sleep_seconds,
        quit=reply.quit,
    )


def tensor_reply(
    header: aggregator_pb2.MessageHeader, round_number: int, tensor: Sequence[bytes | memoryview]
) -> bytes:
    """A serialized GetAggregatedTensorResponse around a NamedTensor given as parts (copies them: off the loop)."""
    head = aggregator_pb2.GetAggregatedTensorResponse(header=header, round_number=round_number)
    size = sum(len(part) for part in tensor)
    return b"".join((head.SerializeToString(), length_delimited_prefix(_TENSOR_FIELD, size), *tensor))


def tensor_reply_size(header: aggregator_pb2.MessageHeader, round_number: int, tensor_size: int) -> int:
    """Bytes of :func:`tensor_reply` for a NamedTensor of ``tensor_size`` bytes."""
    head = aggregator_pb2.GetAggregatedTensorResponse(header=header, round_number=round_number)
    return head.ByteSize() + len(length_delimited_prefix(_TENSOR_FIELD, tensor_size)) + tensor_size


def trained_model_reply(model: bytes | memoryview) -> bytes:
    """A serialized TrainedModelResponse around a .pbuf file's bytes (copies them once: run off the loop)."""
    return b"".join((length_delimited_prefix(_MODEL_PROTO_FIELD, len(model)), model))


def trained_model_reply_size(model_size: int) -> int:
    """Bytes of :func:`trained_model_reply` for a model file of ``model_size`` bytes."""
    return len(length_delimited_prefix(_MODEL_PROTO_FIELD, model_size)) + model_size


def description_reply(status: ExperimentStatus) -> aggregator_pb2.GetExperimentDescriptionResponse:
    """GetExperimentDescriptionResponse from the federation's status."""
    return aggregator_pb2.GetExperimentDescriptionResponse(
        experiment=base_pb2.ExperimentDescription(
            name=status.name,
            status=status.status,
            progress=status.progress,
            total_rounds=status.total_rounds,
            current_round=status.current_round,
            download_statuses=base_pb2.DownloadStatuses(
                models=[base_pb2.DownloadStatus(name=name, status=state) for name, state in status.models],
                logs=[base_pb2.DownloadStatus(name="aggregator", status="ready")],
            ),
            collaborators=[
                base_pb2.CollaboratorDescription(
                    name=c.name,
                    status=c.status,
                    progress=c.progress,
                    round=c.round_number,
                    current_task=c.current_task,
                    next_task=c.next_task,
                    last_contact=c.last_contact or 0.0,
                )
                for c in status.collaborators
            ],
            tasks=[base_pb2.TaskDescription(name=name, description=text) for name, text in status.tasks],
        )
    )


def metric_reply(record: MetricRecord) -> aggregator_pb2.GetMetricStreamResponse:
    """One GetMetricStream message."""
    return aggregator_pb2.GetMetricStreamResponse(
        metric_origin=record.origin,
        task_name=record.task,
        metric_name=record.name,
        metric_value=record.value,
        round=record.round_number,
    )
