"""YAML from users is parsed within bounds: alias bombs, deep nesting, huge files and repeated keys are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedagg.bounded_yaml import MAX_ALIASES, MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES, read_yaml
from fedagg.config.loading import load_config, parse_config
from fedagg.openfl_workspace import load_openfl_workspace
from fedagg.settings import ConfigError
from tests.support.yaml_bombs import LAUGHS

ROOT = Path(__file__).resolve().parents[2]
FEDERATION = "federation: {federation_uuid: fed_1, collaborators: [one, two], rounds_to_train: 3}\n"


def refusal_of(path: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    return str(raised.value)


def written(tmp_path: Path, text: str, name: str = "fedagg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_billion_laughs_is_refused(tmp_path: Path) -> None:
    path = written(tmp_path, LAUGHS + FEDERATION + "server: {observers: *i}\n")
    assert len(path.read_bytes()) < 1024

    message = refusal_of(path)

    assert message.startswith(f"{path}: got 'more than {MAX_VALUES} values once aliases are expanded at line")
    assert message.endswith(
        f"expected the configuration in YAML within fedagg's bounds: at most {MAX_VALUES} values"
    )


def test_a_500_deep_list_is_refused_without_a_recursion_error(tmp_path: Path) -> None:
    path = written(tmp_path, FEDERATION + "extra: " + "[" * 500 + "]" * 500 + "\n")

    message = refusal_of(path)

    assert f"got 'collections nested deeper than {MAX_DEPTH} at line 2" in message
    assert message.endswith(f"at most {MAX_DEPTH} levels of nesting")


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (
            "a: &a [1]\n" + "".join(f"b{i}: *a\n" for i in range(MAX_ALIASES + 1)),
            f"alias number {MAX_ALIASES + 1}",
        ),
        ("a: &a [*a]\n", f"collections nested deeper than {MAX_DEPTH}"),
        (
            "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 30 + "*a" + "]" * 30 + "\n",
            f"collections nested deeper than {MAX_DEPTH}",
        ),
        ("a: 1\nb: 2\na: 3\n", "the key 'a' a second time (first on line 1) at line 3, column 1"),
    ],
    ids=["too many aliases", "a recursive alias", "deep through an alias", "a repeated key"],
)
def test_documents_beyond_a_bound_name_the_file_what_and_where(tmp_path: Path, text: str, found: str) -> None:
    path = written(tmp_path, text)

    with pytest.raises(ConfigError) as raised:
        read_yaml(path, "the configuration")

    assert str(raised.value).startswith(f"{path}: got ")
    assert found in str(raised.value)
    assert "expected the configuration in YAML within fedagg's bounds: " in str(raised.value)


def test_a_file_over_one_mebibyte_is_refused(tmp_path: Path) -> None:
    path = written(tmp_path, FEDERATION + "#" * MAX_FILE_BYTES + "\n")

    assert refusal_of(path) == (
        f"{path}: got 'more than {MAX_FILE_BYTES} bytes', expected the configuration of at most "
        f"{MAX_FILE_BYTES} bytes (1 MiB)"
    )


def test_an_integer_python_cannot_convert_is_a_config_error(tmp_path: Path) -> None:
    path = written(tmp_path, FEDERATION + "server: {port: " + "9" * 5000 + "}\n")

    assert "expected the configuration in valid YAML (Exceeds the limit" in refusal_of(path)


def test_anchors_aliases_and_merge_keys_within_bounds_still_work(tmp_path: Path) -> None:
    path = written(
        tmp_path,
        FEDERATION.replace(
            "}",
            ", tasks: {train: &task {function: train_task, aggregation: median}, "
            "tune: {<<: *task, function: tune_task}}}",
        ),
    )

    tasks = load_config(path, environ={}).federation.tasks

    assert (tasks["train"].function, tasks["train"].aggregation) == ("train_task", "median")
    assert (tasks["tune"].function, tasks["tune"].aggregation) == ("tune_task", "median")


@pytest.mark.parametrize(
    "path",
    [
        ROOT / "helm/fedagg/values.yaml",
        ROOT / "deploy/examples/openfl-workspace-values.yaml",
        ROOT / "deploy/prometheus/fedagg-rules.yaml",
    ],
    ids=lambda path: path.name,
)
def test_ordinary_documents_read_as_pyyaml_reads_them(path: Path) -> None:
    """The same data as yaml.safe_load: OpenFL's federation UUID is a hash of the parsed plan."""
    assert read_yaml(path, "a document") == yaml.safe_load(path.read_text())


def test_an_environment_override_is_bounded_too() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(
            yaml.safe_load(FEDERATION),
            Path("/etc/fedagg"),
            {"FEDAGG__SERVER__OBSERVERS": "[" * 100 + "]" * 100},
        )

    assert str(raised.value).startswith(
        "environment FEDAGG__SERVER__OBSERVERS: got 'collections nested deeper"
    )


def test_openfl_plan_files_are_bounded_too(tmp_path: Path) -> None:
    plan = written(tmp_path, LAUGHS + "aggregator: {settings: *i}\n", "plan.yaml")
    cols = written(tmp_path, "collaborators: [one]\n", "cols.yaml")

    with pytest.raises(ConfigError) as raised:
        load_openfl_workspace(plan, cols)

    assert str(raised.value).startswith(
        f"{plan}: got 'more than {MAX_VALUES} values once aliases are expanded"
    )
    assert "expected the OpenFL plan in YAML within fedagg's bounds" in str(raised.value)
