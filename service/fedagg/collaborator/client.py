"""``AggregatorClient``: the collaborator side of OpenFL's aggregator protocol over one persistent channel.

Every call carries OpenFL's request header and every reply's header is checked (spec §2.2). Connection problems
are retried or reported as :mod:`fedagg.collaborator.retry` says; uploads are re-sent whole.

Tensors move without intermediate copies (:mod:`fedagg.collaborator.transfer`): a downloaded tensor is a view
into its reply's bytes, and an upload is streamed message by message from the arrays it sends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

import grpc
from google.protobuf.message import Message

from fedagg.collaborator.diagnostics import ConnectionProblem, diagnose
from fedagg.collaborator.errors import AggregatorError, AggregatorUnreachable, ConnectionFailed
from fedagg.collaborator.memory import release_freed_memory
from fedagg.collaborator.retry import Outage, Retrier, RetryPolicy
from fedagg.collaborator.transfer import (
    CHUNK_BYTES,
    OutgoingTensor,
    parse_tensor_reply,
    task_results_messages,
)
from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc, base_pb2
from fedagg.protocol.codec import CodecError, Float32Array, decode_tensor
from fedagg.protocol.extensions import CONTRIBUTION_METADATA
from fedagg.protocol.model_file import LoadedModel

__all__ = [
    "CHUNK_BYTES",
    "AggregatorClient",
    "AggregatorError",
    "AggregatorUnreachable",
    "ClientTls",
    "ConnectionFailed",
    "OutgoingTensor",
    "RetryPolicy",
    "TasksReply",
]

log = logging.getLogger(__name__)

_Request = TypeVar("_Request", bound=Message)
_Reply = TypeVar("_Reply")
_SERVICE = "/openfl.aggregator.Aggregator/"


@dataclass(frozen=True)
class ClientTls:
    """TLS material: the CA that signed the aggregator, and this collaborator's certificate and key (mTLS)."""

    root_certificate: Path
    certificate: Path | None = None
    private_key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificate.read_bytes(),
            private_key=self.private_key.read_bytes() if self.private_key else None,
            certificate_chain=self.certificate.read_bytes() if self.certificate else None,
        )


@dataclass(frozen=True)
class TasksReply:
    """What GetTasks said."""

    round_number: int
    tasks: tuple[aggregator_pb2.Task, ...]
    sleep_seconds: int
    quit: bool


class AggregatorClient:
    """One collaborator's connection to an aggregator. Not thread-safe; use one per collaborator."""

    def __init__(
        self,
        address: str,
        collaborator: str,
        aggregator_uuid: str,
        federation_uuid: str,
        *,
        tls: ClientTls | None = None,
        single_col_cert_common_name: str = "",
        retry: RetryPolicy | None = None,
    ) -> None:
        self.address = address
        self.tls = tls
        self.collaborator = collaborator
        self.aggregator_uuid = aggregator_uuid
        self.federation_uuid = federation_uuid
        self.single_col_cert_common_name = single_col_cert_common_name
        # diagnose is looked up at each probe, so that a subclass or a test may replace it
        self._retrier = Retrier(address, retry or RetryPolicy(), lambda details: self.diagnose(details))  # noqa: PLW0108
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(address, tls.credentials(), options=options)
        self._stub = aggregator_pb2_grpc.AggregatorStub(self._channel)
        # The two tensor-carrying calls, on raw bytes: replies are parsed and uploads built by fedagg.collaborator
        # .transfer, without protobuf copies of the data.
        self._get_tensor_raw = self._channel.unary_unary(
            _SERVICE + "GetAggregatedTensor",
            request_serializer=aggregator_pb2.GetAggregatedTensorRequest.SerializeToString,
            response_deserializer=None,
        )
        self._send_results_raw = self._channel.stream_unary(
            _SERVICE + "SendLocalTaskResults",
            request_serializer=None,
            response_deserializer=aggregator_pb2.SendLocalTaskResultsResponse.FromString,
        )
        self.bytes_sent = 0

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Federation calls -----------------------------------------------------------------------------------------

    def header(self) -> aggregator_pb2.MessageHeader:
        """The header OpenFL's client puts on every request."""
        return aggregator_pb2.MessageHeader(
            sender=self.collaborator,
            receiver=self.aggregator_uuid,
            federation_uuid=self.federation_uuid,
            single_col_cert_common_name=self.single_col_cert_common_name,
        )

    def get_tasks(self) -> TasksReply:
        """Ask for this round's tasks (or a sleep, or quit)."""
        request = aggregator_pb2.GetTasksRequest(header=self.header())
        reply = self._call(lambda: self._stub.GetTasks(self._counted(request)))
        self._check_header(reply.header)
        return TasksReply(reply.round_number, tuple(reply.tasks), reply.sleep_time, reply.quit)

    def get_aggregated_tensor(
        self, name: str, round_number: int, tags: Sequence[str], require_lossless: bool = True
    ) -> Float32Array:
        """One tensor of the global model (``tags=["model"]``) or its delta (``aggregated, delta``).

        The result is a read-only view into the reply's bytes (the only copy of the data on this side): copy or
        add it into the collaborator's own array, then drop it. The pages gRPC freed while receiving it are
        returned to the system first (see :mod:`fedagg.collaborator.memory`).
        """
        request = aggregator_pb2.GetAggregatedTensorRequest(
            header=self.header(),
            tensor_name=name,
            round_number=round_number,
            tags=list(tags),
            require_lossless=require_lossless,
        )
        raw: bytes = self._call(lambda: self._get_tensor_raw(self._counted(request)))
        release_freed_memory(len(raw))  # gRPC's own copies of the reply, before the caller copies it again
        try:
            reply = parse_tensor_reply(raw)
        except CodecError as error:
            raise AggregatorError(grpc.StatusCode.DATA_LOSS, str(error)) from None
        self._check_header(reply.header)
        return reply.values

    def send_task_results(
        self,
        round_number: int,
        task_name: str,
        data_size: int,
        tensors: Sequence[OutgoingTensor | base_pb2.NamedTensor],
    ) -> None:
        """Upload a task's results as a stream of 2 MiB chunks; returns once the aggregator has them durably.

        The chunks are built one at a time from the tensors' arrays (see :class:`OutgoingTensor`); a retried
        upload is built again from the start.
        """
        results = aggregator_pb2.TaskResults(
            header=self.header(), round_number=round_number, task_name=task_name, data_size=data_size
        )
        reply, call = self._call(
            lambda: self._send_results_raw.with_call(self._upload_messages(results, tensors))
        )
        self._check_header(reply.header)
        for key, value in call.trailing_metadata() or ():
            if key == CONTRIBUTION_METADATA:
                log.warning(
                    "%s: the aggregator answered round %d's %r results with %s; they are not used",
                    self.collaborator,
                    round_number,
                    task_name,
                    value,
                )

    # Observer calls -------------------------------------------------------------------------------------------

    def experiment_description(self, experiment: str = "") -> base_pb2.ExperimentDescription:
        """GetExperimentDescription."""
        request = aggregator_pb2.GetExperimentDescriptionRequest(name=experiment)
        return self._call(lambda: self._stub.GetExperimentDescription(request)).experiment

    def trained_model(self, best: bool, experiment: str = "") -> LoadedModel:
        """GetTrainedModel: the best or last model with its round."""
        kinds = aggregator_pb2.GetTrainedModelRequest
        request = kinds(experiment_name=experiment, model_type=kinds.BEST_MODEL if best else kinds.LAST_MODEL)
        proto = self._call(lambda: self._stub.GetTrainedModel(request)).model_proto
        tensors = {tensor.name: decode_tensor(tensor, codec_tagged=False) for tensor in proto.tensors}
        round_number = proto.tensors[0].round_number if proto.tensors else 0
        return LoadedModel(round_number, tensors)

    def metric_stream(self, experiment: str = "") -> Iterator[aggregator_pb2.GetMetricStreamResponse]:
        """GetMetricStream: every metric so far, then live ones until the experiment ends.

        A stream cut by UNAVAILABLE (the aggregator restarting or draining) is opened again; the metrics the
        new stream repeats (it starts with every metric so far) are skipped.
        """
        request = aggregator_pb2.GetMetricStreamRequest(experiment_name=experiment)
        delivered = 0
        outage: Outage | None = None
        while True:
            position = 0
            try:
                for reply in self._stub.GetMetricStream(request):
                    if outage is not None:
                        self._retrier.recovered(outage)
                        outage = None
                    position += 1
                    if position > delivered:
                        delivered = position
                        yield reply
                return
            except grpc.RpcError as error:
                outage = self._retrier.retry_or_raise(error, outage)

    def diagnose(self, grpc_details: str = "") -> ConnectionProblem:
        """Probe the connection to the aggregator and say what is wrong with it (see ``diagnostics``)."""
        return diagnose(self.address, self.tls, grpc_details=grpc_details)

    # Plumbing -------------------------------------------------------------------------------------------------

    def _counted(self, request: _Request) -> _Request:
        self.bytes_sent += request.ByteSize()
        return request

    def _upload_messages(
        self, results: aggregator_pb2.TaskResults, tensors: Sequence[OutgoingTensor | base_pb2.NamedTensor]
    ) -> Iterator[bytes]:
        for message in task_results_messages(results, tensors):
            self.bytes_sent += len(message)
            yield message

    def _call(self, invoke: Callable[[], _Reply]) -> _Reply:
        return self._retrier.call(invoke)

    def _check_header(self, header: aggregator_pb2.MessageHeader) -> None:
        expected = (
            self.collaborator,
            self.aggregator_uuid,
            self.federation_uuid,
            self.single_col_cert_common_name,
        )
        actual = (header.receiver, header.sender, header.federation_uuid, header.single_col_cert_common_name)
        if actual != expected:
            raise AggregatorError(
                grpc.StatusCode.DATA_LOSS,
                f"reply header {actual} does not match this collaborator's {expected}",
            )
