"""A port someone else holds is one line naming the setting and its environment override, exit status 2."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tests.conftest import COLLABORATORS
from tests.support.models import write_zero_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config


@contextmanager
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("section", "key", "setting"),
    [
        ("server", "port", "server.port"),
        ("ops", "port", "ops.port"),
        ("ops", "metrics_port", "ops.metrics_port"),
    ],
)
def test_a_busy_port_is_one_line_and_exit_2(
    tmp_path: Path, pki: Pki, section: str, key: str, setting: str
) -> None:
    with taken_port() as port:
        config = write_config(tmp_path, pki, COLLABORATORS, 1, write_zero_model(tmp_path))
        data = yaml.safe_load(config.read_text())
        data[section][key] = port
        config.write_text(yaml.safe_dump(data))
        with FedaggProcess(config) as fedagg:
            code = fedagg.wait(timeout=60)
            output = fedagg.log()

    variable = "FEDAGG__" + setting.upper().replace(".", "__")
    assert code == 2
    assert (
        f"fedagg: configuration error: {setting}: got {port}, expected a port this process can listen on"
        in output
    )
    assert variable in output
    assert "Traceback" not in output
    assert "add_port.cc" not in output, "no gRPC-core line"
