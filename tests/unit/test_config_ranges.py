"""Every numeric setting is range-checked at start: the error names the key, the value and the range."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.config.loading import parse_config
from fedagg.config.schema import Config
from fedagg.settings import INT32_MAX, ConfigError, Range
from tests.support.servers import FEDERATION_UUID, client_for, make_federation, serving
from tests.support.settings import numeric_settings

MINIMAL: dict[str, Any] = {
    "federation": {"federation_uuid": "fed_1", "collaborators": ["one", "two"], "rounds_to_train": 3},
}


def config_with(section: str, **values: Any) -> dict[str, Any]:
    data = {key: dict(value) for key, value in MINIMAL.items()}
    data.setdefault(section, {}).update(values)
    return data


def case(section: str, values: dict[str, Any], message: str) -> Any:
    """A configuration with ``values`` in ``section``, and the refusal it gets (its key is the test id)."""
    return pytest.param(config_with(section, **values), message, id=message.split(":", maxsplit=1)[0])


def refusal(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(data, Path("/etc/fedagg"), {})
    return str(raised.value)


def test_every_numeric_setting_has_a_range() -> None:
    unchecked = [
        key for key, field in numeric_settings(Config) if not isinstance(field.metadata.get("check"), Range)
    ]

    assert unchecked == []


def test_every_default_is_in_its_range() -> None:
    outside = [
        (key, field.default)
        for key, field in numeric_settings(Config)
        if field.default is not dataclasses.MISSING
        and field.default is not None
        and field.metadata["check"](field.default)
    ]

    assert outside == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        case(
            "federation",
            {"sleep_seconds": 2**31},
            "federation.sleep_seconds: got 2147483648, expected an integer number of seconds from 1 to 86400",
        ),
        case(
            "federation",
            {"rounds_to_train": 2**32},
            "federation.rounds_to_train: got 4294967296, expected an integer from 1 to 2147483647",
        ),
        case(
            "server",
            {"max_connection_age_seconds": 3e6},
            "server.max_connection_age_seconds: got 3000000.0, expected 0 (never) or a number of seconds "
            "from 1 to 2147483.647",
        ),
        case(
            "server",
            {"max_connection_age_grace_seconds": 2147484.0},
            "server.max_connection_age_grace_seconds: got 2147484.0, expected a number of seconds from 0 to "
            "2147483.647",
        ),
        case(
            "server",
            {"max_receive_message_bytes": 2**31},
            "server.max_receive_message_bytes: got 2147483648, expected a number of bytes from 1 to 2147483647",
        ),
        case(
            "server",
            {"tasks_hold_seconds": math.nan},
            "server.tasks_hold_seconds: got nan, expected a number of seconds from 0 to 86400",
        ),
        case(
            "server",
            {"quit_redelivery_seconds": math.inf},
            "server.quit_redelivery_seconds: got inf, expected a number of seconds from 0 to 86400",
        ),
        case(
            "server",
            {"executor_workers": 0},
            "server.executor_workers: got 0, expected an integer from 1 to 256",
        ),
        case(
            "limits",
            {"upload_bytes": 0},
            "limits.upload_bytes: got 0, expected a number of bytes from 1 to 1099511627776",
        ),
        case(
            "logging",
            {"level": "verbose"},
            "logging.level: got 'verbose', expected one of ['debug', 'info', 'warning', 'error']",
        ),
        case("ops", {"exit_code": 256}, "ops.exit_code: got 256, expected an exit status from 0 to 255"),
        case(
            "ops",
            {"grace_seconds": 0},
            "ops.grace_seconds: got 0, expected a number of seconds above 0 and at most 86400",
        ),
        case(
            "federation",
            {"assigner": {"seed": -1}},
            "federation.assigner.seed: got -1, expected an integer from 0 to 18446744073709551615",
        ),
        case(
            "federation",
            {"stragglers": {"cutoff_seconds": -math.inf}},
            "federation.stragglers.cutoff_seconds: got -inf, expected a number of seconds above 0 "
            "(or .inf: no cutoff)",
        ),
        case(
            "federation",
            {"tasks": {"train": {"function": "train_task", "clipping_norm": math.inf}}},
            "federation.tasks.train.clipping_norm: got inf, expected a number above 0 (finite)",
        ),
        case(
            "federation",
            {
                "tasks": {
                    "train": {
                        "function": "train_task",
                        "privacy": {"noise_multiplier": math.nan, "clipping_norm": 1.0},
                    }
                }
            },
            "federation.tasks.train.privacy.noise_multiplier: got nan, expected a number from 0 (finite)",
        ),
    ],
)
def test_out_of_range_settings_name_the_key_the_value_and_the_range(
    data: dict[str, Any], message: str
) -> None:
    assert message in refusal(data)


def test_the_numbers_that_mean_off_or_forever_are_accepted() -> None:
    config = parse_config(
        {
            **config_with(
                "server", max_connection_age_seconds=0, stream_window_bytes=0, reply_bytes_in_flight=0
            ),
            "limits": {"upload_bytes": None, "extra_tensor_bytes": 0},
            "federation": {**MINIMAL["federation"], "stragglers": {"cutoff_seconds": math.inf}},
        },
        Path("/etc/fedagg"),
        {},
    )

    assert config.server.max_connection_age_seconds == 0
    assert config.limits.upload_bytes is None
    assert math.isinf(config.federation.stragglers.cutoff_seconds)


def test_the_largest_allowed_values_reach_a_real_grpc_server(tmp_path: Path) -> None:
    """gRPC takes durations as int32 milliseconds and sizes as int32, round numbers are int32 and the assigner
    seeds numpy with [seed, round]: a plan and a server built from the maxima serve GetTasks."""
    maxima = {key: field.metadata["check"].maximum for key, field in numeric_settings(Config)}
    config = parse_config(
        {
            "federation": {
                "federation_uuid": FEDERATION_UUID,
                "collaborators": ["one", "two"],
                "rounds_to_train": maxima["federation.rounds_to_train"],
                "assigner": {"seed": maxima["federation.assigner.seed"]},
            },
            "server": {
                key: maxima[f"server.{key}"]
                for key in (
                    "max_connection_age_seconds",
                    "max_connection_age_grace_seconds",
                    "max_receive_message_bytes",
                    "stream_window_bytes",
                )
            },
        },
        Path("/etc/fedagg"),
        {},
    )
    server = config.server
    federation = make_federation(tmp_path, config.plan(), {"w": np.zeros(4, np.float32)})

    with serving(
        federation,
        None,
        max_connection_age=server.max_connection_age_seconds,
        max_connection_age_grace=server.max_connection_age_grace_seconds,
        max_receive_message_bytes=server.max_receive_message_bytes,
        stream_window_bytes=server.stream_window_bytes,
    ) as thread:
        reply = client_for(thread, "one", None).get_tasks()

    assert (reply.round_number, len(reply.tasks)) == (0, 3)
    assert config.federation.rounds_to_train == INT32_MAX
    assert int(server.max_connection_age_seconds * 1000) == INT32_MAX
