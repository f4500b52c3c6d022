"""The ops port's leadership method, as servers and ``fedagg status --ops`` share it (grpc and protobuf only, so
the client-side install has it): ``/fedagg.ops.Leadership/Describe``, request ``google.protobuf.Empty``, reply a
``google.protobuf.Struct`` (the document :mod:`fedagg.ops.leadership_report` describes)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2

SERVICE = "fedagg.ops.Leadership"
METHOD = "Describe"
INTEGERS = ("term", "transitions_seen")  # a Struct carries every number as a double


def ask_leadership(address: str, timeout: float) -> dict[str, Any]:
    """The document of the replica whose ops port is ``address`` (plaintext, as the ops port is); raises
    grpc.RpcError."""
    with grpc.insecure_channel(address) as channel:
        describe = channel.unary_unary(
            f"/{SERVICE}/{METHOD}",
            request_serializer=empty_pb2.Empty.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        reply = describe(empty_pb2.Empty(), timeout=timeout, wait_for_ready=True)
    document: dict[str, Any] = json_format.MessageToDict(reply)
    for key in INTEGERS:
        if isinstance(document.get(key), float):
            document[key] = int(document[key])
    return document
