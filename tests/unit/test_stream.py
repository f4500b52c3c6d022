"""Incremental TaskResults/ModelProto decoding with chunk boundaries anywhere (spec §2.1)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from fedagg.protocol import aggregator_pb2, base_pb2
from fedagg.protocol.codec import encode_tensor
from fedagg.protocol.results import ResultsEvent, ResultsHeader, SenderHeader, TaskResultsDecoder
from fedagg.protocol.stream import DecodeLimits, TensorStreamDecoder
from fedagg.protocol.tensor_fields import TensorRecord
from fedagg.protocol.wire import (
    MalformedMessage,
    WireType,
    datastream_payload,
    encode_varint,
    field_key,
    length_delimited_prefix,
)


def task_results(data_size: int = 10, weights: int = 6, round_number: int = 2) -> aggregator_pb2.TaskResults:
    return aggregator_pb2.TaskResults(
        header=aggregator_pb2.MessageHeader(sender="one", receiver="aggregator_x", federation_uuid="x"),
        round_number=round_number,
        task_name="train",
        data_size=data_size,
        tensors=[
            encode_tensor("loss", np.float32(0.25), round_number=round_number, tags=["metric"], report=True),
            encode_tensor(
                "w",
                np.arange(weights, dtype=np.float32),
                round_number=round_number,
                tags=["trained", "delta"],
                lossless=False,
            ),
            encode_tensor("b", -np.ones(3, np.float32), round_number=round_number, tags=["trained"]),
        ],
    )


def decode_in_pieces(payload: bytes, cuts: list[int]) -> list[ResultsEvent]:
    decoder = TaskResultsDecoder()
    events: list[ResultsEvent] = []
    bounds = [0, *sorted(cuts), len(payload)]
    for start, stop in itertools.pairwise(bounds):
        events += decoder.feed(payload[start:stop])
    return events + decoder.finish()


def assert_matches(events: list[ResultsEvent], payload: bytes, expected: aggregator_pb2.TaskResults) -> None:
    assert events[0] == SenderHeader(expected.header)
    events = events[1:]
    assert isinstance(events[0], ResultsHeader)
    header = events[0]
    assert (header.header, header.round_number, header.task_name, header.data_size) == (
        expected.header,
        expected.round_number,
        expected.task_name,
        expected.data_size,
    )
    records = [event for event in events[1:] if isinstance(event, TensorRecord)]
    assert len(records) == len(events) - 1 == len(expected.tensors)
    for record, tensor in zip(records, expected.tensors, strict=True):
        assert (record.name, record.round_number, record.lossless, record.report, list(record.tags)) == (
            tensor.name,
            tensor.round_number,
            tensor.lossless,
            tensor.report,
            list(tensor.tags),
        )
        assert list(record.metadata) == list(tensor.transformer_metadata)
        assert payload[record.data_offset : record.data_offset + record.data_length] == tensor.data_bytes


def test_whole_message_in_one_chunk() -> None:
    expected = task_results()
    payload = expected.SerializeToString()

    assert_matches(decode_in_pieces(payload, []), payload, expected)


def test_split_at_every_byte_position() -> None:
    expected = task_results()
    payload = expected.SerializeToString()

    for cut in range(1, len(payload)):
        assert_matches(decode_in_pieces(payload, [cut]), payload, expected)


def test_one_byte_at_a_time() -> None:
    expected = task_results()
    payload = expected.SerializeToString()

    assert_matches(decode_in_pieces(payload, list(range(1, len(payload)))), payload, expected)


def test_random_splits_of_a_large_upload() -> None:
    expected = task_results(weights=300_000)
    payload = expected.SerializeToString()
    rng = random.Random(7)

    for _ in range(50):
        cuts = rng.sample(range(1, len(payload)), rng.randint(1, 40))
        assert_matches(decode_in_pieces(payload, cuts), payload, expected)


def test_header_is_reported_before_the_tensor_data_arrives() -> None:
    expected = task_results(weights=100_000)
    payload = expected.SerializeToString()
    first_tensor_starts = payload.index(b"loss") - 4
    decoder = TaskResultsDecoder()

    events = decoder.feed(payload[: first_tensor_starts + 6])

    assert [type(event) for event in events] == [SenderHeader, ResultsHeader]
    assert events[1].data_size == 10  # type: ignore[union-attr]


def test_sender_header_is_reported_as_soon_as_it_is_parsed() -> None:
    payload = task_results().SerializeToString()
    header_end = 2 + len(task_results().header.SerializeToString())
    decoder = TaskResultsDecoder()

    assert decoder.feed(payload[: header_end - 1]) == []
    assert decoder.feed(payload[header_end - 1 : header_end]) == [SenderHeader(task_results().header)]


def test_a_tensor_is_reported_when_its_data_begins() -> None:
    expected = task_results(weights=100_000)
    payload = expected.SerializeToString()
    data_starts = payload.index(np.arange(4, dtype=np.float32).tobytes())
    decoder = TaskResultsDecoder()

    events = decoder.feed(payload[: data_starts + 8])

    records = [event for event in events if isinstance(event, TensorRecord)]
    assert [(record.name, record.data_offset, record.data_length) for record in records] == [
        ("loss", payload.index(np.float32(0.25).tobytes()), 4),
        ("w", data_starts, 400_000),
    ]


def test_decoder_never_buffers_tensor_data() -> None:
    expected = task_results(weights=2_000_000)
    payload = expected.SerializeToString()
    decoder = TaskResultsDecoder()

    for start in range(0, len(payload), 1 << 16):
        decoder.feed(payload[start : start + (1 << 16)])
        assert len(decoder._decoder._pending) < 1024  # only varints and small fields are ever held

    assert len(decoder.finish()) == 0


def test_upload_without_tensors_reports_header_at_end() -> None:
    expected = aggregator_pb2.TaskResults(
        header=aggregator_pb2.MessageHeader(sender="one"), task_name="t", data_size=3
    )

    events = decode_in_pieces(expected.SerializeToString(), [2])

    assert events == [SenderHeader(expected.header), ResultsHeader(expected.header, 0, "t", 3)]


def test_negative_int32_fields_decode_as_protobuf_does() -> None:
    expected = task_results(data_size=-1, round_number=0)
    payload = expected.SerializeToString()

    header = decode_in_pieces(payload, [5])[1]

    assert isinstance(header, ResultsHeader)
    assert header.data_size == -1


def test_unknown_fields_are_skipped() -> None:
    expected = task_results()
    extra = field_key(9, WireType.LEN) + encode_varint(3) + b"xyz" + field_key(10, WireType.I64) + bytes(8)
    payload = extra + expected.SerializeToString()

    assert_matches(decode_in_pieces(payload, [1, 7, 40]), payload, expected)


@pytest.mark.parametrize("cut", [1, 10, 60, -3])
def test_truncated_streams_are_refused(cut: int) -> None:
    payload = task_results().SerializeToString()
    decoder = TaskResultsDecoder()
    decoder.feed(payload[:cut])

    with pytest.raises(MalformedMessage, match="stream ended"):
        decoder.finish()


def test_empty_stream_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="empty"):
        TaskResultsDecoder().finish()


def test_fields_after_the_tensors_are_refused() -> None:
    payload = task_results().SerializeToString() + field_key(3, WireType.LEN) + encode_varint(1) + b"x"

    with pytest.raises(MalformedMessage, match="follows the tensors"):
        decode_in_pieces(payload, [])


def test_tensor_field_with_wrong_wire_type_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="wire type 0, expected 2"):
        TaskResultsDecoder().feed(field_key(5, WireType.VARINT) + encode_varint(1))


def test_field_crossing_the_end_of_a_tensor_is_refused() -> None:
    tensor = encode_tensor("w", np.zeros(4), round_number=0, tags=["trained"]).SerializeToString()
    payload = field_key(5, WireType.LEN) + encode_varint(len(tensor) - 3) + tensor

    with pytest.raises(MalformedMessage, match="crosses the end"):
        decode_in_pieces(payload, [])


def test_oversized_small_field_is_refused() -> None:
    decoder = TensorStreamDecoder(tensor_field=5, limits=DecodeLimits(field_bytes=100))

    with pytest.raises(MalformedMessage, match="limit"):
        decoder.feed(field_key(3, WireType.LEN) + encode_varint(101))


def test_unknown_fields_are_skipped_without_being_held() -> None:
    decoder = TaskResultsDecoder(DecodeLimits(field_bytes=100))
    decoder.feed(field_key(9, WireType.LEN) + encode_varint(50 << 20))

    for _ in range(50):
        decoder.feed(bytes(1 << 20))
        assert len(decoder._decoder._pending) < 16

    assert decoder.feed(task_results().SerializeToString())[0] == SenderHeader(task_results().header)


def tensor_with_tags(count: int, size: int) -> bytes:
    tensor = encode_tensor("w", np.zeros(2), round_number=0, tags=["trained"])
    tensor.tags.extend("x" * size for _ in range(count))
    return field_key(5, WireType.LEN) + encode_varint(tensor.ByteSize()) + tensor.SerializeToString()


def test_too_many_tags_are_refused() -> None:
    decoder = TaskResultsDecoder(DecodeLimits(tags_per_tensor=8))

    with pytest.raises(MalformedMessage, match="more than 8 tags"):
        decoder.feed(tensor_with_tags(8, 1))


def test_the_descriptors_of_a_stream_are_bounded_in_total() -> None:
    decoder = TaskResultsDecoder(DecodeLimits(field_bytes=1000, descriptor_bytes=10_000))
    for _ in range(2):
        decoder.feed(tensor_with_tags(4, 900))

    with pytest.raises(MalformedMessage, match="exceed 10000 bytes"):
        decoder.feed(tensor_with_tags(4, 900))


def test_fields_after_a_tensors_data_are_refused() -> None:
    tensor = encode_tensor("w", np.zeros(2), round_number=0, tags=["trained"]).SerializeToString()
    late_tag = field_key(5, WireType.LEN) + encode_varint(1) + b"x"
    payload = field_key(5, WireType.LEN) + encode_varint(len(tensor) + len(late_tag)) + tensor + late_tag

    with pytest.raises(MalformedMessage, match="follows its data_bytes"):
        TaskResultsDecoder().feed(payload)


def test_unknown_fields_after_a_tensors_data_are_skipped() -> None:
    tensor = encode_tensor("w", np.zeros(2), round_number=0, tags=["trained"]).SerializeToString()
    extension = field_key(12, WireType.LEN) + encode_varint(2) + b"xy"
    payload = field_key(5, WireType.LEN) + encode_varint(len(tensor) + len(extension)) + tensor + extension

    events = decode_in_pieces(payload, [3])

    assert [event.name for event in events if isinstance(event, TensorRecord)] == ["w"]


@pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(256)) * 10])
def test_datastream_payload_is_read_without_a_protobuf_parse(payload: bytes) -> None:
    message = base_pb2.DataStream(size=len(payload), npbytes=payload).SerializeToString()

    assert bytes(datastream_payload(message)) == payload


def test_datastream_payload_refuses_a_truncated_message() -> None:
    message = length_delimited_prefix(2, 10) + b"short"

    with pytest.raises(MalformedMessage, match="crosses the end"):
        datastream_payload(message)


def test_model_proto_decoding() -> None:
    model = base_pb2.ModelProto(tensors=[encode_tensor("a", np.ones((2, 2)), round_number=3, tags=["model"])])
    payload = model.SerializeToString()
    decoder = TensorStreamDecoder(tensor_field=1)

    events = decoder.feed(payload[:9]) + decoder.feed(payload[9:]) + decoder.finish()

    records = [event for event in events if isinstance(event, TensorRecord)]
    assert [(record.name, record.round_number) for record in records] == [("a", 3)]


def test_more_tensors_than_the_limit_are_refused() -> None:
    payload = task_results().SerializeToString()  # three tensors
    decoder = TaskResultsDecoder(DecodeLimits(tensors=2))
    with pytest.raises(MalformedMessage, match="more than 2 tensors"):
        decoder.feed(payload)


def test_every_field_costs_descriptor_budget_however_short() -> None:
    tiny = base_pb2.NamedTensor(name="t", data_bytes=b"\0").SerializeToString()
    payload = task_results().SerializeToString() + (length_delimited_prefix(5, len(tiny)) + tiny) * 1000
    lengths_only = 1000 * 2  # what the names and data lengths alone would have counted
    decoder = TaskResultsDecoder(DecodeLimits(descriptor_bytes=lengths_only * 4))
    with pytest.raises(MalformedMessage, match="counted as at least"):
        decoder.feed(payload)


def test_a_second_header_field_is_refused() -> None:
    results = task_results()
    payload = results.SerializeToString()
    second = length_delimited_prefix(1, results.header.ByteSize()) + results.header.SerializeToString()
    with pytest.raises(MalformedMessage, match="header appears twice"):
        TaskResultsDecoder().feed(second + payload)
