"""The NoCompression tensor codec (spec §3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from fedagg.protocol import base_pb2
from fedagg.protocol.codec import CodecError, decode_tensor, encode_tensor, without_codec_tags


def test_encode_matches_openfl_float32_layout_and_tags() -> None:
    values = np.arange(6, dtype=np.float64).reshape(2, 3)

    tensor = encode_tensor("w", values, round_number=4, tags=["trained", "delta"], lossless=False)

    assert tensor.data_bytes == values.astype("<f4").tobytes(order="C")
    assert list(tensor.tags) == ["compressed", "delta", "trained"]
    assert [list(entry.int_list) for entry in tensor.transformer_metadata] == [[2, 3]]
    assert (tensor.name, tensor.round_number, tensor.lossless, tensor.report) == ("w", 4, False, False)


def test_scalar_has_one_empty_metadata_entry() -> None:
    tensor = encode_tensor("acc", np.float32(0.5), round_number=0, tags=["metric"], report=True)

    assert len(tensor.transformer_metadata) == 1
    assert list(tensor.transformer_metadata[0].int_list) == []
    assert decode_tensor(tensor).shape == ()
    assert float(decode_tensor(tensor)) == 0.5


def test_round_trip() -> None:
    values = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)

    decoded = decode_tensor(encode_tensor("x", values, round_number=1, tags=["model"]))

    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.tags.remove("compressed"), "lacks the 'compressed' tag"),
        (lambda t: t.tags.append("lossy_compressed"), "lossy_compressed"),
        (lambda t: t.ClearField("transformer_metadata"), "0 transformer_metadata entries"),
        (lambda t: t.transformer_metadata.add(), "2 transformer_metadata entries"),
        (lambda t: t.transformer_metadata[0].int_to_float.__setitem__(1, 0.5), "lossy-pipeline metadata"),
        (
            lambda t: setattr(t, "data_bytes", t.data_bytes[:-4]),
            r"has 20 data bytes but shape \[2, 3\] needs 24",
        ),
        (lambda t: t.transformer_metadata[0].int_list.__setitem__(0, -2), "negative dimension"),
    ],
)
def test_decode_refuses_what_the_codec_cannot_have_produced(mutate: object, message: str) -> None:
    tensor = encode_tensor("w", np.zeros((2, 3)), round_number=0, tags=["model"])
    mutate(tensor)  # type: ignore[operator]

    with pytest.raises(CodecError, match=message):
        decode_tensor(tensor)


def test_model_file_tensors_decode_without_codec_tag() -> None:
    tensor = base_pb2.NamedTensor(name="b", tags=["model"], data_bytes=np.ones(3, np.float32).tobytes())
    tensor.transformer_metadata.add().int_list.extend([3])

    np.testing.assert_array_equal(decode_tensor(tensor, codec_tagged=False), np.ones(3))


def test_without_codec_tags_keeps_order() -> None:
    assert without_codec_tags(["aggregated", "delta", "compressed"]) == ("aggregated", "delta")
    assert without_codec_tags(["model", "lossy_compressed"]) == ("model",)
