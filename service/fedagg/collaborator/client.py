"""``AggregatorClient``: the collaborator side of OpenFL's aggregator protocol over one persistent channel.

Every call carries OpenFL's request header and every reply's header is checked (spec §2.2). UNAVAILABLE
is diagnosed (:mod:`fedagg.collaborator.diagnostics`): a transient cause (nothing listens yet, the name does
not resolve yet, the aggregator restarting or draining) is logged as a warning naming the address and the
cause, and retried with exponential back-off and jitter until ``RetryPolicy.give_up_after`` seconds have passed
(then :class:`AggregatorUnreachable`); uploads are re-sent whole. A cause retrying cannot fix (TLS verification
failing on either side, a name the aggregator's certificate does not carry, TLS against plaintext) raises
:class:`ConnectionFailed` at once. Any other status raises :class:`AggregatorError` with the server's message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from fedagg.collaborator.diagnostics import ConnectionProblem, diagnose
from fedagg.protocol import aggregator_pb2, aggregator_pb2_grpc, base_pb2
from fedagg.protocol.codec import Float32Array, decode_tensor
from fedagg.protocol.extensions import CONTRIBUTION_METADATA
from fedagg.protocol.model_file import LoadedModel

log = logging.getLogger(__name__)
connection_log = logging.getLogger("fedagg.collaborator.connection")
"""Connection problems (warnings, one per retry) and recoveries (info)."""

CHUNK_BYTES = 2 * 1024 * 1024
# Seconds between the two probes that must agree before a connection problem is called permanent.
CONFIRM_SECONDS = 0.2
_Reply = TypeVar("_Reply")
_Request = TypeVar("_Request", bound=Message)


class AggregatorError(Exception):
    """The aggregator refused a call; ``code`` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ConnectionFailed(AggregatorError):
    """Connecting failed for a reason that retrying cannot fix (TLS verification, certificate names, TLS mode)."""

    def __init__(self, problem: ConnectionProblem) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, problem.message)
        self.problem = problem

    def __str__(self) -> str:
        return self.problem.message


class AggregatorUnreachable(AggregatorError):
    """The aggregator stayed unreachable or unavailable for the whole retry budget."""

    def __init__(self, problem: ConnectionProblem, seconds: float) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, f"gave up retrying after {seconds:.0f}s: {problem.message}"
        )
        self.problem = problem
        self.seconds = seconds

    def __str__(self) -> str:
        return self.details


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
class RetryPolicy:
    """Back-off for UNAVAILABLE: ``initial`` seconds doubling up to ``maximum``, with full jitter.

    ``give_up_after``: seconds (wall clock, from the first failure of an outage) after which a call stops
    retrying and raises :class:`AggregatorUnreachable`.
    """

    initial: float = 0.5
    maximum: float = 10.0
    give_up_after: float = 600.0

    def delays(self) -> Iterator[float]:
        """Successive sleeps; stops when ``give_up_after`` seconds of sleeping are used up."""
        delay, slept = self.initial, 0.0
        while slept < self.give_up_after:
            pause = random.uniform(delay / 2, delay)
            slept += pause
            yield pause
            delay = min(delay * 2, self.maximum)


@dataclass(frozen=True)
class TasksReply:
    """What GetTasks said."""

    round_number: int
    tasks: tuple[aggregator_pb2.Task, ...]
    sleep_seconds: int
    quit: bool


class _Outage:
    """One stretch of failed attempts: when it began, how often it was retried, what the probe found."""

    PROBE_INTERVAL = 2.0  # seconds: the same gRPC detail within this is not probed again

    def __init__(self, retry: RetryPolicy) -> None:
        self.started = time.monotonic()
        self.attempts = 0
        self.delays = retry.delays()
        self.problem: ConnectionProblem | None = None
        self._probed_details: str | None = None
        self._probed_at = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def needs_probe(self, details: str) -> bool:
        return (
            self.problem is None
            or details != self._probed_details
            or time.monotonic() - self._probed_at >= self.PROBE_INTERVAL
        )

    def probed(self, details: str, problem: ConnectionProblem) -> None:
        self.problem, self._probed_details, self._probed_at = problem, details, time.monotonic()


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
        self._retry = retry or RetryPolicy()
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
        self.bytes_sent = 0

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> AggregatorClient:
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
        """Fetch one tensor of the global model (``tags=["model"]``) or its delta (``aggregated, delta``)."""
        request = aggregator_pb2.GetAggregatedTensorRequest(
            header=self.header(),
            tensor_name=name,
            round_number=round_number,
            tags=list(tags),
            require_lossless=require_lossless,
        )
        reply = self._call(lambda: self._stub.GetAggregatedTensor(self._counted(request)))
        self._check_header(reply.header)
        return decode_tensor(reply.tensor)

    def send_task_results(
        self, round_number: int, task_name: str, data_size: int, tensors: Sequence[base_pb2.NamedTensor]
    ) -> None:
        """Upload a task's results as a stream of 2 MiB chunks; returns once the aggregator has them durably."""
        payload = aggregator_pb2.TaskResults(
            header=self.header(),
            round_number=round_number,
            task_name=task_name,
            data_size=data_size,
            tensors=list(tensors),
        ).SerializeToString()
        reply, call = self._call(
            lambda: self._stub.SendLocalTaskResults.with_call(self._counted_chunks(payload))
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
        outage: _Outage | None = None
        while True:
            position = 0
            try:
                for reply in self._stub.GetMetricStream(request):
                    if outage is not None:
                        self._recovered(outage)
                        outage = None
                    position += 1
                    if position > delivered:
                        delivered = position
                        yield reply
                return
            except grpc.RpcError as error:
                outage = self._retry_or_raise(error, outage)

    def diagnose(self, grpc_details: str = "") -> ConnectionProblem:
        """Probe the connection to the aggregator and say what is wrong with it (see ``diagnostics``)."""
        return diagnose(self.address, self.tls, grpc_details=grpc_details)

    # Plumbing -------------------------------------------------------------------------------------------------

    def _counted(self, request: _Request) -> _Request:
        self.bytes_sent += request.ByteSize()
        return request

    def _counted_chunks(self, payload: bytes) -> Iterator[base_pb2.DataStream]:
        for chunk in _chunks(payload):
            yield self._counted(chunk)

    def _call(self, invoke: Callable[[], _Reply]) -> _Reply:
        outage: _Outage | None = None
        while True:
            try:
                reply = invoke()
            except grpc.RpcError as error:
                outage = self._retry_or_raise(error, outage)
            else:
                self._recovered(outage)
                return reply

    def _retry_or_raise(self, error: grpc.RpcError, outage: _Outage | None) -> _Outage:
        """Sleep before the next attempt when retrying can help; otherwise raise the right error."""
        code, details = error.code(), error.details() or ""
        if code != grpc.StatusCode.UNAVAILABLE:
            raise AggregatorError(code, details) from None
        outage = outage or _Outage(self._retry)
        if outage.needs_probe(details):
            found = self.diagnose(details)
            if not found.transient:  # a verdict that ends the run is confirmed by a second probe
                time.sleep(CONFIRM_SECONDS)
                if (again := self.diagnose(details)).cause != found.cause:
                    found = again
            outage.probed(details, found)
        problem = outage.problem
        assert problem is not None
        if not problem.transient:
            raise ConnectionFailed(problem) from None
        pause = next(outage.delays, None)
        elapsed = outage.elapsed()
        budget = self._retry.give_up_after
        if pause is None or elapsed >= budget:
            raise AggregatorUnreachable(problem, elapsed) from None
        pause = min(pause, budget - elapsed)  # the last attempt is made when the budget runs out
        outage.attempts += 1
        connection_log.warning(
            "%s; retrying in %.1fs (attempt %d, giving up %.0fs from now)",
            problem,
            pause,
            outage.attempts,
            max(budget - elapsed, 0.0),
            extra={"cause": problem.cause.value, "address": self.address},
        )
        time.sleep(pause)
        return outage

    def _recovered(self, outage: _Outage | None) -> None:
        if outage is not None and outage.attempts:
            connection_log.info(
                "connected to the aggregator at %s after %d attempts (%.0fs)",
                self.address,
                outage.attempts + 1,
                outage.elapsed(),
            )

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


def _chunks(payload: bytes) -> Iterator[base_pb2.DataStream]:
    view = memoryview(payload)
    for start in range(0, len(view), CHUNK_BYTES):
        piece = bytes(view[start : start + CHUNK_BYTES])
        yield base_pb2.DataStream(size=len(piece), npbytes=piece)
