"""The PKI's name rules: collaborator, host and secret names, refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedagg.pki.errors import InvalidName
from fedagg.pki.federation import write_federation_pki
from fedagg.pki.names import check_host, check_name, check_names, check_secret_name
from tests.unit.certificate_requests import TRAVERSAL, tree


@pytest.mark.parametrize("name", ["one", "site-a", "col_1", "env.one", "A1", "x", "a" * 64, "9"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (TRAVERSAL, "path separator"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("", "empty"),
        ("a" * 65, "65 characters"),
        (".hidden", "start and end"),
        ("site-a.", "start and end"),
        ("-rf", "start and end"),
        ("a b", "' '"),
        ("a\x00b", "'\\x00'"),
        ("é", "'é'"),
        ("a:b", "':'"),
        ("a*", "'*'"),
    ],
)
def test_names_that_could_escape_or_confuse_are_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidName) as refused:
        check_name(name, "observer")

    assert reason in str(refused.value)
    assert str(refused.value).startswith(f"{name!r} is not a valid observer name")
    assert (refused.value.kind, refused.value.value) == ("observer", name)


def test_a_name_given_twice_in_any_case_is_refused() -> None:
    assert check_names(["a", "b"]) == ["a", "b"]
    with pytest.raises(InvalidName, match="given twice"):
        check_names(["site-a", "SITE-A"])


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1", "::1", "fedagg.example.org", "10.0.0.7", "a-1.b2", "2001:db8::7"]
)
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize(
    "host",
    [
        "",
        TRAVERSAL,
        "a/b",
        "a..b",
        "fe80::1%eth0",
        "fe80::1%../../x",
        "a_b.example.org",
        "-a.example.org",
        "*.example.org",
        "a" * 64 + ".org",
        "x." * 127 + "xy",
    ],
)
def test_bad_host_names_are_refused(host: str) -> None:
    with pytest.raises(InvalidName, match="not a valid host name"):
        check_host(host)


def test_secret_names_follow_kubernetes() -> None:
    assert check_secret_name("fl-fedagg-tls") == "fl-fedagg-tls"
    for bad in ("../s", "Upper", "", "a/b", "-a"):
        with pytest.raises(InvalidName):
            check_secret_name(bad)


def test_central_layout_refuses_bad_names_before_writing_anything(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    attempts = [
        {"collaborators": [TRAVERSAL], "hosts": ["localhost"]},
        {"collaborators": ["a"], "hosts": ["localhost"], "observers": [TRAVERSAL]},
        {"collaborators": ["a"], "hosts": [TRAVERSAL]},
        {"collaborators": ["a"], "hosts": ["localhost"], "secret_name": "../../s"},
        {"collaborators": ["a", "A"], "hosts": ["localhost"]},
    ]

    for attempt in attempts:
        with pytest.raises(InvalidName):
            write_federation_pki(out, **attempt)  # type: ignore[arg-type]

    assert tree(tmp_path) == set()
