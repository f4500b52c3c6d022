"""ServerOptions from OpenFL-style keywords: the replicas a root trusts reach the server's identity rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedagg.server import AggregatorGRPCServer
from fedagg.server.options import ServerOptions
from tests.support.servers import make_federation, make_plan


def test_replicas_are_a_frozen_set_of_names() -> None:
    options = ServerOptions.from_keywords({"replicas": ["ingest-0", "ingest-1", "ingest-0"]})

    assert options.replicas == frozenset({"ingest-0", "ingest-1"})
    assert ServerOptions.from_keywords({}).replicas == frozenset()
    with pytest.raises(TypeError, match="replica"):
        ServerOptions.from_keywords({"replica": ["ingest-0"]})


def test_the_server_trusts_the_configured_replicas(tmp_path: Path) -> None:
    federation = make_federation(tmp_path, make_plan(("one",), 1), {"w": np.zeros(4, np.float32)})

    server = AggregatorGRPCServer(federation, 0, use_tls=False, replicas=("ingest-0",))

    assert server.authenticator.identity.replicas == frozenset({"ingest-0"})
