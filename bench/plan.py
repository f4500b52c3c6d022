"""What ``python -m bench`` measures (:class:`Plan`: the full run and the quick smoke run), its targets, and
everything it measured (:class:`Report`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from bench.models import MIB
from bench.openfl_cases import Case, RunResult

SECTIONS = ("openfl", "wire", "scale", "phases", "large", "tier")
NULL_SERVERS = ("fedagg", "null", "openfl")
"""The servers of the OpenFL cases, in the order their runs interleave."""
FLOOR_RATIO_TARGET = 1.15
"""fedagg's round time over the null server's (median of the interleaved sets)."""
FLOOR_CPU_TARGET = 2.0
"""fedagg's server CPU per round over the null server's."""
THROUGHPUT_TARGET = 0.5
RSS_ALLOWANCE_BYTES = 200 * 10**6


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    cases: tuple[Case, ...]
    repeats: dict[str, int]
    raw_bytes: int
    wire_runs: tuple[tuple[int, int, int], ...]  # (collaborators, params, rounds)
    scale_ns: tuple[int, ...]
    scale_openfl_ns: tuple[int, ...]
    scale_params: int
    scale_rounds: int
    poll_clients: int
    poll_seconds: float
    phase_sizes: tuple[int, ...]
    polls: int
    large: tuple[int, int, int, int]  # (collaborators, params, tensors, rounds)
    tier_sizes: tuple[tuple[int, tuple[int, ...]], ...]  # (params, the Ns it runs with)
    tier_replicas: tuple[int, ...]  # 0: standalone
    tier_rounds: int


FULL = Plan(
    cases=(
        Case("a", 10_000_000, 2, rounds=4),
        Case("b", 50_000_000, 4, rounds=4),
        Case("c", 100_000_000, 2, rounds=4),
    ),
    repeats={"a": 2, "b": 1, "c": 1},
    raw_bytes=1 << 30,
    wire_runs=((2, 100_000_000, 5), (4, 50_000_000, 5)),
    scale_ns=(2, 8, 32, 64, 128),
    scale_openfl_ns=(2, 8, 32, 64, 128),
    scale_params=1 << 20,
    scale_rounds=2,
    poll_clients=100,
    poll_seconds=5.0,
    phase_sizes=(128,),
    polls=250,
    large=(2, 700 * MIB, 8, 2),
    tier_sizes=((MIB, (32, 128)), (16 * MIB, (32,))),  # 4 MiB and 64 MiB; why not 64 MiB x 128: bench/tier.py
    tier_replicas=(0, 2, 4),
    tier_rounds=2,
)
QUICK = Plan(
    cases=(Case("a", 1_000_000, 1, rounds=1),),
    repeats={"a": 1},
    raw_bytes=64 * MIB,
    wire_runs=((2, 1_000_000, 3),),
    scale_ns=(2, 8),
    scale_openfl_ns=(),
    scale_params=1 << 18,
    scale_rounds=1,
    poll_clients=10,
    poll_seconds=1.0,
    phase_sizes=(),
    polls=20,
    large=(2, 1 << 20, 4, 1),
    tier_sizes=((1 << 16, (8,)),),
    tier_replicas=(0, 2),
    tier_rounds=1,
)


@dataclass
class Report:
    """Everything measured, for the markdown report and the JSON file."""

    started: float = field(default_factory=time.time)
    load_start: tuple[float, ...] = field(default_factory=os.getloadavg)
    load_end: tuple[float, ...] = ()
    wall_seconds: float = 0.0
    cases: dict[str, dict[str, list[RunResult]]] = field(default_factory=dict)
    raw: dict[str, dict[str, float]] = field(default_factory=dict)
    wire: list[dict[str, Any]] = field(default_factory=list)
    scale: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    polls: dict[str, dict[str, float]] = field(default_factory=dict)
    phases: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    large: list[dict[str, Any]] = field(default_factory=list)
    tier: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "load_start": self.load_start,
            "load_end": self.load_end,
            "wall_seconds": self.wall_seconds,
            "cases": {
                key: {server: [run.to_json() for run in runs] for server, runs in servers.items()}
                for key, servers in self.cases.items()
            },
            "raw": self.raw,
            "wire": self.wire,
            "scale": self.scale,
            "polls": self.polls,
            "phases": {str(size): results for size, results in self.phases.items()},
            "large": self.large,
            "tier": self.tier,
            "skipped": self.skipped,
        }
