"""Whether a model's tensors can travel: each one is served whole in a single GetAggregatedTensor reply.

A gRPC message carries at most 2 GiB - 1 bytes, and OpenFL's protocol sends a tensor in one message, so a tensor
whose reply would not fit must be refused where it first appears (``fedagg model init``, ``fedagg config check``,
the initial model at start), not when the first reply is built. Only shapes are read: the check costs nothing
for a model of any size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedagg.protocol.codec import COMPRESSED, FLOAT32, Shape, tensor_header
from fedagg.protocol.model_file import named_tensor_size

MAX_SEND_MESSAGE_BYTES = 2**31 - 1
"""The largest message gRPC sends (its lengths are int32)."""

REPLY_HEADER_ALLOWANCE = 64 * 1024
"""Bytes a GetAggregatedTensor reply may need around its NamedTensor: the message header (party names) and the
tensor field's prefix. Generous, so that no configuration of names makes a reply that passed the check too big."""
_LONGEST_TAGS = ("aggregated", COMPRESSED, "delta")
"""The served form with the most tag bytes (the change since the previous round)."""
_LARGEST_ROUND = 2**31 - 1


class TensorTooLarge(ValueError):
    """A tensor that cannot be sent in one gRPC message."""


def served_tensor_bytes(name: str, shape: Shape) -> int:
    """The most bytes the NamedTensor of a float32 tensor ``name`` of ``shape`` takes in any reply."""
    header = tensor_header(name, shape, round_number=_LARGEST_ROUND, tags=_LONGEST_TAGS)
    return named_tensor_size(header, math.prod(shape) * FLOAT32.itemsize)


def check_tensors_fit(shapes: Mapping[str, Shape], limit: int, what: str) -> None:
    """Raise :class:`TensorTooLarge` naming the first tensor whose reply would exceed ``limit`` bytes.

    ``what`` names the limit (e.g. the setting or constant it comes from) in the message.
    """
    room = limit - REPLY_HEADER_ALLOWANCE
    for name, shape in shapes.items():
        size = served_tensor_bytes(name, shape)
        if size > room:
            dims = "x".join(map(str, shape)) or "scalar"
            raise TensorTooLarge(
                f"tensor '{name}' ({dims} float32) is {size} bytes as a NamedTensor: a GetAggregatedTensor reply "
                f"carries at most {room} bytes of tensor ({what}: {limit} bytes per gRPC message, less "
                f"{REPLY_HEADER_ALLOWANCE} for the reply's header), and OpenFL's protocol sends a tensor whole; "
                "split it into smaller tensors"
            )
