"""Initial model files for configured (subprocess) aggregators."""

from __future__ import annotations

from pathlib import Path

from fedagg.federation.store import publish_model
from tests.support.runners import zero_model


def write_zero_model(directory: Path) -> Path:
    path = directory / "init.pbuf"
    publish_model(path, zero_model(), 0)
    return path
