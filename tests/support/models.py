"""Initial model files for configured (subprocess) aggregators."""

from __future__ import annotations

import math
import os
from pathlib import Path

from fedagg.federation.store import publish_model
from fedagg.protocol.codec import FLOAT32
from fedagg.protocol.model_file import model_tensor_prefix
from tests.support.runners import zero_model

HUGE = (600_000_000,)
"""2.4 GB of float32: over the 2 GiB - 1 bytes of one gRPC message."""
SMALL = (1024, 1024)


def write_zero_model(directory: Path) -> Path:
    path = directory / "init.pbuf"
    publish_model(path, zero_model(), 0)
    return path


def sparse_model(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A .pbuf whose tensors' data are holes: the headers are real, no data page is written."""
    with path.open("wb") as file:
        for name, shape in shapes.items():
            file.write(model_tensor_prefix(name, shape, 0))
            file.seek(math.prod(shape) * FLOAT32.itemsize, os.SEEK_CUR)
        file.truncate()
    return path
