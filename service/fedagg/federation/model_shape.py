"""The model's shape is the plan's: which tensors that are not in a round's model may join the next one.

Collaborators may upload tensors that are not in the model (tag ``trained``): OpenFL task runners with
``opt_treatment: CONTINUE_GLOBAL`` upload their optimizer state from every collaborator, and their initial model
(``fx plan initialize``) already holds it. A tensor name that is not in the round's model joins the next model only
if

* it is a name of the **initial** model (a tensor that was left out and comes back), or
* **more than one** counted collaborator sent it in the round (optimizer state that every collaborator uploads),

and only while the next model stays within the model size cap, :attr:`~fedagg.federation.plan.ResolvedLimits.
model_bytes`: the initial model's bytes plus ``limits.extra_tensor_bytes`` (by default twice the initial model's
bytes). Allowances derive from the initial model, never the current one, so no round raises the next one's. A
tensor that does not qualify is still accepted in its upload (it is not a rejection) but is left out of the next
model; the round end logs and reports what was left out, once per round. One collaborator, alone, can therefore
never change the model's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedagg.federation.rounds import AcceptedUpload, Round


@dataclass(frozen=True)
class ModelGrowth:
    """Of the tensors that are not in a round's model: those joining the next model, and those left out of it."""

    joining: frozenset[str]
    left_out: tuple[str, ...]


def model_growth(round_: Round, uploads: list[AcceptedUpload]) -> ModelGrowth:
    """Apply the rule of the module docstring to a round's counted ``uploads`` (in aggregation order)."""
    senders: dict[str, set[str]] = {}
    data_bytes: dict[str, int] = {}
    for upload in uploads:
        for tensor in upload.contribution.weights:
            if tensor.name not in round_.model.tensors:
                senders.setdefault(tensor.name, set()).add(upload.contribution.collaborator)
                data_bytes.setdefault(tensor.name, tensor.data_length)
    size = sum(values.nbytes for values in round_.model.tensors.values())
    joining: set[str] = set()
    left_out: list[str] = []
    for name, by in senders.items():
        if (name in round_.initial_names or len(by) > 1) and size + data_bytes[
            name
        ] <= round_.limits.model_bytes:
            joining.add(name)
            size += data_bytes[name]
        else:
            left_out.append(name)
    return ModelGrowth(frozenset(joining), tuple(left_out))
