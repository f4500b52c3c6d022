"""A collaborator's task results: what each uploaded tensor is, and read access to its spooled values."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from fedagg.federation.errors import InvalidRequest
from fedagg.protocol.codec import (
    FLOAT32,
    CodecError,
    Float32Array,
    Shape,
    check_codec_tags,
    check_data_length,
    shape_from_metadata,
    without_codec_tags,
)
from fedagg.protocol.results import ResultsHeader, TaskResultsDecoder
from fedagg.protocol.stream import TensorRecord

TRAINED_TAG = "trained"
DELTA_TAG = "delta"


class TensorRole(StrEnum):
    """What an uploaded tensor contributes to."""

    METRIC = "metric"
    WEIGHTS = "weights"


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
    def key(self) -> tuple[str, tuple[str, ...]]:
        """Identity shared by every collaborator's copy of this tensor within a task."""
        return (self.name, self.tags)

    def describe(self) -> str:
        """Human-readable identity for error messages."""
        return f"{self.role} '{self.name}' (tags {list(self.tags)})"


def classify_tensor(record: TensorRecord, collaborator: str) -> UploadedTensor:
    """Validate one uploaded NamedTensor and say what it is; raise :class:`InvalidRequest` otherwise."""
    if not record.name:
        raise InvalidRequest(f"TaskResults.tensors[{record.index}].name is empty")
    try:
        check_codec_tags(record.name, record.tags)
        shape = shape_from_metadata(record.name, record.metadata)
        check_data_length(record.name, shape, record.data_length)
    except CodecError as error:
        raise InvalidRequest(str(error)) from None
    tags = tuple(sorted({tag for tag in without_codec_tags(record.tags) if tag != collaborator}))
    if record.report:
        if int(np.prod(shape)) != 1:
            raise InvalidRequest(
                f"metric '{record.name}' (report=true) has shape {list(shape)}; metrics must be scalars"
            )
        return UploadedTensor(
            record.name, TensorRole.METRIC, False, tags, shape, record.data_offset, record.data_length
        )
    if TRAINED_TAG not in tags:
        raise InvalidRequest(
            f"tensor '{record.name}' has tags {list(tags)}; fedagg accepts metrics (report=true) and model "
            "updates (tag 'trained', optionally 'delta')"
        )
    is_delta = DELTA_TAG in tags
    weight_tags = tuple(tag for tag in tags if tag != DELTA_TAG)
    return UploadedTensor(
        record.name, TensorRole.WEIGHTS, is_delta, weight_tags, shape, record.data_offset, record.data_length
    )


@dataclass(frozen=True)
class Contribution:
    """One collaborator's results for one task in one round."""

    collaborator: str
    task: str
    round_number: int
    data_size: int
    tensors: tuple[UploadedTensor, ...]

    @property
    def weight(self) -> float:
        """Aggregation weight: the data size; OpenFL's ``-1`` ("no size for this task") counts as 1."""
        return 1.0 if self.data_size == -1 else float(self.data_size)


class _FlatValues:
    """A tensor's values as a flat float32 view of the spool mapping."""

    def __init__(self, values: Float32Array, shape: Shape) -> None:
        self._values = values
        self.shape = shape

    def block(self, start: int, stop: int) -> Float32Array:
        return self._values[start:stop]


class _DeltaValues:
    """A delta upload's absolute values: base + delta, computed block-wise in float32 as OpenFL does."""

    def __init__(self, base: Float32Array, delta: Float32Array, shape: Shape) -> None:
        self._base = base
        self._delta = delta
        self.shape = shape

    def block(self, start: int, stop: int) -> Float32Array:
        return self._base[start:stop] + self._delta[start:stop]


class SpooledContribution:
    """A contribution whose raw upload lies in a spool file; values are read through a read-only mapping."""

    def __init__(self, contribution: Contribution, path: Path) -> None:
        self.contribution = contribution
        self.path = path
        with path.open("rb") as file:
            self._mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    def values(self, tensor: UploadedTensor) -> Float32Array:
        """The tensor's values exactly as uploaded (flat float32 view)."""
        count = tensor.data_length // FLOAT32.itemsize
        return np.frombuffer(self._mapping, FLOAT32, count, tensor.data_offset)

    def source(self, tensor: UploadedTensor, base: Float32Array | None) -> _FlatValues | _DeltaValues:
        """Block reader of the tensor's absolute values; ``base`` is the model tensor a delta applies to."""
        if tensor.is_delta:
            assert base is not None
            return _DeltaValues(base.reshape(-1), self.values(tensor), tensor.shape)
        return _FlatValues(self.values(tensor), tensor.shape)

    def metric_value(self, tensor: UploadedTensor) -> float:
        """A metric's scalar value."""
        return float(self.values(tensor)[0])


def read_spooled_upload(path: Path) -> tuple[ResultsHeader, list[TensorRecord]]:
    """Decode a spool file written during an upload (used when replaying after a restart)."""
    decoder = TaskResultsDecoder()
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        events = decoder.feed(memoryview(mapping)) + decoder.finish()
    headers = [event for event in events if isinstance(event, ResultsHeader)]
    records = [event for event in events if isinstance(event, TensorRecord)]
    return headers[0], records
