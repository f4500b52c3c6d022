"""``python -m bench --quick --sections tier`` runs standalone and a root with two ingest replicas behind HAProxy,
reports every pod, and the root's traffic is a few models per replica, not two per collaborator (no timing is
asserted)."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.bench import run_quick


@pytest.mark.slow
def test_the_quick_tier_benchmark_reports_each_pod_and_a_root_traffic_of_k_models(tmp_path: Path) -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed (Debian package haproxy)")

    # a loaded machine is slow, never a failure
    text, data = run_quick("bench", tmp_path, 300, "--sections", "tier")

    assert data["skipped"] == []
    standalone, tier = data["tier"]
    assert (standalone["replicas"], tier["replicas"]) == (0, 2)
    n, model, rounds = tier["collaborators"], tier["model_bytes"], tier["rounds"]
    assert n >= 4 * tier["replicas"], "N well above 3 K / 2, so that O(N) and O(K) traffic differ"
    assert [pod["role"] for pod in standalone["pods"]] == ["standalone"]
    assert [(pod["pod"], pod["role"]) for pod in tier["pods"]] == [
        ("root", "root"),
        ("ingest-0", "ingest"),
        ("ingest-1", "ingest"),
    ]
    for result in (standalone, tier):
        assert len(result["round_seconds"]) == rounds
        assert all(math.isfinite(s) and s > 0 for s in result["round_seconds"]), result
        for pod in result["pods"]:
            assert 50 < pod["peak_hwm_mib"] < 2048, pod  # a Python pod holding a 256 KiB model
            assert pod["cpu_seconds"] > 0, pod
    [pod] = standalone["pods"]
    assert pod["received_bytes"] >= n * model * rounds, pod  # every upload went through the one pod
    assert pod["sent_bytes"] >= n * model * rounds, pod  # and every download
    root, *replicas = tier["pods"]
    # per replica and round: one model fetched, float64 sums (two models) delivered
    payload = 3 * tier["replicas"] * model * rounds
    root_bytes = root["received_bytes"] + root["sent_bytes"]
    assert root["received_bytes"] >= 2 * tier["replicas"] * model * rounds, root
    assert root["sent_bytes"] >= tier["replicas"] * model * rounds, root
    assert payload <= root_bytes < payload + model * rounds, root  # O(K x model): well below 2 N models
    assert root_bytes < 2 * n * model * rounds
    assert tier["root_bytes_per_model_round"] == pytest.approx(root_bytes / model / rounds)
    for replica in replicas:
        assert replica["collaborator_bytes"] > 0, f"the balancer spread the collaborators: {replica}"
        assert replica["root_link_bytes"] >= 3 * model * rounds, replica
    collaborators_traffic = sum(replica["collaborator_bytes"] for replica in replicas)
    assert collaborators_traffic >= 2 * n * model * rounds  # the collaborators' bytes landed on the replicas
    assert "### 6. Scale-out tier" in text
    assert text.count("| 0.25 MiB | 8 |") == 2 + 1 + 3, text  # 2 setups, then 1 + 3 pods
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "a measurement is missing"
