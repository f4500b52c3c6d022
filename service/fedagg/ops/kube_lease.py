"""The lease as a ``coordination.k8s.io/v1`` Lease: compare-and-swap on ``metadata.resourceVersion``.

The API server refuses a replace whose resourceVersion is stale (409 Conflict) and a create of an existing name
(409 AlreadyExists): that is the whole election's safety. RBAC needed: ``leases`` get, create and update on the
one Lease name (create cannot be restricted by name; the chart grants it on the resource).
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from fedagg.ops.lease import LeaseConflict, LeaseRecord, LeaseRecords, LeaseStoreError


class KubernetesLeaseRecords(LeaseRecords):
    """The Lease ``namespace/name`` through the kubernetes client's CoordinationV1Api."""

    def __init__(self, name: str, namespace: str, configuration: Callable[[], k8s.Configuration]) -> None:
        self.name = name
        self.namespace = namespace
        self._configuration = configuration
        self._api: k8s.CoordinationV1Api | None = None
        self._api_lock = threading.Lock()
        """Guards the lazily built API client (built on first use, by whichever thread asks first); held only
        while building it, never across a request."""

    @property
    def description(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def read(self, timeout: float) -> tuple[LeaseRecord, str] | None:
        try:
            lease = self._call(
                lambda api: api.read_namespaced_lease(self.name, self.namespace, **_limit(timeout))
            )
        except _NotFound:
            return None
        spec = lease.spec or k8s.V1LeaseSpec()
        epoch = datetime.datetime.fromtimestamp(0, datetime.UTC)
        record = LeaseRecord(
            holder=spec.holder_identity or "",
            lease_seconds=int(spec.lease_duration_seconds or 0),
            acquired=_aware(spec.acquire_time) or epoch,
            renewed=_aware(spec.renew_time) or epoch,
            transitions=int(spec.lease_transitions or 0),
        )
        return record, str(lease.metadata.resource_version or "")

    def create(self, record: LeaseRecord, timeout: float) -> str:
        try:
            created = self._call(
                lambda api: api.create_namespaced_lease(
                    self.namespace, self._lease(record, None), **_limit(timeout)
                )
            )
        except _NotFound:
            raise LeaseStoreError(f"{self.description}: namespace {self.namespace} not found") from None
        return str(created.metadata.resource_version or "")

    def replace(self, record: LeaseRecord, expected_version: str, timeout: float) -> str:
        try:
            replaced = self._call(
                lambda api: api.replace_namespaced_lease(
                    self.name, self.namespace, self._lease(record, expected_version), **_limit(timeout)
                )
            )
        except _NotFound:
            raise LeaseConflict(f"{self.description} was deleted") from None
        return str(replaced.metadata.resource_version or "")

    def _lease(self, record: LeaseRecord, version: str | None) -> k8s.V1Lease:
        return k8s.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace, resource_version=version),
            spec=k8s.V1LeaseSpec(
                holder_identity=record.holder or None,
                lease_duration_seconds=record.lease_seconds,
                acquire_time=record.acquired,
                renew_time=record.renewed,
                lease_transitions=record.transitions,
            ),
        )

    def _call(self, request: Callable[[k8s.CoordinationV1Api], Any]) -> Any:
        try:
            return request(self._client())
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflict(f"{self.description} changed: {error.reason}") from None
            if error.status == 404:
                raise _NotFound from None
            raise LeaseStoreError(f"{self.description}: HTTP {error.status} {error.reason}") from None
        except (HTTPError, OSError, ValueError) as error:
            raise LeaseStoreError(f"{self.description}: {error}") from None

    def _client(self) -> k8s.CoordinationV1Api:
        with self._api_lock:
            if self._api is None:
                configuration = self._configuration()
                configuration.retries = False  # a retried call would run past the election's deadlines
                self._api = k8s.CoordinationV1Api(k8s.ApiClient(configuration))
            return self._api


class _NotFound(Exception):
    """The Lease does not exist (read only)."""


def _limit(timeout: float) -> dict[str, Any]:
    return {"_request_timeout": (timeout, timeout)}


def _aware(moment: datetime.datetime | None) -> datetime.datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)
