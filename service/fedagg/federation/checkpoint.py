"""The committed federation state: what a checkpoint records, and its transitions.

A :class:`Checkpoint` is immutable. A round end or a quit job produces a new one, which is made durable before
the in-memory state moves to it, so the state readers see is always a state that a restart would reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedagg.federation.integrity import CorruptFile, FileDigest

CHECKPOINT_RECORD = "fedagg/checkpoint/v2"


@dataclass(frozen=True)
class SlotDigest:
    """A model-sized aggregator state file (an optimizer's moment) of a task, and its digest."""

    task: str
    slot: str
    digest: FileDigest

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"task": self.task, "slot": self.slot, **self.digest.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SlotDigest:
        """Inverse of :meth:`to_json`."""
        return cls(str(data["task"]), str(data["slot"]), FileDigest.from_json(data))


@dataclass(frozen=True)
class ModelShape:
    """The initial model's tensor names and bytes of float32 data: what the model may grow from (the plan's shape,
    :mod:`fedagg.federation.model_shape`)."""

    names: frozenset[str]
    data_bytes: int

    @classmethod
    def of(cls, tensors: Mapping[str, Any]) -> ModelShape:
        """The shape of a model's ``tensors`` (float32 arrays by name)."""
        return cls(frozenset(tensors), sum(int(values.nbytes) for values in tensors.values()))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {"names": sorted(self.names), "data_bytes": self.data_bytes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelShape:
        """Inverse of :meth:`to_json`."""
        return cls(frozenset(str(name) for name in data["names"]), int(data["data_bytes"]))


@dataclass(frozen=True)
class Checkpoint:
    """The federation state at a round boundary (plus the quit jobs sent since)."""

    federation_uuid: str
    round_number: int
    first_round: int
    best_score: float | None = None
    best_round: int | None = None
    last_round: int | None = None
    quit_sent: tuple[str, ...] = ()
    models: tuple[tuple[int, FileDigest], ...] = ()
    """Digest of each kept model file, by round."""
    initial_model: FileDigest | None = None
    """Digest of the configured initial model file the federation started from (None: not known)."""
    aggregation: str = ""
    """The task aggregators' small state (canonical JSON), as of this round's start."""
    slots: tuple[SlotDigest, ...] = ()
    """The task aggregators' model-sized state files of this round."""
    initial_shape: ModelShape | None = None
    """The initial model's shape (None in a state directory written before it was recorded: the shape of the model
    the federation resumes from stands in for it)."""

    @property
    def best(self) -> float:
        """The best aggregated validate_agg score so far (-inf before any)."""
        return -math.inf if self.best_score is None else self.best_score

    def model_digest(self, round_number: int) -> FileDigest | None:
        """The recorded digest of a kept model."""
        return dict(self.models).get(round_number)

    def with_quit(self, collaborator: str) -> Checkpoint:
        """This state plus a quit job sent to ``collaborator``."""
        return replace(self, quit_sent=tuple(sorted({*self.quit_sent, collaborator})))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "federation_uuid": self.federation_uuid,
            "round_number": self.round_number,
            "first_round": self.first_round,
            "best_score": self.best_score,
            "best_round": self.best_round,
            "last_round": self.last_round,
            "quit_sent": list(self.quit_sent),
            "models": {str(number): digest.to_json() for number, digest in self.models},
            "initial_model": None if self.initial_model is None else self.initial_model.to_json(),
            "aggregation": self.aggregation,
            "slots": [slot.to_json() for slot in self.slots],
            "initial_shape": None if self.initial_shape is None else self.initial_shape.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: Path) -> Checkpoint:
        """Parse a checkpoint body; raise :class:`CorruptFile` naming the file and the problem."""
        try:
            return cls(
                federation_uuid=str(data["federation_uuid"]),
                round_number=int(data["round_number"]),
                first_round=int(data["first_round"]),
                best_score=None if data["best_score"] is None else float(data["best_score"]),
                best_round=None if data["best_round"] is None else int(data["best_round"]),
                last_round=None if data["last_round"] is None else int(data["last_round"]),
                quit_sent=tuple(str(name) for name in data["quit_sent"]),
                models=tuple(
                    sorted(
                        (int(number), FileDigest.from_json(digest))
                        for number, digest in data["models"].items()
                    )
                ),
                initial_model=None
                if data.get("initial_model") is None
                else FileDigest.from_json(data["initial_model"]),
                aggregation=str(data.get("aggregation", "")),
                slots=tuple(SlotDigest.from_json(slot) for slot in data.get("slots", [])),
                initial_shape=None
                if data.get("initial_shape") is None
                else ModelShape.from_json(data["initial_shape"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CorruptFile(f"{source}: malformed checkpoint ({error!r})") from None
