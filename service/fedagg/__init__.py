"""fedagg: an operations-grade federated-learning aggregator that speaks OpenFL's aggregator gRPC protocol."""

__version__ = "0.1.0"
