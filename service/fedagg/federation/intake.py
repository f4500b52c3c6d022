"""An upload on its way in: admitted from its header, then checked tensor by tensor as it streams to the spool.

:class:`Admission` is the decision taken from the TaskResults header (before any tensor arrives): use the
upload, or answer it OK and ignore it (wrong round, duplicate, straggler...), as OpenFL does. An admitted upload
goes through an :class:`UploadIntake`, which checks every tensor's description as soon as its data begins (before
the bulk is spooled) and every value as it passes (finite; for a delta, finite once added to its base). The first
failed check sets :attr:`UploadIntake.rejection`; the caller then stops reading and records the rejection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from fedagg.federation.contribution import (
    Contribution,
    ContributionRejected,
    MetricValue,
    RejectionReason,
    TensorRole,
    UploadedTensor,
    classify_tensor,
)
from fedagg.federation.integrity import FileDigest
from fedagg.federation.plan import ResolvedLimits
from fedagg.federation.rounds import Round
from fedagg.federation.spool import SpoolWriter
from fedagg.protocol.codec import FLOAT32, Float32Array
from fedagg.protocol.tensor_fields import TensorRecord


class IgnoreReason(StrEnum):
    """Why an upload is answered OK but not used (the label of ``fedagg_task_results_total{outcome}``)."""

    FINISHED = "finished"
    WRONG_ROUND = "wrong_round"
    ROUND_CLOSED = "round_closed"
    DUPLICATE = "duplicate"
    NOT_ASSIGNED = "not_assigned"
    UNKNOWN_TASK = "unknown_task"


@dataclass(frozen=True)
class Admission:
    """The decision on an upload, taken from its header before its tensors arrive."""

    collaborator: str
    task: str
    round_number: int
    data_size: int
    ignored: IgnoreReason | None = None
    message: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the upload goes on to be checked (otherwise it is answered OK and dropped)."""
        return self.ignored is None

    def ignore(self, reason: IgnoreReason, message: str) -> Admission:
        """This admission, decided as an ignore for ``reason``."""
        return replace(self, ignored=reason, message=message)


def ignore_reason(
    tasks: Collection[str], round_: Round | None, admission: Admission
) -> tuple[IgnoreReason | None, str]:
    """Why an upload is not to be used now (None when it is), with a message for the log.

    OpenFL answers all of these OK and carries on; so does fedagg (spec §3.7).
    """
    collaborator, task = admission.collaborator, admission.task
    if round_ is None:
        return IgnoreReason.FINISHED, "the experiment has finished"
    if task not in tasks:
        return (
            IgnoreReason.UNKNOWN_TASK,
            f"TaskResults.task_name {task[:64]!r} is not a task of this plan (tasks: {sorted(tasks)[:8]})",
        )
    if admission.round_number != round_.number:
        return (
            IgnoreReason.WRONG_ROUND,
            f"results are for round {admission.round_number}, the current round is {round_.number}",
        )
    if round_.closing:
        return (
            IgnoreReason.ROUND_CLOSED,
            f"round {round_.number} has closed ({_standing(round_, collaborator)})",
        )
    assigned = round_.assignment.get(collaborator, ())
    if task not in assigned:
        return (
            IgnoreReason.NOT_ASSIGNED,
            f"task {task!r} is not assigned to {collaborator} in round {round_.number} (its tasks: {list(assigned)})",
        )
    if round_.has_received(collaborator, task):
        return (
            IgnoreReason.DUPLICATE,
            f"{collaborator} already sent results for {task!r} in round {round_.number}",
        )
    return None, ""


def _standing(round_: Round, collaborator: str) -> str:
    """What a closing round's decision made of ``collaborator`` (only one it left out is called a straggler)."""
    if collaborator in round_.stragglers:
        return f"{collaborator} is a straggler"
    if round_.decision is not None and collaborator in round_.decision.done:
        return f"{collaborator}'s results are counted in it"
    return f"{collaborator} has no task in it"


class _ValueCheck:
    """Checks one tensor's values as its bytes pass, whatever the chunk boundaries."""

    def __init__(self, tensor: UploadedTensor, base: Float32Array | None) -> None:
        self.tensor = tensor
        self.end = tensor.data_offset + tensor.data_length
        self.next = tensor.data_offset
        self.first_value: float | None = None
        self._base = base
        self._carry = b""
        self._checked = 0

    def feed(self, data: memoryview, offset: int) -> bool:
        """Check the part of ``data`` (starting at stream ``offset``) that holds this tensor; False if not finite."""
        piece = data[self.next - offset : min(self.end, offset + len(data)) - offset]
        self.next += len(piece)
        if self._carry:
            head = self._carry + bytes(piece[: FLOAT32.itemsize - len(self._carry)])
            piece = piece[FLOAT32.itemsize - len(self._carry) :]
            if len(head) < FLOAT32.itemsize:
                self._carry = head
                return True
            self._carry = b""
            if not self._check(np.frombuffer(head, FLOAT32)):
                return False
        whole = len(piece) - len(piece) % FLOAT32.itemsize
        self._carry = bytes(piece[whole:])
        return whole == 0 or self._check(np.frombuffer(piece[:whole], FLOAT32))

    @property
    def complete(self) -> bool:
        return self.next >= self.end

    def _check(self, values: Float32Array) -> bool:
        start = self._checked
        self._checked += len(values)
        if self._base is not None:
            with np.errstate(over="ignore"):  # an overflow to infinity is what this check detects
                values = self._base[start : start + len(values)] + values
        if start == 0:
            self.first_value = float(values[0])
        return bool(np.isfinite(values).all())


class UploadIntake:
    """Checks one admitted upload against the round's model and the plan while it streams into the spool.

    A single-owner object, not thread-safe: owned by the upload's receiver until it is handed to
    :meth:`~fedagg.federation.federation.Federation.commit`; the commit owns it from then on (and always disposes
    of it: :meth:`discard`), and nobody else touches it again. While the receiver owns it, one caller at a time:
    the event loop or an executor thread calls :meth:`tensor`, an executor thread :meth:`absorb`, never two at
    once.
    """

    def __init__(
        self,
        admission: Admission,
        model: Mapping[str, Float32Array],
        limits: ResolvedLimits,
        spool: SpoolWriter | None = None,
    ) -> None:
        self.admission = admission
        self.spool = spool
        self.digest: FileDigest | None = None
        self.rejection: ContributionRejected | None = None
        self._model = model
        self._limits = limits
        self._tensors: list[UploadedTensor] = []
        self._identities: set[object] = set()
        self._extra_bytes = 0
        self._metric_count = 0
        self._pending: deque[_ValueCheck] = deque()
        self._metric_values: dict[int, float] = {}
        if admission.data_size < -1:
            self.rejection = ContributionRejected(
                RejectionReason.DATA_SIZE,
                f"TaskResults.data_size is {admission.data_size}; expected the number of samples (>= 0) or -1",
            )

    def tensor(self, record: TensorRecord) -> None:
        """Check a tensor's description (its data is about to arrive)."""
        if self.rejection is not None:
            return
        try:
            self._check_tensor(record)
        except ContributionRejected as rejection:
            self.rejection = rejection

    def absorb(self, data: memoryview, offset: int) -> None:
        """Take the upload's bytes at stream ``offset``: spool them and check the values they hold."""
        if self.rejection is not None:
            return
        end = offset + len(data)
        if end > self._limits.upload_bytes:
            self.rejection = _too_large(self._limits)
            return
        if self.spool is not None:
            self.spool.write(data)
        while self._pending and self._pending[0].next < end:
            check = self._pending[0]
            if not check.feed(data, offset):
                tensor = check.tensor
                detail = " once added to its base" if tensor.is_delta else ""
                self.rejection = ContributionRejected(
                    RejectionReason.NON_FINITE, f"tensor '{tensor.name}' holds NaN or infinite values{detail}"
                )
                return
            if not check.complete:
                break
            self._pending.popleft()
            if check.tensor.role == TensorRole.METRIC and check.first_value is not None:
                self._metric_values[check.tensor.data_offset] = check.first_value

    def seal(self) -> None:
        """Finish the spool file (checksum footer, fsync): the upload is complete. Blocks on the disk."""
        if self.spool is not None and self.rejection is None:
            self.digest = self.spool.seal()

    def discard(self) -> None:
        """Delete the spool file unless it was moved into the spool (accepted); safe to call more than once."""
        if self.spool is not None:
            self.spool.discard()

    def checked(self) -> Contribution | ContributionRejected:
        """The checked contribution, or why it is rejected (call once the whole upload was absorbed)."""
        if self.rejection is not None:
            return self.rejection
        try:
            return self.contribution()
        except ContributionRejected as error:
            return error

    def contribution(self) -> Contribution:
        """The checked contribution (call once the whole upload was absorbed without a rejection)."""
        assert self.rejection is None, "a rejected upload has no contribution"
        if self._pending:
            raise ContributionRejected(
                RejectionReason.BYTE_LENGTH, f"tensor '{self._pending[0].tensor.name}' is incomplete"
            )
        admission = self.admission
        weights = tuple(tensor for tensor in self._tensors if tensor.role == TensorRole.WEIGHTS)
        metrics = tuple(
            MetricValue(tensor.name, tensor.tags, self._metric_values[tensor.data_offset])
            for tensor in self._tensors
            if tensor.role == TensorRole.METRIC
        )
        return Contribution(
            admission.collaborator,
            admission.task,
            admission.round_number,
            admission.data_size,
            weights,
            metrics,
        )

    def _check_tensor(self, record: TensorRecord) -> None:
        tensor = classify_tensor(record, self.admission.collaborator)
        if tensor.identity in self._identities:
            raise ContributionRejected(
                RejectionReason.DUPLICATE_TENSOR, f"TaskResults.tensors repeats '{tensor.name}'"
            )
        self._identities.add(tensor.identity)
        base = None
        if tensor.role == TensorRole.WEIGHTS:
            base = self._check_weights(tensor)
        else:
            self._count_metric(tensor)
        if tensor.data_offset + tensor.data_length > self._limits.upload_bytes:
            raise _too_large(self._limits)
        self._tensors.append(tensor)
        if tensor.data_length:
            self._pending.append(_ValueCheck(tensor, base))

    def _count_metric(self, tensor: UploadedTensor) -> None:
        """Refuse an upload as soon as its metrics exceed the limit (each costs decoding and aggregation)."""
        self._metric_count += 1
        if self._metric_count > self._limits.metrics_per_upload:
            raise ContributionRejected(
                RejectionReason.METRIC_COUNT,
                f"the upload carries more than limits.metrics_per_upload ({self._limits.metrics_per_upload}) "
                f"metrics (from '{tensor.name}' on)",
            )

    def _check_weights(self, tensor: UploadedTensor) -> Float32Array | None:
        """Check a weight tensor against the model; return the base a delta applies to."""
        model_tensor = self._model.get(tensor.name)
        if model_tensor is None:
            if tensor.is_delta:
                raise ContributionRejected(
                    RejectionReason.DELTA_BASE,
                    f"delta tensor '{tensor.name}' has no base: it is not in round "
                    f"{self.admission.round_number}'s model",
                )
            self._extra_bytes += tensor.data_length
            if self._extra_bytes > self._limits.extra_tensor_bytes:
                raise ContributionRejected(
                    RejectionReason.EXTRA_TENSOR_BUDGET,
                    f"tensors that are not in the model (from '{tensor.name}' on) exceed "
                    f"limits.extra_tensor_bytes ({self._limits.extra_tensor_bytes} bytes)",
                )
            return None
        if model_tensor.shape != tensor.shape:
            raise ContributionRejected(
                RejectionReason.SHAPE,
                f"tensor '{tensor.name}' has shape {list(tensor.shape)} but round "
                f"{self.admission.round_number}'s model has {list(model_tensor.shape)}",
            )
        return model_tensor.reshape(-1) if tensor.is_delta else None


def _too_large(limits: ResolvedLimits) -> ContributionRejected:
    return ContributionRejected(
        RejectionReason.UPLOAD_SIZE, f"the upload exceeds limits.upload_bytes ({limits.upload_bytes} bytes)"
    )
