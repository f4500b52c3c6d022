"""The benchmark's models: float32 tensors of (almost) equal size, written as OpenFL .pbuf initial models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedagg.federation.store import publish_model

MIB = 2**20


def shapes_for(params: int, tensors: int = 8) -> dict[str, list[int]]:
    """``params`` float32 parameters in ``tensors`` tensors, 2-D (rows of 1024) like a layer's weights."""
    per, rest = divmod(params, tensors)
    shapes = {}
    for index in range(tensors):
        elements = per + (1 if index < rest else 0)
        columns = 1024 if elements % 1024 == 0 else 1
        shapes[f"layer{index}"] = [elements // columns, columns]
    return shapes


def write_init_model(shapes: dict[str, list[int]], path: Path) -> Path:
    """A model of zeros with these shapes (once; later calls reuse the file)."""
    if not path.exists():
        publish_model(path, {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}, 0)
    return path
