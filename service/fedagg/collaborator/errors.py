"""What a collaborator's calls raise: the aggregator's refusal, or a connection that failed or stayed down."""

from __future__ import annotations

import grpc

from fedagg.collaborator.problems import ConnectionProblem


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
