"""The contracts of the other plug-in families: tensor sources (a conformance suite here, over every source the
round end reads), assigners and straggler policies (their suites are tests/unit/test_assigner.py and
tests/unit/test_stragglers.py). Every MUST sentence of each interface is quoted by a conformance test."""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fedagg.federation.aggregators.clipping import ClippedSource
from fedagg.federation.assigner import Assigner
from fedagg.federation.sources import DeltaOnBase, ModelValues, SpooledValues, TensorSource
from fedagg.federation.store import publish_model
from fedagg.federation.stragglers import StragglerPolicy
from fedagg.protocol.model_file import read_model
from tests.support.conformance import subclasses, untested_musts
from tests.unit import test_assigner, test_stragglers

VALUES = np.arange(1000, dtype=np.float32) * np.float32(0.25) - np.float32(40.0)
RANGES = ((0, 1000), (999, 1000), (0, 1), (100, 357), (500, 500), (0, 7))


def model_values(directory: Path, values: np.ndarray) -> ModelValues:
    path = directory / "model.pbuf"
    publish_model(path, {"w": values.reshape(20, 50)}, 3)
    return ModelValues(read_model(path), "w")


class SourceConformance(ABC):
    """What every tensor source must do; each source's test class says how to make one holding ``VALUES``."""

    @abstractmethod
    def make(self, directory: Path) -> TensorSource:
        """A source whose values are ``VALUES``."""

    def test_the_size_is_the_number_of_values_for_good(self, tmp_path: Path) -> None:
        """TensorSource.size: It MUST stay the same for the source's life."""
        source = self.make(tmp_path)
        assert source.size == VALUES.size
        source.block(0, source.size)
        assert source.size == VALUES.size

    def test_a_block_is_float32_and_later_reads_never_change_it(self, tmp_path: Path) -> None:
        """TensorSource.block: It MUST return a float32 array of ``stop - start`` values, which later reads never
        change. Reading the same range again MUST give the same values."""
        source = self.make(tmp_path)
        for start, stop in RANGES:
            first = source.block(start, stop)
            kept = first.copy()
            for other_start, other_stop in RANGES:
                source.block(other_start, other_stop)
            again = source.block(start, stop)

            assert first.dtype == np.float32
            assert first.shape == (stop - start,)
            np.testing.assert_array_equal(first, kept)
            np.testing.assert_array_equal(again, kept)

    def test_blocks_in_any_order_make_the_tensor(self, tmp_path: Path) -> None:
        """TensorSource.block: Blocks read in any order MUST together be the tensor's values."""
        source = self.make(tmp_path)
        edges = [0, 13, 250, 251, 640, 1000]
        pieces = {
            start: source.block(start, stop) for start, stop in reversed(list(itertools.pairwise(edges)))
        }

        np.testing.assert_allclose(np.concatenate([pieces[start] for start in edges[:-1]]), VALUES, rtol=1e-6)

    def test_blocks_read_from_several_threads_at_once_are_the_same_values(self, tmp_path: Path) -> None:
        """TensorSource.block: Blocks read from several threads at once MUST be the same values (the round end
        reads a tensor's blocks side by side)."""
        source = self.make(tmp_path)
        ranges = [(start, start + 100) for start in range(0, 1000, 100)] * 8
        alone = [source.block(start, stop) for start, stop in ranges]

        with ThreadPoolExecutor(max_workers=4) as pool:
            together = list(pool.map(lambda edges: source.block(*edges), ranges))

        for first, second in zip(alone, together, strict=True):
            np.testing.assert_array_equal(first, second)


class TestSpooledValues(SourceConformance):
    def make(self, directory: Path) -> TensorSource:
        path = directory / "upload.spool"
        path.write_bytes(b"header!!" + VALUES.tobytes() + b"trailer")
        return SpooledValues(path, 8, VALUES.size)


class TestModelValues(SourceConformance):
    def make(self, directory: Path) -> TensorSource:
        return model_values(directory, VALUES)


class TestDeltaOnBase(SourceConformance):
    def make(self, directory: Path) -> TensorSource:
        base = np.full(VALUES.size, 2.0, np.float32)
        path = directory / "delta.spool"
        path.write_bytes((VALUES - base).tobytes())
        return DeltaOnBase(model_values(directory, base), SpooledValues(path, 0, VALUES.size))


class TestClippedSource(SourceConformance):
    """An unclipped contribution (scale 1) behind clipping, and a clipped one without a base (base 0)."""

    @pytest.fixture(autouse=True, params=["unscaled", "no_base_halved"])
    def _kind(self, request: pytest.FixtureRequest) -> None:
        self.kind = str(request.param)

    def make(self, directory: Path) -> TensorSource:
        if self.kind == "unscaled":
            return ClippedSource(
                model_values(directory, np.zeros_like(VALUES)), self._spooled(directory, 1.0), 1.0
            )
        return ClippedSource(None, self._spooled(directory, 2.0), 0.5)

    @staticmethod
    def _spooled(directory: Path, factor: float) -> SpooledValues:
        path = directory / "scaled.spool"
        path.write_bytes((VALUES * np.float32(factor)).tobytes())
        return SpooledValues(path, 0, VALUES.size)


def test_every_source_the_round_end_reads_has_a_conformance_class() -> None:
    tested = {cls.__name__.removeprefix("Test") for cls in subclasses(SourceConformance)}

    assert {"SpooledValues", "ModelValues", "DeltaOnBase", "ClippedSource"} <= tested


@pytest.mark.parametrize(
    ("interface", "suite"),
    [
        (TensorSource, SourceConformance),
        (Assigner, test_assigner.AssignerConformance),
        (StragglerPolicy, test_stragglers.StragglerPolicyConformance),
    ],
    ids=["tensor_source", "assigner", "straggler_policy"],
)
def test_every_must_of_the_interface_has_a_conformance_test(interface: type, suite: type) -> None:
    missing = untested_musts([interface], [suite])

    assert not missing, "\n".join(missing)
