"""``fedagg config check`` prints the state volume and the memory a configuration needs (:mod:`fedagg.sizing`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedagg.cli import main
from fedagg.federation.store import publish_model

MIB = 1 << 20


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], *options: str, **train: Any) -> str:
    model = tmp_path / "init.pbuf"
    publish_model(model, {"w": np.zeros((1024, 1024), np.float32), "b": np.zeros(1024, np.float32)}, 0)
    federation = {
        "federation_uuid": "fed_1",
        "collaborators": [f"site{index}" for index in range(16)],
        "rounds_to_train": 10,
        "initial_model": str(model),
        "tasks": {"train": {"function": "train", **train}} if train else {},
    }
    config = tmp_path / "fedagg.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "federation": federation,
                "server": {"tls": {"mode": "insecure"}},
                "storage": {"state_dir": str(tmp_path / "state")},
            }
        )
    )
    assert main(["config", "check", str(config), *options]) == 0
    return capsys.readouterr().out


def test_config_check_prints_the_disk_and_memory_the_configuration_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = check(tmp_path, capsys)
    sizing = json.loads(check(tmp_path, capsys, "-o", "json"))["sizing"]

    model_bytes = (tmp_path / "init.pbuf").stat().st_size
    assert 4 * MIB + 4096 < model_bytes < 4 * MIB + 8192  # the tensors and their headers
    assert sizing["model_sized_files"] == 2 + 4 + 2 * 16 + 2  # rounds_kept 2, 16 collaborators, train folded
    assert sizing["disk_bytes"] == 40 * model_bytes + MIB + 4096 * 16 * 10
    assert sizing["memory_request_bytes"] == (224 + 8 * 16) * MIB
    assert sizing["memory_limit_bytes"] == 2 * (224 + 8 * 16) * MIB + model_bytes
    assert "needs: state volume >= 161.8 MiB" in text
    assert "memory request 352.0 MiB, limit 708.0 MiB" in text
    assert sizing["summary"] in text


def test_an_adaptive_optimizer_adds_its_moments_for_every_kept_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sizing = json.loads(check(tmp_path, capsys, "-o", "json", aggregation="adam"))["sizing"]

    assert (
        sizing["model_sized_files"] == 2 + 4 + 2 * 16 + 3 * 2
    )  # first and second moment, 3 rounds; adam: no fold
