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
    arguments = config_file(tmp_path, ops={"exit_code": 256})

    status = main(["config", "check", "-o", "json", *arguments])

    document = json.loads(capsys.readouterr().out)
    error = f"{arguments[0]}: ops.exit_code: got 256, expected an exit status from 0 to 255"
    assert status == 2
    assert document == {"ok": False, "error": error, "errors": [error]}


def runnable_config(tmp_path: Path, text: str, server_port: int = 50051) -> list[str]:
    """A configuration that ``config check`` accepts (a model, plaintext), with ``text`` after its lines."""
    assert main(["model", "init", "--reference", "--out", str(tmp_path / "init.pbuf")]) == 0
    return text_file(
        tmp_path,
        f"server: {{port: {server_port}, tls: {{mode: insecure}}}}\n"
        "federation: {federation_uuid: 0123, collaborators: [one, 0007], rounds_to_train: 2, "
        "initial_model: init.pbuf}\n" + text,
    )


def check_with_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, environment: dict[str, str], *options: str
) -> tuple[int, str, pytest.CaptureResult[str]]:
    """``fedagg config check`` of :func:`runnable_config` with ``text``, with ``environment`` set: status, file, output."""
    arguments = runnable_config(tmp_path, text)
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        status = main(["config", "check", *options, *arguments])
    return status, arguments[0], capsys.readouterr()


def test_strings_stay_as_written_and_yaml_booleans_fit_a_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, output = check_with_environment(
        tmp_path,
        capsys,
        "hooks: {kubernetes: {enabled: false}}\nstorage: {state_dir: 2024}\n",
        {"FEDAGG__FEDERATION__AGGREGATOR_UUID": "00017"},
        "-o",
        "json",
    )

    document = json.loads(output.out)
    assert status == 0
    assert document["federation_uuid"] == "0123"
    assert document["collaborators"] == ["one", "0007"]
    assert document["aggregator_uuid"] == "00017"
    assert document["state_dir"] == str(tmp_path / "2024")


def test_an_environment_value_is_named_in_its_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, file, output = check_with_environment(
        tmp_path, capsys, "", {"FEDAGG__FEDERATION__SLEEP_SECONDS": "often"}
    )

    assert status == 2
    assert output.err == (
        f"fedagg: configuration error: {file}: federation.sleep_seconds: got 'often', expected an integer "
        "(from FEDAGG__FEDERATION__SLEEP_SECONDS)\n"
    )


def test_config_check_reports_every_error_with_the_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = text_file(
        tmp_path,
        "federation: {federation_uuid: f, collaborators: [one], rounds_to_train: x, sleep_seconds: y}\n"
        "ops: {exit_code: 256, colour: blue}\n",
    )

    status = main(["config", "check", "-o", "json", *arguments])

    output = capsys.readouterr()
    assert status == 2
    errors = json.loads(output.out)["errors"]
    assert [error.split(", expected")[0] for error in errors] == [
        f"{arguments[0]}: federation.rounds_to_train: got 'x'",
        f"{arguments[0]}: federation.sleep_seconds: got 'y'",
        f"{arguments[0]}: ops.colour: got 'blue'",
        f"{arguments[0]}: ops.exit_code: got 256",
    ]
    assert output.err.count("\n") == 4
    assert all(
        line.startswith(f"fedagg: configuration error: {arguments[0]}: ") for line in output.err.splitlines()
    )


@pytest.mark.parametrize(
    ("server_port", "ops", "message"),
    [
        (7001, "{port: 7001}", "ops.port: got 7001, expected a port other than server.port's"),
        (
            50051,
            "{port: 7002, metrics_port: 7002}",
            "ops.metrics_port: got 7002, expected a port other than ops.port's",
        ),
        (
            7003,
            "{metrics_port: 7003}",
            "ops.metrics_port: got 7003, expected a port other than server.port's",
        ),
    ],
)
def test_config_check_refuses_listeners_on_one_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], server_port: int, ops: str, message: str
) -> None:
    arguments = runnable_config(tmp_path, f"ops: {ops}\n", server_port)
    capsys.readouterr()

    status = main(["config", "check", *arguments])

    assert status == 2
    assert message in capsys.readouterr().err


def test_yaml_syntax_errors_name_the_file_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = text_file(tmp_path, "federation: {federation_uuid: f\n")

    status = main(["config", "check", *arguments])

    stderr = capsys.readouterr().err
    assert status == 2
    assert f'in "{arguments[0]}", line 2' in stderr
    assert "<unicode string>" not in stderr
    assert "<byte string>" not in stderr
    assert stderr.count("\n") == 1


@pytest.mark.parametrize("arguments", [["/nonexistent/fedagg.yaml"], []])
def test_config_check_without_a_file_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], arguments: list[str]
) -> None:
    try:
        status: object = main(["config", "check", *arguments])
    except SystemExit as exit:
        status = exit.code

    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.count("\n") == 1


def test_a_missing_model_is_named_with_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = runnable_config(tmp_path, "")
    (tmp_path / "init.pbuf").unlink()
    capsys.readouterr()

    status = main(["config", "check", *arguments])

    assert status == 2
    assert capsys.readouterr().err.startswith(
        f"fedagg: configuration error: {arguments[0]}: federation.initial_model: got "
    )
