"""What a site implements to train with fedagg's collaborator: a :class:`TaskRunner`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from fedagg.protocol.codec import Float32Array

Weights = Mapping[str, Float32Array]


@dataclass(frozen=True)
class TaskOutput:
    """A task's results: metrics (scalars), the sample count they weigh with, and trained weights if any."""

    metrics: Mapping[str, float]
    data_size: int
    weights: Weights = field(default_factory=dict)


class TaskRunner(Protocol):
    """Local training and validation on the site's own data."""

    def weight_names(self) -> tuple[str, ...]:
        """Names of the model tensors the runner needs from the aggregator."""
        ...

    def train(self, weights: Weights, round_number: int) -> TaskOutput:
        """Train from the global ``weights``; return the new weights and training metrics.

        ``weights`` are the collaborator's own buffers (read-only views with ``delta_updates``). A runner may
        train in them, and then MUST return them: the model is then held once, and the collaborator knows the
        buffers no longer hold the global model (they are replaced by the next round's download). Returned
        arrays should be float32 (others are converted while uploading, a copy each).
        """
        ...

    def validate(self, weights: Weights, round_number: int) -> TaskOutput:
        """Evaluate ``weights`` on local validation data; return metrics."""
        ...
