"""A small, wire-compatible collaborator: client, task-runner protocol and the training loop.

Needs only grpcio, protobuf and numpy, so a site that does not want OpenFL's dependencies can join a
federation served by fedagg (or by OpenFL's own aggregator).
"""

from fedagg.collaborator.client import AggregatorClient, AggregatorError, ClientTls, RetryPolicy
from fedagg.collaborator.participant import Collaborator
from fedagg.collaborator.runner import TaskOutput, TaskRunner

__all__ = [
    "AggregatorClient",
    "AggregatorError",
    "ClientTls",
    "Collaborator",
    "RetryPolicy",
    "TaskOutput",
    "TaskRunner",
]
