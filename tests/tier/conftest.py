"""The tier's test PKIs: a CA, the root's server certificate for localhost, the replicas' (and collaborators') client
certificates."""

from __future__ import annotations

import pytest

from tests.support.pki import Pki, make_pki

REPLICAS = ("ingest-0", "ingest-1")
COLLABORATORS = ("one", "two", "three", "four")


@pytest.fixture(scope="module")
def tier_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tier-pki"), (*REPLICAS, "intruder"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA for the tier and the federation: the root's and replicas' server certificate for localhost, the
    replicas', an intruder's and the collaborators' client certificates."""
    return make_pki(tmp_path_factory.mktemp("ingest-pki"), (*REPLICAS, "intruder", *COLLABORATORS))
