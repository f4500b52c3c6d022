"""Own-results serving: a collaborator's own uploaded tensor of the current round, from the spooled upload.

OpenFL 1.8/1.9 collaborators restarted in the middle of a round ask for their own results of the round (tags
``[<own name>, "trained", ...]``); OpenFL 1.9's aggregator answers from its tensor database, fedagg from the
spool: the reply's data is a view of the spooled upload (a delta is added to its base when the reply is built).
Only that collaborator may fetch them (:meth:`fedagg.federation.federation.Federation.served_tensor`).
"""

from __future__ import annotations

from collections.abc import Callable

from fedagg.federation.contribution import UploadedTensor
from fedagg.federation.errors import NotFound, PermissionDenied
from fedagg.federation.ledger import RoundLedger
from fedagg.federation.rounds import AcceptedUpload, Round
from fedagg.federation.serving import ServedTensor, TensorRequest, own_tensor
from fedagg.federation.sources import DeltaOnBase, ModelValues, SpooledValues
from fedagg.protocol.codec import COMPRESSED, Float32Array


def own_results_tensor(
    ledger: RoundLedger, collaborator: str, requester: str, request: TensorRequest
) -> ServedTensor:
    """The tensor ``request`` names among ``collaborator``'s accepted uploads of the current round, measured (not
    read); only ``collaborator`` itself may ask."""
    if collaborator != requester:
        raise PermissionDenied(
            f"GetAggregatedTensorRequest.tags name collaborator {collaborator!r}: a collaborator may only fetch "
            "its own results"
        )
    with ledger.round_lock:
        round_ = ledger.round
        uploads = [] if round_ is None else round_.accepted([collaborator])
    wanted = set(request.tags) - {collaborator, COMPRESSED}
    if round_ is None or request.round_number != round_.number:
        raise NotFound(f"{collaborator}'s results are served for the current round only")
    for upload in uploads:
        for tensor in upload.contribution.weights:
            if tensor.name == request.name and set(tensor.tags) == wanted:
                return own_tensor(request, tensor.shape, _values(round_, upload, tensor))
    raise NotFound(
        f"no tensor {request.name!r} with tags {sorted(wanted)} in {collaborator}'s results of round "
        f"{round_.number}"
    )


def _values(round_: Round, upload: AcceptedUpload, tensor: UploadedTensor) -> Callable[[], Float32Array]:
    """How the reply's values are read: a view of the spooled upload, or for a delta, base + delta computed then."""
    spooled = SpooledValues(upload.entry.path, tensor.data_offset, tensor.size)
    if not (tensor.is_delta and tensor.name in round_.model.tensors):
        return lambda: spooled.mapped().reshape(tensor.shape)
    on_base = DeltaOnBase(ModelValues(round_.model, tensor.name), spooled)
    return lambda: on_base.block(0, tensor.size).reshape(tensor.shape)
