"""The Aggregator service's handler table: each RPC's kind, handler and request parser, counted on the wire.

GetAggregatedTensor and GetTrainedModel are registered as unary-stream: their replies are written by the handler
(:mod:`fedagg.server.downloads`) so a send deadline can end them; on the wire this is the unary reply OpenFL's
clients expect (one message, then the status). SendLocalTaskResults reads its ``DataStream`` chunks as bytes, so
their payloads are not copied (:func:`fedagg.protocol.wire.datastream_payload`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from fedagg.protocol import aggregator_pb2
from fedagg.server.observer import ServerObserver

SERVICE_NAME = "openfl.aggregator.Aggregator"


def aggregator_handlers(service: object, observer: ServerObserver) -> grpc.GenericRpcHandler[Any, Any]:
    """The generic handler serving ``service``'s methods named after the RPCs as ``openfl.aggregator.Aggregator``."""
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
        name: make(getattr(service, name), counting_parser(parse), counting_serializer)
        for name, (make, parse) in methods.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
