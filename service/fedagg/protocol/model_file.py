"""OpenFL model files (serialized ``ModelProto``, ``.pbuf``): streamed writing and memory-mapped reading.

A model file holds one NamedTensor per weight with ``round_number=r``, ``lossless=true``, ``report=false``,
``tags=["model"]``, one shape metadata entry and float32 C-order data (OpenFL's ``construct_model_proto`` with
the NoCompression pipeline). Writing streams each tensor's bytes straight from its array and reading maps the
file, so neither direction makes a second copy of the model in memory.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedagg.protocol import base_pb2
from fedagg.protocol.codec import (
    FLOAT32,
    Float32Array,
    Shape,
    check_data_length,
    shape_from_metadata,
    tensor_header,
)
from fedagg.protocol.stream import TensorStreamDecoder
from fedagg.protocol.tensor_fields import TensorRecord
from fedagg.protocol.wire import MalformedMessage, length_delimited_prefix

MODEL_TAG = "model"
_MODEL_TENSORS = 1  # ModelProto.tensors
_DATA_BYTES = 7  # NamedTensor.data_bytes


class ModelFileError(ValueError):
    """A model file that cannot be read as an OpenFL ModelProto of float32 tensors."""


@dataclass(frozen=True)
class LoadedModel:
    """A model read from a file: its round and read-only float32 views of its tensors.

    The views share the file's pages with the page cache; :meth:`release` drops them from this process's resident
    memory (they are read again from the cache when next touched), so serving or aggregating a large model does
    not leave it counted in the process's RSS.
    """

    round_number: int
    tensors: dict[str, Float32Array]
    mapping: mmap.mmap | None = field(default=None, repr=False, compare=False)
    address: int = field(default=0, repr=False, compare=False)
    """Where ``mapping`` starts in this process's memory."""

    def release(self) -> None:
        """Drop the mapped pages touched so far from resident memory (no effect on a model built in memory)."""
        if self.mapping is not None and not self.mapping.closed:
            self.mapping.madvise(mmap.MADV_DONTNEED)

    def release_values(self, values: Float32Array) -> None:
        """Drop the pages under ``values`` (a view of one of :attr:`tensors`) from resident memory."""
        if self.mapping is None or self.mapping.closed or not values.nbytes:
            return
        start = int(values.__array_interface__["data"][0]) - self.address
        if not 0 <= start < len(self.mapping):
            return  # not a view of this mapping
        aligned = start - start % mmap.PAGESIZE
        self.mapping.madvise(mmap.MADV_DONTNEED, aligned, start - aligned + values.nbytes)


def data_field_prefix(data_bytes: int) -> bytes:
    """What precedes ``data_bytes`` bytes of tensor data in a serialized NamedTensor (nothing when there are none)."""
    return length_delimited_prefix(_DATA_BYTES, data_bytes) if data_bytes else b""


def named_tensor_size(header: base_pb2.NamedTensor, data_bytes: int) -> int:
    """Bytes of the serialized NamedTensor :func:`named_tensor_body` makes of ``header`` and ``data_bytes`` bytes."""
    return header.ByteSize() + len(data_field_prefix(data_bytes)) + data_bytes


def named_tensor_body(header: base_pb2.NamedTensor, array: Float32Array) -> list[bytes | memoryview]:
    """A NamedTensor (``header`` plus ``array`` as data_bytes) as parts, without copying the data.

    The header is serialized once and the array's bytes follow as field 7, which is exactly how protobuf
    serializes the complete message.
    """
    data = np.asarray(array, dtype=FLOAT32, order="C")
    parts: list[bytes | memoryview] = [header.SerializeToString()]
    if data.nbytes:
        parts += [data_field_prefix(data.nbytes), data.reshape(-1).view(np.uint8).data]
    return parts


def encode_named_tensor(header: base_pb2.NamedTensor, array: Float32Array) -> bytes:
    """A serialized NamedTensor: ``header`` with ``array`` as its data bytes."""
    return b"".join(named_tensor_body(header, array))


def model_tensor_header(name: str, array: Float32Array, round_number: int) -> base_pb2.NamedTensor:
    """The header OpenFL writes for a model tensor in a .pbuf file."""
    return tensor_header(name, array.shape, round_number=round_number, tags=[MODEL_TAG])


def write_model(stream: BinaryIO, tensors: Mapping[str, Float32Array], round_number: int) -> None:
    """Write ``tensors`` to ``stream`` as an OpenFL ModelProto, one tensor at a time."""
    for name, array in tensors.items():
        body = named_tensor_body(model_tensor_header(name, array, round_number), array)
        stream.write(length_delimited_prefix(_MODEL_TENSORS, sum(len(part) for part in body)))
        for part in body:
            stream.write(part)


def model_tensor_prefix(name: str, shape: Shape, round_number: int) -> bytes:
    """Everything of a model file's tensor entry that precedes its data, whose float32 bytes must follow.

    Writing this, then the tensor's values in C order, is byte for byte what :func:`write_model` writes, so a
    tensor can be streamed into a model file block by block.
    """
    header = tensor_header(name, shape, round_number=round_number, tags=[MODEL_TAG]).SerializeToString()
    data_bytes = math.prod(shape) * FLOAT32.itemsize
    data_prefix = data_field_prefix(data_bytes)
    entry = len(header) + len(data_prefix) + data_bytes
    return length_delimited_prefix(_MODEL_TENSORS, entry) + header + data_prefix


def read_model(path: Path) -> LoadedModel:
    """Map an OpenFL .pbuf model file and return views of its tensors (shared with the page cache)."""
    try:
        with path.open("rb") as file:
            if path.stat().st_size == 0:
                raise ModelFileError(f"{path}: the model file is empty")
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read model file: {error.strerror}") from None
    try:
        records = list(_tensor_records(mapped))
    except MalformedMessage as error:
        raise ModelFileError(f"{path}: not an OpenFL ModelProto: {error}") from None
    if not records:
        raise ModelFileError(f"{path}: the model has no tensors")
    tensors: dict[str, Float32Array] = {}
    for record in records:
        if record.name in tensors:
            raise ModelFileError(f"{path}: tensor '{record.name}' appears twice")
        try:
            shape = shape_from_metadata(record.name, record.metadata)
            check_data_length(record.name, shape, record.data_length)
        except ValueError as error:
            raise ModelFileError(f"{path}: {error}") from None
        count = record.data_length // FLOAT32.itemsize
        tensors[record.name] = np.frombuffer(mapped, FLOAT32, count, record.data_offset).reshape(shape)
    address = int(np.frombuffer(mapped, np.uint8, 1).__array_interface__["data"][0])
    return LoadedModel(records[0].round_number, tensors, mapped, address)


def _tensor_records(mapped: mmap.mmap) -> Iterator[TensorRecord]:
    decoder = TensorStreamDecoder(_MODEL_TENSORS)
    events = decoder.feed(memoryview(mapped)) + decoder.finish()
    for event in events:
        if isinstance(event, TensorRecord):
            yield event
