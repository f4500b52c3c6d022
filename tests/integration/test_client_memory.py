"""fedagg's streaming client holds the model once: its peak RSS stays within model + 2 tensors + 200 MB, plus
the one tensor it receives beside its array when that tensor is at most ``spare_bytes``.

A real ``fedagg serve`` (mTLS, loopback) and one collaborator process running fedagg's client library
(:class:`fedagg.collaborator.Collaborator`) with a runner that trains in the collaborator's own buffers. Two
rounds: the first allocates the buffers, the second downloads into them again, both ways the collaborator has:
each reply copied into its tensor's array (tensors up to ``spare_bytes``), or each array released before its
reply arrives (larger tensors). The collaborator reads its own
high-water mark (VmHWM, the kernel's exact peak) from /proc when the experiment ends. No timing is asserted.

Run as ``python -m tests.integration.test_client_memory ADDRESS NAME PKI_ROOT OUT SPARE_BYTES`` it is that
collaborator.
"""

from __future__ import annotations

import json
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from fedagg.collaborator import AggregatorClient, Collaborator, TaskOutput
from fedagg.collaborator.participant import SPARE_BYTES
from fedagg.collaborator.runner import Weights
from fedagg.federation.store import publish_model
from fedagg.protocol.codec import Float32Array
from fedagg.protocol.model_file import read_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID

ROOT = Path(__file__).resolve().parents[2]
TENSORS = 8
TENSOR_BYTES = 50 * 2**20
MODEL_BYTES = TENSORS * TENSOR_BYTES
"""400 MiB: large against the interpreter's own ~60 MB, so that a second copy of the model breaks the bound."""
ROUNDS = 2
ALLOWED_BYTES = MODEL_BYTES + 2 * TENSOR_BYTES + 200 * 10**6
"""With each array released before its reply arrives; receiving beside the arrays allows one tensor more."""


class InPlace:
    """Training adds 1 to every weight in the buffers it is given and returns them. It keeps weak references to
    the arrays of its first round and tells, in :attr:`later_arrays`, what each later round's arrays were: the
    ``same`` arrays, ``new`` ones (the first round's freed), or ``other``."""

    def __init__(self) -> None:
        self.first: dict[str, weakref.ref[Float32Array]] = {}
        self.later_arrays: list[str] = []

    def weight_names(self) -> tuple[str, ...]:
        return tuple(f"layer{index}" for index in range(TENSORS))

    def train(self, weights: Weights, round_number: int) -> TaskOutput:
        if not self.first:
            self.first = {name: weakref.ref(values) for name, values in weights.items()}
        else:
            earlier = [self.first[name]() for name in weights]
            same = all(old is values for old, values in zip(earlier, weights.values(), strict=True))
            self.later_arrays.append(
                "same" if same else "new" if all(old is None for old in earlier) else "other"
            )
        for values in weights.values():
            np.add(values, np.float32(1), out=values)
        return TaskOutput({"loss": 1.0}, 10, weights)

    def validate(self, weights: Weights, round_number: int) -> TaskOutput:
        return TaskOutput({"acc": float(next(iter(weights.values()))[0])}, 5)


def peak_rss_bytes() -> int:
    """This process's VmHWM."""
    line = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    return int(line.split()[1]) * 1024


def collaborate(address: str, name: str, pki_root: str, out: str, spare_bytes: str) -> None:
    """The collaborator process: the whole experiment, then its peak RSS and rounds into ``out``."""
    root = Path(pki_root)
    tls = Pki(root, root / "server").client(name)
    with AggregatorClient(address, name, AGGREGATOR_UUID, FEDERATION_UUID, tls=tls) as client:
        runner = InPlace()
        collaborator = Collaborator(client, runner, spare_bytes=int(spare_bytes))
        collaborator.run()
    measured = {
        "peak": peak_rss_bytes(),
        "rounds": collaborator.rounds_completed,
        "later_arrays": runner.later_arrays,
    }
    Path(out).write_text(json.dumps(measured))


@pytest.mark.slow
@pytest.mark.parametrize(
    "spare_bytes", [SPARE_BYTES, 0], ids=["copied-into-the-arrays", "arrays-released-first"]
)
def test_the_client_holds_the_model_once_plus_two_tensors(tmp_path: Path, pki: Pki, spare_bytes: int) -> None:
    in_place = spare_bytes == SPARE_BYTES
    assert (spare_bytes >= TENSOR_BYTES) == in_place  # each case takes the way it names
    allowed = ALLOWED_BYTES + (TENSOR_BYTES if in_place else 0)
    init = tmp_path / "init.pbuf"
    elements = TENSOR_BYTES // 4
    publish_model(init, {name: np.zeros(elements, np.float32) for name in InPlace().weight_names()}, 0)
    config = write_config(tmp_path, pki, ("one",), ROUNDS, init, logging={"level": "info"})
    out = tmp_path / "client.json"

    with FedaggProcess(config) as server:
        server.wait_for_federation(timeout=60)
        client = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.integration.test_client_memory",
                server.address,
                "one",
                str(pki.root),
                str(out),
                str(spare_bytes),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        exit_code = server.wait(timeout=60)

    assert client.returncode == 0, client.stderr[-3000:]
    assert exit_code == 0, server.log()[-3000:]
    measured = json.loads(out.read_text())
    print(f"client peak RSS (VmHWM): {measured['peak'] / 2**20:.0f} MiB, allowed {allowed / 2**20:.0f} MiB")
    assert measured["rounds"] == ROUNDS
    # copied into the arrays the runner trained in, or those released before the next model arrived
    assert measured["later_arrays"] == ["same" if in_place else "new"] * (ROUNDS - 1)
    final = read_model(tmp_path / "state" / "last.pbuf")
    assert final.round_number == ROUNDS
    for values in final.tensors.values():  # every value went down, up and through the aggregate intact
        assert np.all(values == ROUNDS)
    assert measured["peak"] <= allowed, (
        f"the client's peak RSS (VmHWM) was {measured['peak'] / 2**20:.0f} MiB for a {MODEL_BYTES / 2**20:.0f} MiB "
        f"model of {TENSORS} x {TENSOR_BYTES / 2**20:.0f} MiB tensors; allowed: model + {3 if in_place else 2} tensors "
        f"+ 200 MB = {allowed / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    collaborate(*sys.argv[1:])
