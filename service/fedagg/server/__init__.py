"""The gRPC face of the federation: OpenFL's Aggregator service, TLS, identity, health and reflection."""

from fedagg.server.servicer import AggregatorGRPCServer

__all__ = ["AggregatorGRPCServer"]
