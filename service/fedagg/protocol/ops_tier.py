"""The ops port's tier report as a root serves it and ``fedagg status --ops`` reads it (grpc and protobuf only):
``fedagg.ops.v1.TierReport/Describe`` (protos/fedagg/ops/v1/tier_report.proto), as a plain document."""

from __future__ import annotations

from typing import Any

import grpc

from fedagg.protocol import tier_pb2, tier_report_pb2, tier_report_pb2_grpc


def document_from_reply(reply: tier_pb2.DescribeReplicasReply) -> dict[str, Any]:
    """``{round, replicas: [{replica, claimed, delivered, generation, seconds_since_contact, lost}]}``;
    ``generation`` and ``seconds_since_contact`` are None when unknown (no partial yet; never called)."""
    return {
        "round": reply.round,
        "replicas": [
            {
                "replica": state.replica,
                "claimed": state.claimed,
                "delivered": state.delivered,
                "generation": state.generation if state.delivered else None,
                "seconds_since_contact": None
                if state.seconds_since_contact < 0
                else round(state.seconds_since_contact, 3),
                "lost": state.lost,
            }
            for state in reply.replicas
        ],
    }


def ask_tier(address: str, timeout: float) -> dict[str, Any] | None:
    """The tier report of the process whose ops port is ``address``; None when it is not a tier's root
    (UNIMPLEMENTED). Raises grpc.RpcError otherwise."""
    with grpc.insecure_channel(address) as channel:
        stub = tier_report_pb2_grpc.TierReportStub(channel)
        try:
            reply = stub.Describe(tier_report_pb2.DescribeTierRequest(), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as error:
            if isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
    return document_from_reply(reply)
