"""A small, wire-compatible collaborator: client, task-runner protocol and the training loop.

Needs only grpcio, protobuf and numpy, so a site that does not want OpenFL's dependencies can join a
federation served by fedagg (or by OpenFL's own aggregator).
"""

from fedagg.collaborator.client import AggregatorClient, ClientTls
from fedagg.collaborator.diagnostics import Cause, ConnectionProblem
from fedagg.collaborator.errors import AggregatorError, AggregatorUnreachable, ConnectionFailed
from fedagg.collaborator.participant import Collaborator
from fedagg.collaborator.retry import RetryPolicy
from fedagg.collaborator.runner import TaskOutput, TaskRunner
from fedagg.collaborator.transfer import OutgoingTensor

__all__ = [
    "AggregatorClient",
    "AggregatorError",
    "AggregatorUnreachable",
    "Cause",
    "ClientTls",
    "Collaborator",
    "ConnectionFailed",
    "ConnectionProblem",
    "OutgoingTensor",
    "RetryPolicy",
    "TaskOutput",
    "TaskRunner",
]
