"""Own-results serving: a collaborator's own uploaded tensor of the current round, from the spooled upload.

OpenFL 1.8/1.9 collaborators restarted in the middle of a round ask for their own results of the round (tags
``[<own name>, "trained", ...]``); OpenFL 1.9's aggregator answers from its tensor database, fedagg from the
spool. Only that collaborator may fetch them (:meth:`fedagg.federation.federation.Federation.served_tensor`).
"""

from __future__ import annotations

from fedagg.federation.errors import NotFound
from fedagg.federation.rounds import AcceptedUpload, Round
from fedagg.federation.serving import ServedTensor, TensorRequest, own_tensor
from fedagg.federation.sources import DeltaOnBase, ModelValues, SpooledValues
from fedagg.protocol.codec import COMPRESSED


def own_results_tensor(
    round_: Round | None, uploads: list[AcceptedUpload], collaborator: str, request: TensorRequest
) -> ServedTensor:
    """The tensor ``request`` names among ``uploads``, ``collaborator``'s accepted uploads of ``round_`` (the
    current round, read with the round lock held)."""
    wanted = set(request.tags) - {collaborator, COMPRESSED}
    if round_ is None or request.round_number != round_.number:
        raise NotFound(f"{collaborator}'s results are served for the current round only")
    for upload in uploads:
        for tensor in upload.contribution.weights:
            if tensor.name == request.name and set(tensor.tags) == wanted:
                values = SpooledValues(upload.entry.path, tensor.data_offset, tensor.size)
                delta = tensor.is_delta and tensor.name in round_.model.tensors
                source = DeltaOnBase(ModelValues(round_.model, tensor.name), values) if delta else values
                return own_tensor(request, source.block(0, tensor.size).reshape(tensor.shape))
    raise NotFound(
        f"no tensor {request.name!r} with tags {sorted(wanted)} in {collaborator}'s results of round "
        f"{round_.number}"
    )
