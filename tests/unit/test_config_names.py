"""Collaborator names that the protocol would confuse with something else are refused at config check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedagg.config.loading import parse_config
from fedagg.federation.errors import PlanError
from fedagg.federation.names import PROTOCOL_TAGS
from fedagg.federation.serving import MODEL_TAG
from fedagg.settings import ConfigError
from tests.support.servers import make_plan


def federation(*collaborators: str, **settings: Any) -> dict[str, Any]:
    return {"federation": {"federation_uuid": "fed_1", "collaborators": list(collaborators), **settings}}


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config({**data, "federation": {"rounds_to_train": 1, **data["federation"]}}, Path("/etc"), {})
    return str(raised.value)


@pytest.mark.parametrize("tag", sorted(PROTOCOL_TAGS))
def test_a_protocol_tag_is_refused_as_a_collaborator_name(tag: str) -> None:
    message = refusal(federation("one", tag))

    assert message.startswith(f"federation.collaborators[1]: got {tag!r}, expected a name that is not one of")
    assert "a collaborator's name tags its results" in message


def test_the_aggregators_own_name_is_refused() -> None:
    message = refusal(federation("one", "agg", aggregator_uuid="agg"))

    assert message == (
        "federation.collaborators[1]: got 'agg', expected a name other than the aggregator's own (aggregator_uuid)"
    )


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("si\x00te", r"'si\x00te'"),
        ("site\n", r"'site\n'"),
        ("si\x1bte", r"'si\x1bte'"),
        ("si\u202ete", r"'si\u202ete'"),
        (" \t ", r"' \t '"),
        ("", "''"),
    ],
    ids=["NUL", "newline", "escape", "bidi override", "whitespace only", "empty"],
)
def test_control_characters_and_blank_names_are_refused_escaped(name: str, shown: str) -> None:
    message = refusal(federation(name, "two"))

    assert message.startswith(f"federation.collaborators[0]: got {shown}, expected a ")


def test_identities_with_control_characters_are_refused() -> None:
    assert refusal(federation("one", federation_uuid="fed\x00")).startswith(
        r"federation.federation_uuid: got 'fed\x00', expected a name without control"
    )


def test_names_that_only_resemble_tags_are_fine() -> None:
    config = parse_config(federation("Model", "models", "site-trained", rounds_to_train=1), Path("/etc"), {})

    assert config.plan().collaborators == ("Model", "models", "site-trained")


def test_no_federation_can_be_built_with_a_collaborator_named_like_a_tag() -> None:
    """The plan itself refuses it, so no server ever serves a federation where 'model' is a collaborator."""
    with pytest.raises(PlanError) as raised:
        make_plan(("one", MODEL_TAG), 1)

    assert raised.value.key == "collaborators[1]"
