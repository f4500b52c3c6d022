"""The lease as a key in etcd v3, through etcd's JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``): for replicas
outside Kubernetes (a VM pair on NFS).

Compare-and-swap is an etcd transaction: create compares the key's ``create_revision`` with 0 (absent), replace
compares its ``mod_revision`` with the version read. The value is the record as JSON. No client library: urllib.
"""

from __future__ import annotations

import base64
import datetime
import json
import urllib.error
import urllib.request
from typing import Any

from fedagg.ops.lease import LeaseConflict, LeaseRecord, LeaseRecords, LeaseStoreError

KEY_PREFIX = "/fedagg/leases/"


class EtcdLeaseRecords(LeaseRecords):
    """The key ``/fedagg/leases/<name>`` in the etcd cluster at ``endpoint``."""

    def __init__(self, name: str, endpoint: str) -> None:
        self.key = KEY_PREFIX + name
        self.endpoint = endpoint.rstrip("/")

    @property
    def description(self) -> str:
        return f"etcd key {self.key} at {self.endpoint}"

    def read(self, timeout: float) -> tuple[LeaseRecord, str] | None:
        answer = self._post("/v3/kv/range", {"key": _b64(self.key)}, timeout)
        found = answer.get("kvs") or []
        if not found:
            return None
        try:
            entry = found[0]
            return _record(json.loads(base64.b64decode(entry["value"]))), str(entry["mod_revision"])
        except (KeyError, TypeError, ValueError) as error:
            raise LeaseStoreError(f"{self.description}: unreadable record ({error})") from None

    def create(self, record: LeaseRecord, timeout: float) -> str:
        return self._swap({"target": "CREATE", "create_revision": "0"}, record, timeout)

    def replace(self, record: LeaseRecord, expected_version: str, timeout: float) -> str:
        return self._swap({"target": "MOD", "mod_revision": expected_version}, record, timeout)

    def _swap(self, condition: dict[str, str], record: LeaseRecord, timeout: float) -> str:
        put = {"request_put": {"key": _b64(self.key), "value": _b64(json.dumps(_document(record)))}}
        transaction = {
            "compare": [{"key": _b64(self.key), "result": "EQUAL", **condition}],
            "success": [put],
        }
        answer = self._post("/v3/kv/txn", transaction, timeout)
        if not answer.get("succeeded"):
            raise LeaseConflict(f"{self.description} changed since it was read")
        try:
            return str(answer["header"]["revision"])
        except (KeyError, TypeError) as error:
            raise LeaseStoreError(f"{self.description}: malformed answer ({error})") from None

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        request = urllib.request.Request(
            self.endpoint + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise LeaseStoreError(f"{self.description}: HTTP {error.code} {error.reason}") from None
        except (OSError, ValueError) as error:
            raise LeaseStoreError(f"{self.description}: {error}") from None
        if not isinstance(answer, dict):
            raise LeaseStoreError(f"{self.description}: malformed answer")
        return answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _document(record: LeaseRecord) -> dict[str, Any]:
    return {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_seconds,
        "acquireTime": record.acquired.isoformat(),
        "renewTime": record.renewed.isoformat(),
        "leaseTransitions": record.transitions,
    }


def _record(document: dict[str, Any]) -> LeaseRecord:
    return LeaseRecord(
        holder=str(document["holderIdentity"]),
        lease_seconds=int(document["leaseDurationSeconds"]),
        acquired=datetime.datetime.fromisoformat(document["acquireTime"]),
        renewed=datetime.datetime.fromisoformat(document["renewTime"]),
        transitions=int(document["leaseTransitions"]),
    )
