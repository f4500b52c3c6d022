"""Configuration errors reach the command line as one line naming the key: never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedagg.cli import main
from tests.support.yaml_bombs import LAUGHS

FEDERATION = {"federation_uuid": "fed_1", "collaborators": ["one", "two"], "rounds_to_train": 3}
PLAN = {
    "aggregator": {"settings": {"rounds_to_train": 2, "db_store_rounds": 2}},
    "network": {"settings": {"agg_addr": "localhost", "agg_port": 50051}},
    "tasks": {"train": {"function": "train_task"}},
}


def config_file(tmp_path: Path, **sections: object) -> list[str]:
    path = tmp_path / "fedagg.yaml"
    path.write_text(yaml.safe_dump({"federation": FEDERATION, **sections}))
    return [str(path)]


def text_file(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "fedagg.yaml"
    path.write_text(text)
    return [str(path)]


def workspace(tmp_path: Path, plan: str, cols: str = "collaborators: [one, two]\n") -> list[str]:
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "plan.yaml").write_text(plan)
    (tmp_path / "plan" / "cols.yaml").write_text(cols)
    return [
        "--openfl-plan",
        str(tmp_path / "plan/plan.yaml"),
        "--openfl-cols",
        str(tmp_path / "plan/cols.yaml"),
    ]


CASES = {
    "sleep_seconds 2^31": (
        lambda tmp: config_file(tmp, federation={**FEDERATION, "sleep_seconds": 2**31}),
        "federation.sleep_seconds: got 2147483648, expected an integer number of seconds from 1 to 86400",
    ),
    "max_connection_age_seconds 3e6": (
        lambda tmp: config_file(tmp, server={"max_connection_age_seconds": 3e6}),
        "server.max_connection_age_seconds: got 3000000.0, expected 0 (never) or a number of seconds",
    ),
    "a collaborator named model": (
        lambda tmp: config_file(tmp, federation={**FEDERATION, "collaborators": ["one", "model"]}),
        "federation.collaborators[1]: got 'model', expected a name that is not one of OpenFL's tensor tags",
    ),
    "a collaborator name with NUL": (
        lambda tmp: config_file(tmp, federation={**FEDERATION, "collaborators": ["on\x00e"]}),
        r"federation.collaborators[0]: got 'on\x00e', expected a name without control",
    ),
    "billion laughs": (
        lambda tmp: text_file(tmp, LAUGHS + "federation: *i\n"),
        "expected the configuration in YAML within fedagg's bounds: at most 100000 values",
    ),
    "a 500-deep list": (
        lambda tmp: text_file(tmp, "federation: " + "[" * 500 + "]" * 500 + "\n"),
        "expected the configuration in YAML within fedagg's bounds: at most 64 levels of nesting",
    ),
    "a repeated key": (
        lambda tmp: text_file(tmp, "federation: {}\nfederation: {}\n"),
        "got \"the key 'federation' a second time (first on line 1) at line 2, column 1\"",
    ),
    "an OpenFL plan with billion laughs": (
        lambda tmp: workspace(tmp, LAUGHS + "aggregator: {settings: *i}\n"),
        "expected the OpenFL plan in YAML within fedagg's bounds: at most 100000 values",
    ),
    "an OpenFL plan with a word for db_store_rounds": (
        lambda tmp: workspace(
            tmp,
            yaml.safe_dump(
                {**PLAN, "aggregator": {"settings": {"rounds_to_train": 2, "db_store_rounds": "x"}}}
            ),
        ),
        "aggregator.settings.db_store_rounds: got 'x', expected an integer",
    ),
    "an OpenFL plan with a list for assigner settings": (
        lambda tmp: workspace(tmp, yaml.safe_dump({**PLAN, "assigner": {"settings": [1]}})),
        "plan.yaml: assigner.settings: got [1], expected a mapping",
    ),
    "an OpenFL plan with a number for a model path": (
        lambda tmp: workspace(
            tmp,
            yaml.safe_dump(
                {**PLAN, "aggregator": {"settings": {"rounds_to_train": 2, "init_state_path": 7}}}
            ),
        ),
        "aggregator.settings.init_state_path: got 7, expected a file path",
    ),
    "an OpenFL collaborator list with null": (
        lambda tmp: workspace(tmp, yaml.safe_dump(PLAN), "collaborators: [one, null]\n"),
        "cols.yaml: collaborators: got ['one', None], expected a non-empty list of collaborator names (strings)",
    ),
}


def command_line(command: str, arguments: list[str]) -> list[str]:
    """``fedagg <command>`` with a configuration file or an OpenFL workspace."""
    if command == "serve" and not arguments[0].startswith("--"):
        arguments = ["--config", *arguments]
    return [*command.split(), *arguments]


@pytest.mark.parametrize("command", ["config check", "serve"])
@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_are_one_line_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, case: str
) -> None:
    arguments, message = CASES[case]

    status = main(command_line(command, arguments(tmp_path)))

    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.startswith("fedagg: configuration error: ")
    assert message in stderr
    assert stderr.count("\n") == 1, "one line, no traceback"


def test_config_check_json_reports_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["config", "check", "-o", "json", *config_file(tmp_path, ops={"exit_code": 256})])

    document = json.loads(capsys.readouterr().out)
    assert status == 2
    assert document == {"ok": False, "error": "ops.exit_code: got 256, expected an exit status from 0 to 255"}
