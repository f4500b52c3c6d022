"""The aggregator process's peak resident memory (VmHWM from /proc) stays within 2x the model + 200 MB.

A real ``fedagg serve`` subprocess and four collaborator processes running fedagg's client library
(:class:`fedagg.collaborator.Collaborator`): each downloads the 128 MiB model, trains, uploads it whole and
validates, so the round end aggregates four contributions. The kernel's high-water mark covers everything the
server touched: its heap, gRPC buffers and the model files it maps. No timing is asserted.

Run as ``python -m tests.integration.test_memory_rss ADDRESS NAME PKI_ROOT`` it is one such collaborator.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fedagg.collaborator import AggregatorClient, Collaborator, TaskOutput
from fedagg.collaborator.runner import Weights
from fedagg.federation.store import publish_model
from fedagg.protocol.model_file import read_model
from tests.support.pki import Pki
from tests.support.process import FedaggProcess, write_config
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID

ROOT = Path(__file__).resolve().parents[2]
MODEL_BYTES = 128 * 2**20
TENSORS = 4
ELEMENTS = MODEL_BYTES // 4 // TENSORS
CONTRIBUTORS = ("one", "two", "three", "rogue")
ALLOWED_BYTES = 2 * MODEL_BYTES + 200 * 10**6


class PlusNameLength:
    """Training sets every weight to the global value plus the length of the collaborator's name."""

    def __init__(self, name: str) -> None:
        self.step = np.float32(len(name))

    def weight_names(self) -> tuple[str, ...]:
        return tuple(f"layer{index}" for index in range(TENSORS))

    def train(self, weights: Weights, round_number: int) -> TaskOutput:
        return TaskOutput({"loss": 1.0}, 10, {name: values + self.step for name, values in weights.items()})

    def validate(self, weights: Weights, round_number: int) -> TaskOutput:
        return TaskOutput({"acc": float(next(iter(weights.values()))[0])}, 5)


def collaborate(address: str, name: str, pki_root: str) -> None:
    """One collaborator process: the whole experiment with fedagg's client library."""
    root = Path(pki_root)
    tls = Pki(root, root / "server").client(name)
    with AggregatorClient(address, name, AGGREGATOR_UUID, FEDERATION_UUID, tls=tls) as client:
        Collaborator(client, PlusNameLength(name)).run()


class PeakWatch:
    """Reads the process's VmHWM (kB) from /proc every 50 ms until it exits; keeps the largest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def stop(self) -> int:
        """The peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak_kib * 1024


@pytest.mark.slow
def test_four_contributions_of_a_128_mib_model_keep_the_server_under_two_models_plus_200_mb(
    tmp_path: Path, pki: Pki
) -> None:
    init = tmp_path / "init.pbuf"
    publish_model(init, {f"layer{index}": np.zeros(ELEMENTS, np.float32) for index in range(TENSORS)}, 0)
    config = write_config(tmp_path, pki, CONTRIBUTORS, 1, init, logging={"level": "info"})

    with FedaggProcess(config) as server:
        server.wait_for_federation(timeout=60)
        watch = PeakWatch(server.process.pid)
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.test_memory_rss",
                    server.address,
                    name,
                    str(pki.root),
                ],
                cwd=ROOT,
            )
            for name in CONTRIBUTORS
        ]
        try:
            codes = [worker.wait(timeout=240) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
        exit_code = server.wait(timeout=60)
        peak = watch.stop()

    print(f"fedagg serve peak RSS (VmHWM): {peak / 2**20:.0f} MiB, allowed {ALLOWED_BYTES / 2**20:.0f} MiB")
    assert codes == [0] * len(CONTRIBUTORS), server.log()[-3000:]
    assert exit_code == 0, server.log()[-3000:]
    final = read_model(tmp_path / "state" / "last.pbuf")
    assert final.round_number == 1
    np.testing.assert_allclose(final.tensors["layer0"][:5], np.mean([len(name) for name in CONTRIBUTORS]))
    assert peak < ALLOWED_BYTES, (
        f"fedagg serve's peak RSS (VmHWM) was {peak / 2**20:.0f} MiB for a {MODEL_BYTES / 2**20:.0f} MiB model "
        f"and {len(CONTRIBUTORS)} contributions; allowed: 2 x model + 200 MB = {ALLOWED_BYTES / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    collaborate(*sys.argv[1:])
