"""The model's shape is the plan's (issue 16, item 5): tensors may join the model only under a rule that one
collaborator cannot drive, within a size cap derived from the initial model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedagg.federation.events import FederationListener
from fedagg.federation.federation import Federation
from fedagg.protocol.model_file import read_model
from tests.support.runners import SHAPES, zero_model
from tests.support.servers import make_federation, make_plan, restart_federation
from tests.support.uploads import TASKS, metric, submit, validate_locally, weights

PAIR = ("one", "two")
INITIAL_BYTES = 36  # w (2, 3) and b (3,) as float32
CAP = INITIAL_BYTES + 2 * INITIAL_BYTES  # the default extra allowance is twice the initial model


class LeftOut(FederationListener):
    def __init__(self) -> None:
        self.reports: list[tuple[int, int]] = []

    def tensors_left_out(self, round_number: int, count: int) -> None:
        self.reports.append((round_number, count))


def train_round(federation: Federation, round_number: int, extras: dict[str, list[str]]) -> None:
    """Both collaborators run the round; each also uploads its ``extras`` names as (9,) tensors (36 bytes)."""
    for collaborator in PAIR:
        submit(
            federation,
            collaborator,
            round_number,
            TASKS[0],
            5,
            [metric("acc", 1, round_number, "validate_agg")],
        )
        trained = [weights(name, 1.0, shape, round_number) for name, shape in SHAPES.items()]
        trained += [weights(name, 1.0, (9,), round_number) for name in extras.get(collaborator, [])]
        assert submit(federation, collaborator, round_number, TASKS[1], 10, trained).accepted
        validate_locally(federation, collaborator, round_number)
    assert federation.round_number == round_number + 1


def model_bytes(tmp_path: Path) -> tuple[set[str], int]:
    model = read_model(tmp_path / "last.pbuf")
    return set(model.tensors), sum(values.nbytes for values in model.tensors.values())


def test_one_collaborator_sending_new_names_every_round_never_changes_the_model(tmp_path: Path) -> None:
    listener = LeftOut()
    federation = make_federation(tmp_path, make_plan(PAIR, 6), zero_model(), listener=listener)

    for round_number in range(6):
        train_round(federation, round_number, {"one": [f"injected_{round_number}_{i}" for i in range(2)]})
        assert model_bytes(tmp_path) == ({"w", "b"}, INITIAL_BYTES), f"round {round_number}"

    assert listener.reports == [(round_number, 2) for round_number in range(6)], "reported once per round"


def test_names_every_collaborator_sends_join_up_to_the_cap_that_the_initial_model_sets(
    tmp_path: Path,
) -> None:
    """OpenFL's CONTINUE_GLOBAL optimizer state comes from every collaborator: it joins, but never past the cap."""
    federation = make_federation(tmp_path, make_plan(PAIR, 4), zero_model())

    for round_number in range(4):
        state = [f"opt_{round_number}"]
        train_round(federation, round_number, {"one": state, "two": state})
        names, size = model_bytes(tmp_path)
        assert size <= CAP, f"round {round_number}: {size} bytes"

    assert names == {"w", "b", "opt_0", "opt_1"}
    assert size == CAP
    np.testing.assert_array_equal(read_model(tmp_path / "last.pbuf").tensors["opt_1"], np.ones(9))


def test_the_initial_shape_survives_a_restart(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(PAIR, 3), zero_model())
    train_round(federation, 0, {"one": ["opt"], "two": ["opt"]})

    resumed = restart_federation(tmp_path, make_plan(PAIR, 3))
    train_round(resumed, 1, {"one": ["opt_1", "opt_2"], "two": ["opt_1", "opt_2"]})

    names, size = model_bytes(tmp_path)
    assert (names, size) == ({"w", "b", "opt", "opt_1"}, CAP), "the cap is the initial model's, not round 1's"
