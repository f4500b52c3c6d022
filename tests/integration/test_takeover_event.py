"""The Kubernetes Event a replica records on its pod when it takes the lead (kmock's API emulator: it stores the
Event as posted, which is all this checks)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fedagg.assembly import leadership_from_config
from fedagg.config.loading import parse_config
from fedagg.ops.lease import LeaseRecord
from tests.support.kube import NAMESPACE, POD, POD_UID, kubernetes_api

FEDERATION = {"federation_uuid": "fed_1", "collaborators": ["one", "two"], "rounds_to_train": 3}


def test_a_takeover_is_recorded_as_an_event_on_the_new_leaders_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "POD_NAME": POD,
        "POD_NAMESPACE": NAMESPACE,
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    }.items():
        monkeypatch.setenv(name, value)
    settings = parse_config({"federation": FEDERATION, "ha": {"enabled": True}}, Path("/etc/fedagg"), {}).ha
    now = datetime.datetime.now(datetime.UTC)
    with kubernetes_api() as api:
        leadership = leadership_from_config(settings, CollectorRegistry(), api.configuration())
        assert leadership is not None

        leadership.announce(LeaseRecord(POD, 15, now, now, 4))

        events = api.requests("POST", f"/namespaces/{NAMESPACE}/events")
    assert len(events) == 1
    event = events[0].data
    assert event["involvedObject"]["uid"] == POD_UID
    assert (event["reason"], event["type"]) == ("LeaderElected", "Normal")
    assert event["message"] == (
        f"{POD} leads (took Lease {NAMESPACE}/fedagg, transition 4); restoring the state"
    )
