"""The null server: the least any OpenFL-protocol aggregator must do, the floor the benchmark measures against.

``python -m bench.null_server --init-model FILE --collaborators a,b --rounds R --federation-uuid F
--aggregator-uuid A [--pki DIR]`` serves ``openfl.aggregator.Aggregator`` on an ephemeral loopback port and
prints ``PORT=<n>``; with ``--pki`` (a ``write_federation_pki`` directory) it requires mTLS as fedagg does.

What it does, and nothing more:

* GetTasks: the tasks the default plan's assigner (OpenFL's RandomGroupedAssigner, one group running the three
  default tasks) gives the caller in the current round, minus those it has uploaded; a caller with nothing left
  is held until the round ends (as fedagg's long poll); quit once ``--rounds`` rounds have ended.
* GetAggregatedTensor: the initial model's tensor, mapped once from the model file and kept resident, in the
  form asked (model or delta: the bench's initial model is zeros, so both are right), every round. The reply is
  built by fedagg's own reply functions, byte for byte what fedagg and OpenFL 1.7.1 send.
* SendLocalTaskResults: reads the upload's header (sender, round, task), discards the rest unread, and
  acknowledges. A round ends when every collaborator has uploaded all its tasks.

No aggregation, no disk, no checks beyond TLS. The process exits 0 once every collaborator has received quit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from bench.raw_stream import OPTIONS, server_credentials
from fedagg.federation.assigner import make_assigner
from fedagg.federation.plan import default_tasks, single_group_assigner
from fedagg.federation.serving import TensorRequest, resolve_form
from fedagg.federation.task_handout import TaskReply
from fedagg.protocol import aggregator_pb2
from fedagg.protocol.codec import tensor_header
from fedagg.protocol.model_file import named_tensor_body, read_model
from fedagg.protocol.results import ResultsHeader, TaskResultsDecoder
from fedagg.protocol.wire import datastream_payload
from fedagg.server import replies

ServerContext = grpc.aio.ServicerContext[Any, Any]


class NullAggregator:
    """The round bookkeeping and the three RPCs OpenFL's collaborators call; event-loop only."""

    def __init__(
        self, init_model: Path, collaborators: tuple[str, ...], rounds: int, federation: str, aggregator: str
    ) -> None:
        self.model = read_model(init_model)
        for values in self.model.tensors.values():
            values.sum()  # touched once: served from resident memory from now on
        self.tasks = default_tasks()
        self.assigner = make_assigner(single_group_assigner(self.tasks), collaborators)
        self.collaborators = collaborators
        self.rounds = rounds
        self.federation = federation
        self.aggregator = aggregator
        self.round_number = 0
        self.done: dict[str, set[str]] = {name: set() for name in collaborators}
        self.round_ended = asyncio.Event()
        self.quit_sent: set[str] = set()
        self.all_quit = asyncio.Event()

    def header(self, collaborator: str) -> aggregator_pb2.MessageHeader:
        return aggregator_pb2.MessageHeader(
            sender=self.aggregator, receiver=collaborator, federation_uuid=self.federation
        )

    def tasks_left(self, collaborator: str) -> tuple[str, ...]:
        assigned = self.assigner.tasks_for(collaborator, self.round_number)
        return tuple(task for task in assigned if task not in self.done[collaborator])

    async def GetTasks(self, request: aggregator_pb2.GetTasksRequest, context: ServerContext) -> bytes:
        collaborator = request.header.sender
        while self.round_number < self.rounds and not self.tasks_left(collaborator):
            await self.round_ended.wait()
        if self.round_number >= self.rounds:
            reply = TaskReply(self.round_number, quit=True)
            self.quit_sent.add(collaborator)
            if self.quit_sent >= set(self.collaborators):
                self.all_quit.set()
        else:
            left = self.tasks_left(collaborator)
            reply = TaskReply(self.round_number, tuple(self.tasks[task] for task in left))
        return replies.tasks_reply(self.header(collaborator), reply).SerializeToString()

    async def GetAggregatedTensor(
        self, request: aggregator_pb2.GetAggregatedTensorRequest, context: ServerContext
    ) -> bytes:
        tensor = TensorRequest(
            request.tensor_name,
            request.round_number,
            request.report,
            tuple(request.tags),
            request.require_lossless,
        )
        served = resolve_form(tensor)
        values = self.model.tensors[request.tensor_name]
        named = tensor_header(
            request.tensor_name,
            values.shape,
            round_number=request.round_number,
            tags=served.tags,
            lossless=served.lossless,
        )
        header = self.header(request.header.sender)
        return replies.tensor_reply(header, request.round_number, named_tensor_body(named, values))

    async def SendLocalTaskResults(self, chunks: AsyncIterator[bytes], context: ServerContext) -> bytes:
        decoder = TaskResultsDecoder()
        results: ResultsHeader | None = None
        async for chunk in chunks:
            if results is None:
                events = decoder.feed(datastream_payload(chunk))
                results = next((e for e in events if isinstance(e, ResultsHeader)), None)
        if results is None:
            results = next(e for e in decoder.finish() if isinstance(e, ResultsHeader))
        collaborator = results.header.sender
        if results.round_number == self.round_number:
            self.done[collaborator].add(results.task_name)
            if not any(self.tasks_left(name) for name in self.collaborators):
                self.end_round()
        return aggregator_pb2.SendLocalTaskResultsResponse(
            header=self.header(collaborator)
        ).SerializeToString()

    def end_round(self) -> None:
        self.round_number += 1
        for tasks in self.done.values():
            tasks.clear()
        self.round_ended.set()
        self.round_ended = asyncio.Event()


def handlers(service: NullAggregator) -> grpc.GenericRpcHandler[Any, Any]:
    """The three RPCs of OpenFL's collaborators, replies already serialized."""

    def raw(data: bytes) -> bytes:
        return data

    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    parsers: dict[str, Callable[[bytes], Any]] = {
        "GetTasks": aggregator_pb2.GetTasksRequest.FromString,
        "GetAggregatedTensor": aggregator_pb2.GetAggregatedTensorRequest.FromString,
    }
    for name, parse in parsers.items():
        methods[name] = grpc.unary_unary_rpc_method_handler(getattr(service, name), parse, raw)
    methods["SendLocalTaskResults"] = grpc.stream_unary_rpc_method_handler(
        service.SendLocalTaskResults, raw, raw
    )
    return grpc.method_handlers_generic_handler("openfl.aggregator.Aggregator", methods)


async def serve(args: argparse.Namespace) -> None:
    collaborators = tuple(args.collaborators.split(","))
    service = NullAggregator(
        args.init_model, collaborators, args.rounds, args.federation_uuid, args.aggregator_uuid
    )
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((handlers(service),))
    address = "127.0.0.1:0"
    port = (
        server.add_secure_port(address, server_credentials(args.pki))
        if args.pki
        else server.add_insecure_port(address)
    )
    await server.start()
    print(f"PORT={port}", flush=True)
    await service.all_quit.wait()
    await server.stop(5)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init-model", type=Path, required=True)
    parser.add_argument("--collaborators", required=True, help="comma-separated names")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--federation-uuid", required=True)
    parser.add_argument("--aggregator-uuid", required=True)
    parser.add_argument("--pki", type=Path, help="a write_federation_pki directory: mTLS")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
