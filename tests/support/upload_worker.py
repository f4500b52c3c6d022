"""A collaborator process that uploads one large training result (used by the memory test).

Usage: python -m tests.support.upload_worker ADDRESS NAME PKI_ROOT TENSOR_ELEMENTS TENSORS
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedagg.collaborator import AggregatorClient
from fedagg.protocol.codec import encode_tensor
from tests.support.pki import Pki
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID


def main(address: str, name: str, pki_root: str, elements: str, count: str) -> None:
    root = Path(pki_root)
    pki = Pki(root, root / "server")
    with AggregatorClient(address, name, AGGREGATOR_UUID, FEDERATION_UUID, tls=pki.client(name)) as client:
        reply = client.get_tasks()
        tensors = [
            encode_tensor(
                f"layer{index}",
                np.full(int(elements), len(name), np.float32),
                round_number=0,
                tags=["trained"],
            )
            for index in range(int(count))
        ]
        client.send_task_results(reply.round_number, "train", 100, tensors)


if __name__ == "__main__":
    main(*sys.argv[1:])
