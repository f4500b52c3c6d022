"""A collaborator's task results: what each uploaded tensor is, why an upload may be refused, what it holds.

An upload is checked against the round's model and the plan only, never against another collaborator's upload:
metrics may differ between collaborators, weights must have the model's shape, tensors that are not in the model
(optimizer state) are allowed within a budget, and every value must be finite. A refusal names a
:class:`RejectionReason`, a bounded set of labels that metrics and logs use.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from fedagg.protocol.codec import (
    FLOAT32,
    CodecError,
    Shape,
    check_codec_tags,
    check_data_length,
    shape_from_metadata,
    without_codec_tags,
)
from fedagg.protocol.tensor_fields import TensorRecord

TRAINED_TAG = "trained"
DELTA_TAG = "delta"


class TensorRole(StrEnum):
    """What an uploaded tensor contributes to."""

    METRIC = "metric"
    WEIGHTS = "weights"


class RejectionReason(StrEnum):
    """Why an upload was excluded from the round (the label of ``fedagg_contributions_rejected_total``)."""

    DATA_SIZE = "data_size"
    CODEC = "codec"
    BYTE_LENGTH = "byte_length"
    METRIC_SHAPE = "metric_shape"
    ROLE = "role"
    DUPLICATE_TENSOR = "duplicate_tensor"
    SHAPE = "shape"
    DELTA_BASE = "delta_base"
    EXTRA_TENSOR_BUDGET = "extra_tensor_budget"
    UPLOAD_SIZE = "upload_size"
    NON_FINITE = "non_finite"
    METRIC_COUNT = "metric_count"


class ContributionRejected(Exception):
    """An upload that cannot enter the round; ``message`` says what is wrong, naming the tensor."""

    def __init__(self, reason: RejectionReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class UploadedTensor:
    """One tensor of an upload: its role, identity and where its float32 values lie in the spooled stream."""

    name: str
    role: TensorRole
    is_delta: bool
    tags: tuple[str, ...]
    shape: Shape
    data_offset: int
    data_length: int

    @property
    def identity(self) -> object:
        """What may appear only once per upload: a weight's name, a metric's name and tags."""
        return self.name if self.role == TensorRole.WEIGHTS else (self.name, self.tags)

    @property
    def size(self) -> int:
        """Number of values."""
        return self.data_length // FLOAT32.itemsize


def classify_tensor(record: TensorRecord, collaborator: str) -> UploadedTensor:
    """Check one uploaded NamedTensor's description and say what it is; raise :class:`ContributionRejected`."""
    where = f"TaskResults.tensors[{record.index}]"
    if not record.name:
        raise ContributionRejected(RejectionReason.ROLE, f"{where}.name is empty")
    try:
        check_codec_tags(record.name, record.tags)
        shape = shape_from_metadata(record.name, record.metadata)
    except CodecError as error:
        raise ContributionRejected(RejectionReason.CODEC, str(error)) from None
    try:
        check_data_length(record.name, shape, record.data_length)
    except CodecError as error:
        raise ContributionRejected(RejectionReason.BYTE_LENGTH, str(error)) from None
    tags = tuple(sorted({tag for tag in without_codec_tags(record.tags) if tag != collaborator}))
    if record.report:
        if int(np.prod(shape)) != 1:
            raise ContributionRejected(
                RejectionReason.METRIC_SHAPE,
                f"metric '{record.name}' (report=true) has shape {list(shape)}; metrics must be scalars",
            )
        return UploadedTensor(
            record.name, TensorRole.METRIC, False, tags, shape, record.data_offset, record.data_length
        )
    if TRAINED_TAG not in tags:
        raise ContributionRejected(
            RejectionReason.ROLE,
            f"tensor '{record.name}' has tags {list(tags)[:8]}; fedagg accepts metrics (report=true) and model "
            "updates (tag 'trained', optionally 'delta')",
        )
    is_delta = DELTA_TAG in tags
    weight_tags = tuple(tag for tag in tags if tag != DELTA_TAG)
    return UploadedTensor(
        record.name, TensorRole.WEIGHTS, is_delta, weight_tags, shape, record.data_offset, record.data_length
    )


@dataclass(frozen=True, slots=True)
class MetricValue:
    """A scalar a collaborator reported."""

    name: str
    tags: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class Contribution:
    """One collaborator's checked results for one task in one round."""

    collaborator: str
    task: str
    round_number: int
    data_size: int
    weights: tuple[UploadedTensor, ...]
    metrics: tuple[MetricValue, ...]

    @property
    def weight(self) -> float:
        """Aggregation weight: the data size; OpenFL's ``-1`` ("no size for this task") counts as 1."""
        return 1.0 if self.data_size == -1 else float(self.data_size)
