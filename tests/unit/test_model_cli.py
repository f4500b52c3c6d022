"""The model commands and the reference collaborator end with one line, never a traceback, on files users have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedagg.cli import main
from fedagg.collaborator.reference import DatasetSpec, initial_weights
from fedagg.federation.store import publish_model
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID, make_federation, make_plan, serving


def test_model_init_from_a_npy_says_to_give_a_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros(3))

    with pytest.raises(SystemExit) as exit:
        main(["model", "init", "--from", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.pbuf")])

    assert str(exit.value).startswith(f"fedagg: {tmp_path / 'x.npy'} is a .npy (one array without a name)")
    assert "\n" not in str(exit.value)
    assert not (tmp_path / "y.pbuf").exists()


def test_model_export_keeps_tensors_named_like_savez_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tensors = {
        "file": np.arange(2, dtype=np.float32),
        "allow_pickle": np.ones((1, 2), np.float32),
        "softmax/bias": np.full(3, 7, np.float32),
    }
    publish_model(tmp_path / "m.pbuf", tensors, 4)

    status = main(["model", "export", str(tmp_path / "m.pbuf"), "--out", str(tmp_path / "m.npz")])

    assert status == 0
    with np.load(tmp_path / "m.npz") as exported:
        assert exported.files == list(tensors)
        for name, values in tensors.items():
            np.testing.assert_array_equal(exported[name], values)
    assert (
        main(["model", "init", "--from", str(tmp_path / "m.npz"), "--out", str(tmp_path / "back.pbuf")]) == 0
    )


def test_a_collaborator_whose_options_do_not_fit_the_model_says_which_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    federation = make_federation(tmp_path, make_plan(("one",), 1), initial_weights(DatasetSpec()))
    with serving(federation, None) as thread:
        status = main(
            [
                "collaborator",
                "--name",
                "one",
                "--insecure",
                "--address",
                thread.address,
                "--federation-uuid",
                FEDERATION_UUID,
                "--aggregator-uuid",
                AGGREGATOR_UUID,
                "--features",
                "8",
                "--classes",
                "3",
                "--quiet",
            ]
        )

    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr == (
        "fedagg: one: the aggregator's model has softmax/weights 32x10, softmax/bias 10; this collaborator trains "
        "8 features x 3 classes (--features 32 --classes 10 match it)\n"
    )
