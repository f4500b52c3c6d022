"""The collaborator's tensor transfer: uploads are byte for byte OpenFL's serialization, replies decode in place."""

from __future__ import annotations

import numpy as np
import pytest

from fedagg.collaborator.transfer import OutgoingTensor, parse_tensor_reply, task_results_messages
from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import CodecError, encode_tensor, tensor_header

HEADER = aggregator_pb2.MessageHeader(sender="one", receiver="agg", federation_uuid="fed")


def results() -> aggregator_pb2.TaskResults:
    return aggregator_pb2.TaskResults(header=HEADER, round_number=3, task_name="train", data_size=10)


def payloads(messages: list[bytes]) -> list[bytes]:
    chunks = [base_pb2.DataStream.FromString(message) for message in messages]
    assert all(chunk.size == len(chunk.npbytes) for chunk in chunks)
    return [chunk.npbytes for chunk in chunks]


@pytest.mark.parametrize("chunk_bytes", [7, 1000, 2 * 1024 * 1024])
def test_an_upload_is_the_serialized_task_results_cut_into_chunks(chunk_bytes: int) -> None:
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((33, 17), np.float32), "b": rng.standard_normal(5, np.float32)}
    metric = encode_tensor("loss", np.float32(0.5), round_number=3, tags=("metric",), report=True)
    expected = results()
    expected.tensors.extend(
        [encode_tensor(name, values, round_number=3, tags=("trained",)) for name, values in arrays.items()]
    )
    expected.tensors.append(metric)
    outgoing: list[OutgoingTensor | base_pb2.NamedTensor] = [
        OutgoingTensor.of(name, values, round_number=3, tags=("trained",)) for name, values in arrays.items()
    ]

    pieces = payloads(list(task_results_messages(results(), [*outgoing, metric], chunk_bytes)))

    assert b"".join(pieces) == expected.SerializeToString()
    assert all(len(piece) == chunk_bytes for piece in pieces[:-1])
    assert 0 < len(pieces[-1]) <= chunk_bytes


def test_a_tensor_computed_into_a_reused_scratch_array_is_sent_as_it_was_when_computed() -> None:
    scratch = np.empty(100, np.float32)

    def filled(value: float) -> np.ndarray:
        scratch.fill(value)
        return scratch

    tensors = [
        OutgoingTensor.of(f"t{index}", lambda index=index: filled(index), round_number=0, tags=("trained",))
        for index in range(3)
    ]

    stream = b"".join(payloads(list(task_results_messages(results(), tensors, chunk_bytes=150))))

    parsed = aggregator_pb2.TaskResults.FromString(stream)
    assert [np.frombuffer(t.data_bytes, np.float32)[0] for t in parsed.tensors] == [0.0, 1.0, 2.0]
    assert all(np.all(np.frombuffer(t.data_bytes, np.float32) == i) for i, t in enumerate(parsed.tensors))


def reply(tensor: base_pb2.NamedTensor) -> bytes:
    return aggregator_pb2.GetAggregatedTensorResponse(
        header=HEADER, round_number=2, tensor=tensor
    ).SerializeToString()


def test_a_reply_decodes_to_a_read_only_view_of_its_bytes() -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4)

    decoded = parse_tensor_reply(reply(encode_tensor("w", values, round_number=2, tags=("model",))))

    assert decoded.name == "w"
    assert decoded.header == HEADER
    np.testing.assert_array_equal(decoded.values, values)
    assert not decoded.values.flags.writeable


def test_an_empty_tensor_decodes() -> None:
    decoded = parse_tensor_reply(
        reply(encode_tensor("e", np.zeros((0, 3), np.float32), round_number=0, tags=()))
    )
    assert decoded.values.shape == (0, 3)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (reply(tensor_header("w", (2,), round_number=0, tags=("model", "compressed"))), "0 data bytes"),
        (
            reply(encode_tensor("w", np.ones(2, np.float32), round_number=0, tags=())).replace(
                b"compressed", b"c0mpressed"
            ),
            "'compressed' tag",
        ),
        (aggregator_pb2.GetAggregatedTensorResponse(header=HEADER).SerializeToString(), "0 tensors"),
        (reply(encode_tensor("w", np.ones(2, np.float32), round_number=0, tags=()))[:-3], "malformed"),
    ],
)
def test_a_reply_that_is_not_one_float32_tensor_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_tensor_reply(raw)
