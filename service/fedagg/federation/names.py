"""Names of the parties: what a collaborator (or the federation, or the aggregator) may be called.

Names travel in message headers, certificates and, for collaborators, as a tag on their own results (OpenFL 1.8/1.9
ask for their own results with tags ``[<name>, "trained", ...]``). So a name must be printable, and a
collaborator's name must differ from every tag of OpenFL's tensor vocabulary and from the aggregator's name.
"""

from __future__ import annotations

import unicodedata

from fedagg.federation.contribution import TRAINED_TAG, TensorRole
from fedagg.federation.serving import AGGREGATED_TAG, DELTA_TAG, MODEL_TAG
from fedagg.protocol.codec import CODEC_TAGS

PROTOCOL_TAGS = frozenset(
    {
        MODEL_TAG,
        TRAINED_TAG,
        AGGREGATED_TAG,
        DELTA_TAG,
        TensorRole.METRIC.value,
        *CODEC_TAGS,
        "lossy_decompressed",
        "validate_agg",
        "validate_local",
    }
)
"""OpenFL's tensor tag vocabulary (wire spec §3.1). A collaborator's name is one more tag on its results, so a
name from this list makes tensors of different meanings look alike: with a collaborator named ``model``, every
other collaborator's model download (tags ``["model"]``) reads as a request for that collaborator's own results
and is refused."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot identify a party in message headers and certificates, or None."""
    if not name or name != name.strip():
        return "a non-empty name without surrounding spaces"
    if any(unicodedata.category(character) in ("Cc", "Cf", "Cs", "Zl", "Zp") for character in name):
        return "a name without control or format characters (NUL, newlines, escapes, bidi marks)"
    return None


def collaborator_name_problem(name: str, aggregator_uuid: str) -> str | None:
    """Why collaborator ``name`` cannot be used, or would be mistaken for something else on the wire, or None."""
    if problem := name_problem(name):
        return problem
    if name in PROTOCOL_TAGS:
        return (
            f"a name that is not one of OpenFL's tensor tags {sorted(PROTOCOL_TAGS)}: a collaborator's name "
            "tags its results, so this one would be confused with other tensors"
        )
    if name == aggregator_uuid:
        return "a name other than the aggregator's own (aggregator_uuid)"
    return None
