"""The ``limits`` section: what one upload may make the aggregator hold or store."""

from __future__ import annotations

from dataclasses import dataclass

from fedagg.settings import BYTES, INT32_MAX, MESSAGE_BYTES, ONE_TIB, STORED_BYTES, Range, setting


@dataclass(frozen=True)
class LimitsSettings:
    """What one upload may make the aggregator hold or store; exceeding a limit refuses the upload."""

    header_bytes: int = setting(
        64 << 10,
        help="bytes of an upload before its first tensor: all that is held before the sender is authenticated",
        check=MESSAGE_BYTES,
    )
    field_bytes: int = setting(
        16 << 10, help="longest name, tag or metadata entry of an uploaded tensor", check=MESSAGE_BYTES
    )
    tags_per_tensor: int = setting(
        32, help="most tags one uploaded tensor may carry", check=Range(1, 65535, "an integer")
    )
    descriptor_bytes: int = setting(
        4 << 20, help="all names, tags and shapes of one upload together", check=STORED_BYTES
    )
    tensors_per_upload: int = setting(
        16384,
        help="tensors (weights and metrics) in one upload: bounds the decoding work one upload causes",
        check=Range(1, INT32_MAX, "an integer"),
    )
    metrics_per_upload: int = setting(
        1024,
        help="metrics in one upload; an upload with more is rejected as content (metric_count)",
        check=Range(1, INT32_MAX, "an integer"),
    )
    metric_names_per_task: int = setting(
        256,
        help="distinct metric names (metric series) a task may report over the experiment, first come first "
        "served; values of other names are left out of the metric stream and aggregated metrics, and counted",
        check=Range(1, INT32_MAX, "an integer"),
    )
    upload_bytes: int | None = setting(
        None,
        help="largest upload (null: model size + extra_tensor_bytes + 16 MiB); a larger one is rejected",
        check=STORED_BYTES,
    )
    extra_tensor_bytes: int | None = setting(
        None,
        help="data of tensors that are not in the model (optimizer state) per upload, and what they may add to the "
        "model over the experiment (null: 2 x the initial model's size)",
        check=Range(0, ONE_TIB, BYTES),
    )
    aggregation_bytes: int = setting(
        64 << 20,
        help="memory a round end's aggregation holds for blocks of contributions: blocks shrink as "
        "contributions grow (at least 4096 values each)",
        check=STORED_BYTES,
    )
