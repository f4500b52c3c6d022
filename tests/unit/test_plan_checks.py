"""What the configuration check refuses at start (issue 19): privacy around a method without a sensitivity share,
two tasks that would write the same trained tensors, and differential privacy whose noise swamps the signal.
Errors name the key, as every configuration error does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedagg.config.loading import parse_config
from fedagg.federation.aggregators.privacy import GaussianMechanism, signal_to_noise
from fedagg.settings import ConfigError
from tests.support.aggregation import aggregate

COLLABORATORS = ["one", "two", "three", "four", "five", "six", "seven"]


def plan_error(tasks: dict[str, Any]) -> str:
    data = {
        "federation": {
            "federation_uuid": "fed_1",
            "collaborators": COLLABORATORS,
            "rounds_to_train": 3,
            "tasks": tasks,
        }
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(data, Path("/etc/fedagg"), {}).plan()
    return str(raised.value)


def train(**aggregation: Any) -> dict[str, Any]:
    return {"function": "train_task", **aggregation}


def test_privacy_around_krum_is_refused_with_the_key_and_the_reason() -> None:
    message = plan_error(
        {"train": train(aggregation="krum", privacy={"noise_multiplier": 1.0, "clipping_norm": 1.0})}
    )

    assert message.startswith("federation.tasks.train.privacy: ")
    assert "no privacy with aggregation krum" in message
    assert "one contribution can change the selection" in message


def test_two_tasks_writing_the_same_trained_tensors_are_refused_naming_both() -> None:
    message = plan_error({"train": train(), "train_again": train(function="train_batches")})

    assert message.startswith("federation.tasks.train_again: ")
    assert "tasks 'train' and 'train_again' both upload trained tensors" in message


def test_adaptive_clipping_whose_count_noise_cannot_pay_for_the_noise_multiplier_is_refused() -> None:
    """Reproduced case 7: noise multiplier 1, 7 collaborators, adaptive clipping: the model never changed."""
    privacy = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "adaptive": True}

    message = plan_error({"train": train(privacy=privacy)})

    assert message.startswith("federation.tasks.train.privacy: ")
    assert "clipped_count_stddev above 0.5" in message


def test_noise_as_large_as_any_update_is_refused() -> None:
    message = plan_error({"train": train(privacy={"noise_multiplier": 7.0, "clipping_norm": 1.0})})

    assert message.startswith("federation.tasks.train.privacy: ")
    assert "the model would not train" in message


def test_a_weak_signal_to_noise_ratio_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ratio = signal_to_noise({"noise_multiplier": 1.0, "clipping_norm": 1.0}, 7)

    assert ratio == 7
    assert "expected signal-to-noise ratio 7" in caplog.text
    assert signal_to_noise({"noise_multiplier": 0.0, "clipping_norm": 1.0}, 2) == float("inf")


def test_a_round_with_too_few_contributions_for_the_count_noise_still_trains() -> None:
    """A collaborator whose upload is rejected must not make a private round skip: with fewer contributions
    than the adaptive count noise needs, C stays for that round and the aggregate is noised with z."""
    mechanism = GaussianMechanism(noise_multiplier=1.0, clipping_norm=1.0, adaptive=True, seed=5)
    model = {"w": np.zeros(3, np.float32)}

    result = aggregate(mechanism, [{"w": np.ones(3, np.float32)}] * 3, [1.0] * 3, model)

    assert result is not None
    assert mechanism.clipping_norm == 1.0
    assert mechanism.report()["noise_stddev"] == pytest.approx(1.0 / 3)
