"""A tensor no gRPC message can carry is refused where it first appears: model init, config check, start.

Nothing here allocates the tensors: the model files are sparse (their header declares the shape, the data is a
hole) and the .npz declares its shape in a .npy header without data, so the checks must read shapes only.
"""

from __future__ import annotations

import io
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedagg.app import build_aggregator, check_files
from fedagg.config.loading import load_config
from fedagg.protocol.codec import FLOAT32
from fedagg.protocol.message_size import (
    MAX_SEND_MESSAGE_BYTES,
    REPLY_HEADER_ALLOWANCE,
    TensorTooLarge,
    check_tensors_fit,
    served_tensor_bytes,
)
from fedagg.settings import ConfigError
from tests.support.models import HUGE, SMALL, sparse_model
from tests.support.process import write_config

ROOT = Path(__file__).resolve().parents[2]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_the_largest_tensor_that_fits_fits_and_one_more_element_does_not() -> None:
    room = MAX_SEND_MESSAGE_BYTES - REPLY_HEADER_ALLOWANCE
    elements = (room - served_tensor_bytes("w", (0,))) // FLOAT32.itemsize
    while served_tensor_bytes("w", (elements,)) > room:  # the data prefix's varint grows with the size
        elements -= 1

    check_tensors_fit({"w": (elements,)}, MAX_SEND_MESSAGE_BYTES, "gRPC")
    with pytest.raises(TensorTooLarge, match=r"tensor 'w' \(\d+ float32\) is \d+ bytes .* 2147483647"):
        check_tensors_fit({"w": (elements + 1,)}, MAX_SEND_MESSAGE_BYTES, "gRPC")


def test_the_refusal_names_the_first_tensor_over_the_limit_and_the_limit() -> None:
    shapes = {"small": SMALL, "big": (4096, 4096), "bigger": (8192, 8192)}
    limit = served_tensor_bytes("big", (4096, 4096)) + REPLY_HEADER_ALLOWANCE - 1

    with pytest.raises(TensorTooLarge) as refused:
        check_tensors_fit(shapes, limit, "a test limit")

    message = str(refused.value)
    assert "tensor 'big' (4096x4096 float32)" in message
    assert f"a test limit: {limit} bytes" in message


def test_config_check_and_start_refuse_an_initial_model_with_a_tensor_over_2_gib(tmp_path: Path) -> None:
    model = sparse_model(tmp_path / "huge.pbuf", {"small": SMALL, "huge": HUGE})
    config = load_config(write_config(tmp_path, None, ("one", "two"), 1, model))
    before = peak_rss_bytes()

    for check in (check_files, build_aggregator):
        with pytest.raises(ConfigError) as refused:
            check(config)
        message = str(refused.value)
        assert message.startswith("federation.initial_model: got "), message
        assert "tensor 'huge' (600000000 float32) is 2400000" in message, message
        assert "2147483647 bytes per gRPC message" in message, message

    assert peak_rss_bytes() - before < 256 * 2**20, "the check read the data, not the shapes"


def test_config_check_accepts_a_sparse_model_whose_tensors_each_fit(tmp_path: Path) -> None:
    """Past 2 GiB in total is fine: only a single tensor must fit in one message."""
    shapes = {f"layer{index}": (300_000_000,) for index in range(2)}  # 2 x 1.2 GB
    model = sparse_model(tmp_path / "large.pbuf", shapes)
    check_files(load_config(write_config(tmp_path, None, ("one", "two"), 1, model)))


def test_model_init_refuses_a_npz_array_over_2_gib_before_reading_it(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f4", "fortran_order": False, "shape": HUGE})
    source = tmp_path / "huge.npz"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("small.npy", _npy(np.zeros(SMALL, np.float32)))
        archive.writestr("huge.npy", header.getvalue())  # the header only: reading the data would fail
    out = tmp_path / "init.pbuf"

    result = subprocess.run(
        [sys.executable, "-m", "fedagg.cli", "model", "init", "--from", str(source), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )

    assert result.returncode != 0
    assert "tensor 'huge' (600000000 float32) is 2400000" in result.stderr, result.stderr
    assert "2147483647 bytes per gRPC message" in result.stderr
    assert not out.exists()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
