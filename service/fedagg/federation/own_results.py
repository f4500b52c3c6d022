"""Own-results serving: a collaborator's own uploaded tensor of the current round, from the spooled upload.

OpenFL 1.8/1.9 collaborators restarted in the middle of a round ask for their own results of the round (tags
``[<own name>, "trained", ...]``); OpenFL 1.9's aggregator answers from its tensor database, fedagg from the
spool: the reply's data is a view of the spooled upload (a delta is added to its base when the reply is built).
Only that collaborator may fetch them (:meth:`fedagg.federation.federation.Federation.served_tensor`). An ingest
replica of a tier serves them with the same pieces from its own spool (:mod:`fedagg.tier.own_results_holder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedagg.federation.contribution import Contribution, UploadedTensor
from fedagg.federation.errors import NotFound, PermissionDenied
from fedagg.federation.ledger import RoundLedger
from fedagg.federation.serving import ServedTensor, TensorRequest, own_tensor
from fedagg.federation.sources import DeltaOnBase, ModelValues, SpooledValues
from fedagg.federation.spool import SpoolEntry
from fedagg.protocol.codec import COMPRESSED, Float32Array
from fedagg.protocol.model_file import LoadedModel


def own_results_tensor(
    ledger: RoundLedger, collaborator: str, requester: str, request: TensorRequest
) -> ServedTensor:
    """The tensor ``request`` names among ``collaborator``'s accepted uploads of the current round, measured (not
    read); only ``collaborator`` itself may ask."""
    check_requester(collaborator, requester)
    with ledger.round_lock:
        round_ = ledger.round
        uploads = [] if round_ is None else round_.accepted([collaborator])
    if round_ is None:
        raise NotFound(f"{collaborator}'s results are served for the current round only")
    held = [HeldUpload(upload.entry, upload.contribution) for upload in uploads]
    return tensor_in_results(request, collaborator, round_.number, round_.model, held)


@dataclass(frozen=True)
class HeldUpload:
    """An accepted upload of the round: its spool entry and what it holds."""

    entry: SpoolEntry
    contribution: Contribution


def check_requester(collaborator: str, requester: str) -> None:
    """Only ``collaborator`` may fetch its own results (PERMISSION_DENIED for any other ``requester``)."""
    if collaborator != requester:
        raise PermissionDenied(
            f"GetAggregatedTensorRequest.tags name collaborator {collaborator!r}: a collaborator may only fetch "
            "its own results"
        )


def tensor_in_results(
    request: TensorRequest,
    collaborator: str,
    round_number: int,
    model: LoadedModel,
    uploads: Iterable[HeldUpload],
) -> ServedTensor:
    """The tensor ``request`` names among ``uploads`` (``collaborator``'s accepted uploads of round
    ``round_number``, whose model is ``model``), measured (not read); NOT_FOUND when they do not hold it."""
    if request.round_number != round_number:
        raise NotFound(f"{collaborator}'s results are served for the current round only")
    wanted = set(request.tags) - {collaborator, COMPRESSED}
    for upload in uploads:
        for tensor in upload.contribution.weights:
            if tensor.name == request.name and set(tensor.tags) == wanted:
                return own_tensor(request, tensor.shape, _values(model, upload.entry, tensor))
    raise NotFound(
        f"no tensor {request.name!r} with tags {sorted(wanted)} in {collaborator}'s results of round "
        f"{round_number}"
    )


def _values(model: LoadedModel, entry: SpoolEntry, tensor: UploadedTensor) -> Callable[[], Float32Array]:
    """How the reply's values are read: a view of the spooled upload, or for a delta, base + delta computed then."""
    spooled = SpooledValues(entry.path, tensor.data_offset, tensor.size)
    if not (tensor.is_delta and tensor.name in model.tensors):
        return lambda: spooled.mapped().reshape(tensor.shape)
    on_base = DeltaOnBase(ModelValues(model, tensor.name), spooled)
    return lambda: on_base.block(0, tensor.size).reshape(tensor.shape)
