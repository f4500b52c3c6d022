"""Where differential privacy's noise comes from: a generator per (experiment seed, task, round, draw).

The experiment seed is 32 random bytes made once, when the first round of an experiment ends, and kept in the
state directory (``noise-seed``, readable by its owner only, checksummed; never logged). Every draw of a round
is seeded from a SHA-256 of that seed, the task, the round and what is drawn (a tensor's noise, the noised count
of clipped updates), so a round redone after a crash or a failed commit releases the very same model, bit for
bit, and epsilon counts the round once. Without the seed, nobody can tell the noise from the model.

An operator rotates the seed between runs of fedagg: stop it, replace the file (``fedagg`` makes a new one when
it is missing: move the old one away), start it. Rounds committed before keep their noise; the round in
progress draws fresh noise, which is safe because a model is released only once its round has committed
(:mod:`fedagg.federation.round_close`). A seed file that does not verify stops round ends (they are retried and
reported) until it is restored from a backup or moved away.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedagg.federation.files import atomic_write
from fedagg.federation.integrity import read_sealed_json, seal_json

SEED_FILE = "noise-seed"
SEED_RECORD = "fedagg/noise-seed/v1"
SEED_BYTES = 32


def experiment_seed(state_dir: Path) -> bytes:
    """The experiment's noise seed from ``state_dir``, made (durably, owner-only) the first time."""
    path = state_dir / SEED_FILE
    if path.exists():
        return bytes.fromhex(str(read_sealed_json(path, SEED_RECORD)))
    seed = secrets.token_bytes(SEED_BYTES)

    def write(file: BinaryIO) -> None:
        os.fchmod(file.fileno(), 0o600)
        file.write(seal_json(SEED_RECORD, seed.hex()))

    atomic_write(path, write)
    return seed


def noise_generator(seed: bytes, task: str, round_number: int, draw: str) -> np.random.Generator:
    """The generator of one draw of one task's round: the same arguments give the same numbers."""
    digest = hashlib.sha256(b"\0".join((seed, task.encode(), str(round_number).encode(), draw.encode())))
    return np.random.default_rng(int.from_bytes(digest.digest(), "big"))
