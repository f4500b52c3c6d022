"""The compiled protocol matches OpenFL's wire contract, and the generated code is fresh.

The contract is 1.7.1's (openfl-wire-spec.md §1) plus what 1.8 and 1.9 added (openfl-1.9-delta.md §1): Ping and
InteropRelay with their messages. 1.8/1.9 removed the three director RPCs, which their clients never call, so
serving the union serves every version.
"""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
import types
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from fedagg.protocol import aggregator_pb2, base_pb2, tier_pb2

ROOT = Path(__file__).resolve().parents[2]
T = FieldDescriptor
STRING, BYTES, BOOL, INT32, UINT32, FLOAT, MESSAGE, ENUM = (
    T.TYPE_STRING,
    T.TYPE_BYTES,
    T.TYPE_BOOL,
    T.TYPE_INT32,
    T.TYPE_UINT32,
    T.TYPE_FLOAT,
    T.TYPE_MESSAGE,
    T.TYPE_ENUM,
)
ONE, MANY = "optional", "repeated"

# message full name -> {field: (number, type, label, type full name or "")}, transcribed from the spec's protos.
CONTRACT: dict[str, dict[str, tuple[int, int, str, str]]] = {
    "ModelProto": {"tensors": (1, MESSAGE, MANY, "NamedTensor")},
    "NamedTensor": {
        "name": (1, STRING, ONE, ""),
        "round_number": (2, INT32, ONE, ""),
        "lossless": (3, BOOL, ONE, ""),
        "report": (4, BOOL, ONE, ""),
        "tags": (5, STRING, MANY, ""),
        "transformer_metadata": (6, MESSAGE, MANY, "MetadataProto"),
        "data_bytes": (7, BYTES, ONE, ""),
    },
    "MetadataProto": {
        "int_to_float": (1, MESSAGE, MANY, "MetadataProto.IntToFloatEntry"),
        "int_list": (2, INT32, MANY, ""),
        "bool_list": (3, BOOL, MANY, ""),
    },
    "MetadataProto.IntToFloatEntry": {"key": (1, INT32, ONE, ""), "value": (2, FLOAT, ONE, "")},
    "DataStream": {"size": (1, UINT32, ONE, ""), "npbytes": (2, BYTES, ONE, "")},
    "CollaboratorDescription": {
        "name": (1, STRING, ONE, ""),
        "status": (2, STRING, ONE, ""),
        "progress": (3, FLOAT, ONE, ""),
        "round": (4, UINT32, ONE, ""),
        "current_task": (5, STRING, ONE, ""),
        "next_task": (6, STRING, ONE, ""),
        "last_contact": (100, T.TYPE_DOUBLE, ONE, ""),  # fedagg's addition; OpenFL's parsers skip it
    },
    "TaskDescription": {"name": (1, STRING, ONE, ""), "description": (2, STRING, ONE, "")},
    "DownloadStatus": {"name": (1, STRING, ONE, ""), "status": (2, STRING, ONE, "")},
    "DownloadStatuses": {
        "models": (1, MESSAGE, MANY, "DownloadStatus"),
        "logs": (2, MESSAGE, MANY, "DownloadStatus"),
    },
    "ExperimentDescription": {
        "name": (1, STRING, ONE, ""),
        "status": (2, STRING, ONE, ""),
        "progress": (3, FLOAT, ONE, ""),
        "total_rounds": (4, UINT32, ONE, ""),
        "current_round": (5, UINT32, ONE, ""),
        "download_statuses": (6, MESSAGE, ONE, "DownloadStatuses"),
        "collaborators": (7, MESSAGE, MANY, "CollaboratorDescription"),
        "tasks": (8, MESSAGE, MANY, "TaskDescription"),
    },
    "openfl.aggregator.MessageHeader": {
        "sender": (1, STRING, ONE, ""),
        "receiver": (2, STRING, ONE, ""),
        "federation_uuid": (3, STRING, ONE, ""),
        "single_col_cert_common_name": (4, STRING, ONE, ""),
    },
    "openfl.aggregator.GetTasksRequest": {"header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader")},
    "openfl.aggregator.Task": {
        "name": (1, STRING, ONE, ""),
        "function_name": (2, STRING, ONE, ""),
        "task_type": (3, STRING, ONE, ""),
        "apply_local": (4, BOOL, ONE, ""),
    },
    "openfl.aggregator.GetTasksResponse": {
        "header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader"),
        "round_number": (2, INT32, ONE, ""),
        "tasks": (3, MESSAGE, MANY, "openfl.aggregator.Task"),
        "sleep_time": (4, INT32, ONE, ""),
        "quit": (5, BOOL, ONE, ""),
    },
    "openfl.aggregator.GetAggregatedTensorRequest": {
        "header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader"),
        "tensor_name": (2, STRING, ONE, ""),
        "round_number": (3, INT32, ONE, ""),
        "report": (4, BOOL, ONE, ""),
        "tags": (5, STRING, MANY, ""),
        "require_lossless": (6, BOOL, ONE, ""),
    },
    "openfl.aggregator.GetAggregatedTensorResponse": {
        "header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader"),
        "round_number": (2, INT32, ONE, ""),
        "tensor": (3, MESSAGE, ONE, "NamedTensor"),
    },
    "openfl.aggregator.TaskResults": {
        "header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader"),
        "round_number": (2, INT32, ONE, ""),
        "task_name": (3, STRING, ONE, ""),
        "data_size": (4, INT32, ONE, ""),
        "tensors": (5, MESSAGE, MANY, "NamedTensor"),
    },
    "openfl.aggregator.SendLocalTaskResultsResponse": {
        "header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader"),
    },
    "openfl.aggregator.GetMetricStreamRequest": {"experiment_name": (1, STRING, ONE, "")},
    "openfl.aggregator.GetMetricStreamResponse": {
        "metric_origin": (1, STRING, ONE, ""),
        "task_name": (2, STRING, ONE, ""),
        "metric_name": (3, STRING, ONE, ""),
        "metric_value": (4, FLOAT, ONE, ""),
        "round": (5, UINT32, ONE, ""),
    },
    "openfl.aggregator.GetTrainedModelRequest": {
        "experiment_name": (2, STRING, ONE, ""),
        "model_type": (3, ENUM, ONE, "openfl.aggregator.GetTrainedModelRequest.ModelType"),
    },
    "openfl.aggregator.TrainedModelResponse": {"model_proto": (1, MESSAGE, ONE, "ModelProto")},
    "openfl.aggregator.GetExperimentDescriptionRequest": {"name": (1, STRING, ONE, "")},
    "openfl.aggregator.GetExperimentDescriptionResponse": {
        "experiment": (1, MESSAGE, ONE, "ExperimentDescription"),
    },
    # OpenFL 1.9: Ping.
    "openfl.aggregator.PingRequest": {"header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader")},
    "openfl.aggregator.PingResponse": {"header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader")},
    # OpenFL 1.8/1.9: InteropRelay (Flower interop).
    "openfl.aggregator.InteropMessage": {
        "header": (1, MESSAGE, ONE, "openfl.aggregator.MessageHeader"),
        "message": (2, MESSAGE, ONE, "DataStream"),
        "metadata": (3, MESSAGE, MANY, "openfl.aggregator.InteropMessage.MetadataEntry"),
    },
    "openfl.aggregator.InteropMessage.MetadataEntry": {
        "key": (1, STRING, ONE, ""),
        "value": (2, STRING, ONE, ""),
    },
}

# rpc -> (request, response, client streaming, server streaming)
RPCS = {
    "GetTasks": ("openfl.aggregator.GetTasksRequest", "openfl.aggregator.GetTasksResponse", False, False),
    "GetAggregatedTensor": (
        "openfl.aggregator.GetAggregatedTensorRequest",
        "openfl.aggregator.GetAggregatedTensorResponse",
        False,
        False,
    ),
    "SendLocalTaskResults": ("DataStream", "openfl.aggregator.SendLocalTaskResultsResponse", True, False),
    "GetMetricStream": (
        "openfl.aggregator.GetMetricStreamRequest",
        "openfl.aggregator.GetMetricStreamResponse",
        False,
        True,
    ),
    "GetTrainedModel": (
        "openfl.aggregator.GetTrainedModelRequest",
        "openfl.aggregator.TrainedModelResponse",
        False,
        False,
    ),
    "GetExperimentDescription": (
        "openfl.aggregator.GetExperimentDescriptionRequest",
        "openfl.aggregator.GetExperimentDescriptionResponse",
        False,
        False,
    ),
    "Ping": ("openfl.aggregator.PingRequest", "openfl.aggregator.PingResponse", False, False),
    "InteropRelay": ("openfl.aggregator.InteropMessage", "openfl.aggregator.InteropMessage", False, False),
}


def _messages(file: FileDescriptor) -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def visit(descriptor: Descriptor) -> None:
        found[descriptor.full_name] = descriptor
        for nested in descriptor.nested_types:
            visit(nested)

    for descriptor in file.message_types_by_name.values():
        visit(descriptor)
    return found


def _label(field: FieldDescriptor) -> str:
    return MANY if field.is_repeated else ONE


def test_file_names_and_packages_match_openfl() -> None:
    assert base_pb2.DESCRIPTOR.name == "openfl/protocols/base.proto"
    assert base_pb2.DESCRIPTOR.package == ""
    assert aggregator_pb2.DESCRIPTOR.name == "openfl/protocols/aggregator.proto"
    assert aggregator_pb2.DESCRIPTOR.package == "openfl.aggregator"
    assert [dependency.name for dependency in aggregator_pb2.DESCRIPTOR.dependencies] == [
        "openfl/protocols/base.proto"
    ]


def test_every_message_and_field_matches_the_contract() -> None:
    compiled = _messages(base_pb2.DESCRIPTOR) | _messages(aggregator_pb2.DESCRIPTOR)

    assert sorted(compiled) == sorted(CONTRACT)
    for name, expected in CONTRACT.items():
        actual = {
            field.name: (
                field.number,
                field.type,
                _label(field),
                field.message_type.full_name
                if field.message_type
                else field.enum_type.full_name
                if field.enum_type
                else "",
            )
            for field in compiled[name].fields
        }
        assert actual == expected, name


def test_model_type_enum_values() -> None:
    enum = aggregator_pb2.GetTrainedModelRequest.ModelType

    assert dict(enum.items()) == {"BEST_MODEL": 0, "LAST_MODEL": 1}


def test_every_rpc_and_its_streaming_match_the_contract() -> None:
    service = aggregator_pb2.DESCRIPTOR.services_by_name["Aggregator"]

    assert service.full_name == "openfl.aggregator.Aggregator"
    actual = {
        method.name: (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        )
        for method in service.methods
    }
    assert actual == RPCS


def test_generated_code_is_what_the_script_generates() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-protos"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr


def test_the_tier_protocol_is_generated_and_checked_by_the_same_script() -> None:
    assert tier_pb2.DESCRIPTOR.name == "fedagg/tier/v1/tier.proto"
    assert tier_pb2.DESCRIPTOR.package == "fedagg.tier.v1"
    service = tier_pb2.DESCRIPTOR.services_by_name["Tier"]
    assert {method.name: method.client_streaming for method in service.methods} == {
        "Claim": False,
        "DeliverPartial": True,
        "DescribeReplicas": False,
        "FetchModel": False,
        "WatchRounds": False,
        "FetchOwnResults": False,
        "AwaitOwnResultsAsks": False,
        "DeliverOwnResults": True,
    }
    loader = importlib.machinery.SourceFileLoader("gen_protos", str(ROOT / "scripts" / "gen-protos"))
    script = types.ModuleType(loader.name)
    script.__file__ = loader.path
    loader.exec_module(script)
    generated = script.generate()
    for name in ("tier_pb2.py", "tier_pb2.pyi", "tier_pb2_grpc.py", "tier_pb2_grpc.pyi"):
        assert generated[name] == (ROOT / "service" / "fedagg" / "protocol" / name).read_text()
        assert "fedagg.tier.v1 import" not in generated[name]
