"""OpenFL .pbuf model files: streamed writing, mapped reading, OpenFL's field layout (spec §3.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.store import publish_model
from fedagg.protocol import base_pb2
from fedagg.protocol.model_file import ModelFileError, read_model


def test_written_file_is_an_openfl_model_proto(tmp_path: Path) -> None:
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "scale": np.array(2.5, np.float32)}

    publish_model(tmp_path / "m.pbuf", tensors, round_number=7)

    proto = base_pb2.ModelProto.FromString((tmp_path / "m.pbuf").read_bytes())
    assert [t.name for t in proto.tensors] == ["w", "scale"]
    for tensor in proto.tensors:
        assert (tensor.round_number, tensor.lossless, tensor.report, list(tensor.tags)) == (
            7,
            True,
            False,
            ["model"],
        )
        assert len(tensor.transformer_metadata) == 1
    assert list(proto.tensors[0].transformer_metadata[0].int_list) == [2, 3]
    assert proto.tensors[0].data_bytes == tensors["w"].tobytes()
    assert list(proto.tensors[1].transformer_metadata[0].int_list) == []


def test_read_round_trips(tmp_path: Path) -> None:
    tensors = {
        "a": np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    publish_model(tmp_path / "m.pbuf", tensors, round_number=3)

    model = read_model(tmp_path / "m.pbuf")

    assert model.round_number == 3
    assert sorted(model.tensors) == ["a", "empty"]
    np.testing.assert_array_equal(model.tensors["a"], tensors["a"])
    assert model.tensors["empty"].shape == (0, 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\x0a\x05abc", "not an OpenFL ModelProto"),
        (base_pb2.ModelProto().SerializeToString() + b"\x12\x00", "no tensors"),
    ],
)
def test_unreadable_files_name_the_problem(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.pbuf").write_bytes(content)

    with pytest.raises(ModelFileError, match=message):
        read_model(tmp_path / "bad.pbuf")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="cannot read"):
        read_model(tmp_path / "absent.pbuf")


def test_shape_and_data_must_agree(tmp_path: Path) -> None:
    tensor = base_pb2.NamedTensor(name="w", tags=["model"], data_bytes=b"\0" * 8)
    tensor.transformer_metadata.add().int_list.extend([3])
    (tmp_path / "m.pbuf").write_bytes(base_pb2.ModelProto(tensors=[tensor]).SerializeToString())

    with pytest.raises(ModelFileError, match="needs 12"):
        read_model(tmp_path / "m.pbuf")
