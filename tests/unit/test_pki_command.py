"""``fedagg certs request|sign|add`` on the command line: usage errors name the option and value, and help."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedagg.cli import main
from tests.unit.certificate_requests import TRAVERSAL, tree


@pytest.mark.parametrize(
    ("argv", "flag", "value"),
    [
        (["--out", "{tmp}/pki", "--collaborators", TRAVERSAL], "--collaborators", TRAVERSAL),
        (["--out", "{tmp}/pki", "--collaborators", "a,,b"], "--collaborators", "a,,b"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--observers", "../o"], "--observers", "../o"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--observers", "a"], "--observers", "a"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--hosts", "../h"], "--hosts", "../h"),
        (["--out", "{tmp}/pki", "--collaborators", "a", "--secret-name", "../s"], "--secret-name", "../s"),
        (["request", "--name", TRAVERSAL, "--out", "{tmp}/site"], "--name", TRAVERSAL),
        (["request", "--name", "", "--out", "{tmp}/site"], "--name", "''"),
        (["sign", "--ca", "{tmp}/none", "{tmp}/x.csr", "--name", "a/b"], "--name", "a/b"),
        (["sign", "--ca", "{tmp}/none", "{tmp}/x.csr"], "--ca", "none"),
        (["add", "--ca", "{tmp}/none", "--collaborators", TRAVERSAL], "--collaborators", TRAVERSAL),
        (["add", "--ca", "{tmp}/none", "--observers", ".x"], "--observers", ".x"),
        (["add", "--ca", "{tmp}/none", "--collaborators", "x"], "--ca", "none"),
    ],
)
def test_the_command_names_the_option_and_value_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, value: str
) -> None:
    status = main(["certs", *(argument.replace("{tmp}", str(tmp_path)) for argument in argv)])

    error = capsys.readouterr().err
    assert status == 2
    assert f"argument {flag}:" in error
    assert value in error
    assert "Traceback" not in error
    assert len(error.strip().splitlines()) == 1
    assert tree(tmp_path) == set()


def test_the_command_without_options_or_action_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "--out", str(tmp_path / "pki")]) == 2
    assert "--out and --collaborators are required" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["request", "sign", "add"])
def test_every_action_has_help_with_examples(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["certs", action, "--help"])

    shown = capsys.readouterr().out
    assert exited.value.code == 0
    assert "examples:" in shown
    assert f"fedagg certs {action} " in shown.split("examples:")[1]
