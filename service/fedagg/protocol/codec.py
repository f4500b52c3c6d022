"""OpenFL's NoCompression tensor codec: float32 C-order bytes plus one shape metadata entry.

Every tensor on the wire carries the ``compressed`` tag (the codec marker OpenFL's ``TensorCodec`` adds and
strips) and exactly one ``MetadataProto`` whose ``int_list`` is the shape (empty for a scalar).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from fedagg.protocol import base_pb2

COMPRESSED = "compressed"
LOSSY_COMPRESSED = "lossy_compressed"
CODEC_TAGS = frozenset({COMPRESSED, LOSSY_COMPRESSED})
FLOAT32 = np.dtype("<f4")

Shape = tuple[int, ...]
Float32Array = npt.NDArray[np.float32]


class CodecError(ValueError):
    """A tensor that the NoCompression codec cannot decode."""


def without_codec_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Tags with the codec markers removed, in their original order."""
    return tuple(tag for tag in tags if tag not in CODEC_TAGS)


def shape_from_metadata(name: str, metadata: Sequence[base_pb2.MetadataProto]) -> Shape:
    """The shape a NoCompression tensor declares; raise :class:`CodecError` for anything else."""
    if len(metadata) != 1:
        raise CodecError(
            f"tensor '{name}' has {len(metadata)} transformer_metadata entries; the NoCompression codec "
            "needs exactly one holding the shape in int_list"
        )
    entry = metadata[0]
    if entry.int_to_float or entry.bool_list:
        raise CodecError(
            f"tensor '{name}' carries lossy-pipeline metadata (int_to_float/bool_list); only OpenFL's "
            "NoCompressionPipeline is supported"
        )
    shape = tuple(int(dim) for dim in entry.int_list)
    if any(dim < 0 for dim in shape):
        raise CodecError(f"tensor '{name}' declares a negative dimension in shape {shape}")
    return shape


def check_codec_tags(name: str, tags: Iterable[str]) -> None:
    """Require the ``compressed`` marker that OpenFL's codec puts on every encoded tensor."""
    tag_set = set(tags)
    if LOSSY_COMPRESSED in tag_set:
        raise CodecError(
            f"tensor '{name}' is lossy_compressed; only OpenFL's NoCompressionPipeline is supported"
        )
    if COMPRESSED not in tag_set:
        raise CodecError(
            f"tensor '{name}' lacks the 'compressed' tag that OpenFL's tensor codec adds to every encoded tensor"
        )


def expected_data_length(shape: Shape) -> int:
    """Number of data bytes a float32 tensor of ``shape`` has."""
    return math.prod(shape) * FLOAT32.itemsize


def check_data_length(name: str, shape: Shape, data_length: int) -> None:
    """Require ``data_length`` to match a float32 tensor of ``shape``."""
    expected = expected_data_length(shape)
    if data_length != expected:
        raise CodecError(
            f"tensor '{name}' has {data_length} data bytes but shape {list(shape)} needs {expected} "
            "(float32, C order)"
        )


def tensor_header(
    name: str,
    shape: Shape,
    *,
    round_number: int,
    tags: Iterable[str],
    lossless: bool = True,
    report: bool = False,
) -> base_pb2.NamedTensor:
    """A NamedTensor with every field but ``data_bytes`` set; ``tags`` are used as given."""
    header = base_pb2.NamedTensor(
        name=name, round_number=round_number, lossless=lossless, report=report, tags=list(tags)
    )
    header.transformer_metadata.add().int_list.extend(shape)
    return header


def encode_tensor(
    name: str,
    array: npt.ArrayLike,
    *,
    round_number: int,
    tags: Iterable[str],
    lossless: bool = True,
    report: bool = False,
) -> base_pb2.NamedTensor:
    """Encode ``array`` as OpenFL's codec would: float32 bytes, shape metadata, sorted tags plus ``compressed``."""
    values = np.asarray(array, dtype=FLOAT32, order="C")
    tensor = tensor_header(
        name,
        values.shape,
        round_number=round_number,
        tags=sorted(set(tags) | {COMPRESSED}),
        lossless=lossless,
        report=report,
    )
    tensor.data_bytes = values.tobytes()
    return tensor


def decode_tensor(tensor: base_pb2.NamedTensor, *, codec_tagged: bool = True) -> Float32Array:
    """Decode a NoCompression NamedTensor; raise :class:`CodecError` otherwise.

    Tensors on the wire carry the ``compressed`` tag; model-file tensors (``codec_tagged=False``) do not.
    """
    if codec_tagged:
        check_codec_tags(tensor.name, tensor.tags)
    shape = shape_from_metadata(tensor.name, tensor.transformer_metadata)
    check_data_length(tensor.name, shape, len(tensor.data_bytes))
    return np.frombuffer(tensor.data_bytes, dtype=FLOAT32).reshape(shape)
