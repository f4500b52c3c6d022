"""A root's tier port running in the test's event loop, on an ephemeral loopback port with real mTLS."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedagg.server.tls import CertificateFiles, CertificateSource
from fedagg.tier.claims import ClaimBook
from fedagg.tier.collection import PartialCollection
from fedagg.tier.events import TierListener
from fedagg.tier.root_service import TierLimits, TierService, tier_server
from tests.support.pki import Pki
from tests.tier.conftest import REPLICAS


@dataclass
class Root:
    service: TierService
    collection: PartialCollection
    port: int


@contextlib.asynccontextmanager
async def running_root(
    pki: Pki,
    state: Path,
    listener: TierListener | None = None,
    port: int = 0,
    model_file: Callable[[int], Path | None] | None = None,
    limits: TierLimits | None = None,
) -> AsyncIterator[Root]:
    book = ClaimBook(state, time.monotonic)
    collection = PartialCollection(book, REPLICAS, 300.0, time.monotonic, listener)
    executor = ThreadPoolExecutor(2)
    service = TierService(book, collection, REPLICAS, executor, limits, listener, model_file)
    files = CertificateFiles(pki.server_dir / "tls.crt", pki.server_dir / "tls.key", pki.ca)
    server, port = tier_server(service, CertificateSource(files, True).credentials(), f"127.0.0.1:{port}")
    await server.start()
    try:
        yield Root(service, collection, port)
    finally:
        await server.stop(None)
        book.close()
        executor.shutdown()
