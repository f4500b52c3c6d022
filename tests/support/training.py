"""Training a federation with fedagg's collaborator library, one thread per collaborator."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from fedagg.collaborator import AggregatorClient, Collaborator, RetryPolicy
from tests.support.pki import Pki
from tests.support.runners import StepRunner
from tests.support.servers import AGGREGATOR_UUID, FEDERATION_UUID

SPECS = {"one": (1.0, 10), "two": (2.0, 30), "three": (4.0, 60)}


def train(
    address: str,
    pki: Pki | None,
    specs: Mapping[str, tuple[float, int]] = SPECS,
    delta: Mapping[str, bool] | None = None,
    retry: RetryPolicy | None = None,
) -> list[Collaborator]:
    """Run every collaborator until its quit job; raise if any failed."""
    collaborators = [
        Collaborator(
            AggregatorClient(
                address,
                name,
                AGGREGATOR_UUID,
                FEDERATION_UUID,
                tls=pki.client(name) if pki else None,
                retry=retry or RetryPolicy(initial=0.05, maximum=0.5, give_up_after=30),
            ),
            StepRunner(step, size, 5),
            delta_updates=(delta or {}).get(name, True),
            max_sleep_seconds=0.05,
        )
        for name, (step, size) in specs.items()
    ]
    errors: list[BaseException] = []

    def run(collaborator: Collaborator) -> None:
        try:
            collaborator.run()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(collaborator,)) for collaborator in collaborators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return collaborators
