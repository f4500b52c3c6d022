"""The Aggregator service's handler table: each RPC's kind, handler and request parser, counted on the wire.

GetAggregatedTensor and GetTrainedModel are registered as unary-stream: their replies are written by the handler
(:mod:`fedagg.server.downloads`) so a send deadline can end them; on the wire this is the unary reply OpenFL's
clients expect (one message, then the status). SendLocalTaskResults reads its ``DataStream`` chunks as bytes, so
their payloads are not copied (:func:`fedagg.protocol.wire.datastream_payload`). The methods named ``relayed``
take their requests as the bytes that arrived (an ingest replica relays them to its root unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import grpc
from google.protobuf.message import Message

from fedagg.protocol import aggregator_pb2
from fedagg.server.connections import connection_cap
from fedagg.server.observer import ServerObserver
from fedagg.server.options import ServerOptions

SERVICE_NAME = "openfl.aggregator.Aggregator"


def aggregator_handlers(
    service: object, observer: ServerObserver, relayed: Collection[str] = ()
) -> grpc.GenericRpcHandler[Any, Any]:
    """The generic handler serving ``service``'s methods named after the RPCs as ``openfl.aggregator.Aggregator``
    (the ``relayed`` ones get their requests as bytes)."""
    messages = aggregator_pb2
    unary, unary_stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
    methods: dict[str, tuple[Callable[..., Any], Callable[[bytes], Any]]] = {
        "GetTasks": (unary, messages.GetTasksRequest.FromString),
        "GetAggregatedTensor": (unary_stream, messages.GetAggregatedTensorRequest.FromString),
        "SendLocalTaskResults": (grpc.stream_unary_rpc_method_handler, bytes),
        "GetMetricStream": (unary_stream, messages.GetMetricStreamRequest.FromString),
        "GetTrainedModel": (unary_stream, messages.GetTrainedModelRequest.FromString),
        "GetExperimentDescription": (unary, messages.GetExperimentDescriptionRequest.FromString),
        "Ping": (unary, messages.PingRequest.FromString),
        "InteropRelay": (unary, messages.InteropMessage.FromString),
    }

    def counting_parser(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        def parse_counted(data: bytes) -> Any:
            observer.bytes_received(len(data))
            return parse(data)

        return parse_counted

    def counting_serializer(reply: Message | bytes) -> bytes:
        data = reply if isinstance(reply, bytes) else reply.SerializeToString()
        observer.bytes_sent(len(data))
        return data

    handlers = {
        name: make(
            getattr(service, name), counting_parser(bytes if name in relayed else parse), counting_serializer
        )
        for name, (make, parse) in methods.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def aggregator_server(options: ServerOptions, handler: grpc.GenericRpcHandler[Any, Any]) -> grpc.aio.Server:
    """A grpc.aio server (not bound) under ``options``' interceptors and limits, serving ``handler`` and
    ``options.extra_services``."""
    server = grpc.aio.server(
        interceptors=list(options.interceptors),
        options=options.channel_options(connection_cap(options.connection_limits)),
    )
    server.add_generic_rpc_handlers((handler,))
    for register in options.extra_services:
        register(server)
    return server
