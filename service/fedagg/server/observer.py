"""What the server reports to operations: refused callers, bytes on the wire, held calls, and limit breaches."""

from __future__ import annotations

from enum import StrEnum


class Limit(StrEnum):
    """The named limits a caller can run into (the ``limit`` label of ``fedagg_limit_breaches_total``)."""

    HEADER_BYTES = "header_bytes"
    DESCRIPTOR_BYTES = "descriptor_bytes"
    FIELD_BYTES = "field_bytes"
    TAGS_PER_TENSOR = "tags_per_tensor"
    METADATA_PER_TENSOR = "metadata_per_tensor"
    TENSORS_PER_UPLOAD = "tensors_per_upload"
    CONCURRENT_UPLOADS = "concurrent_uploads_per_task"
    UPLOAD_IDLE = "upload_idle_seconds"
    REPLY_SEND = "reply_send_seconds"
    REPLIES_PER_CALLER = "replies_in_flight"
    METRIC_STREAMS = "metric_streams"
    METRIC_STREAM_QUEUE = "metric_stream_queue"


class ServerObserver:
    """What the server reports to operations (metrics). The default ignores everything."""

    def auth_failed(self, reason: str) -> None:
        """A caller was refused; ``reason`` is a short label."""

    def bytes_received(self, count: int) -> None:
        """A request message of ``count`` bytes arrived."""

    def bytes_sent(self, count: int) -> None:
        """A reply message of ``count`` bytes was serialized."""

    def background_failed(self, task: str) -> None:
        """A background task (``round_clock``) raised; it keeps running."""

    def tasks_held(self, change: int) -> None:
        """The number of held GetTasks calls changed by ``change``."""

    def tasks_hold_ended(self, seconds: float) -> None:
        """A held GetTasks call was answered after ``seconds``."""

    def replies_in_flight(self, size: int, waiting: int) -> None:
        """Tensor replies now hold ``size`` bytes, and ``waiting`` more wait for the reply budget."""

    def limit_breached(self, limit: Limit) -> None:
        """A caller ran into ``limit``: its call was refused, ended or trimmed."""
