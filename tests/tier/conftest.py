"""The tier's test PKI: a CA, the root's server certificate for localhost, the replicas' client certificates."""

from __future__ import annotations

import pytest

from tests.support.pki import Pki, make_pki

REPLICAS = ("ingest-0", "ingest-1")


@pytest.fixture(scope="module")
def tier_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tier-pki"), (*REPLICAS, "intruder"))
