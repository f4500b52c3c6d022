"""What ``fedagg config check`` reports about a configuration: listeners, the certificate, sizing, warnings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedagg.config.schema import Config
    from fedagg.federation.plan import FederationPlan


def config_document(config: Config, plan: FederationPlan, ignored: tuple[str, ...]) -> dict[str, Any]:
    """What ``fedagg config check`` reports (its ``-o json`` object; ``security`` and ``serves`` are for text)."""
    import datetime

    from fedagg.collaborator.diagnostics import certificate_facts
    from fedagg.config.topology import Role
    from fedagg.server.tls import TlsMode
    from fedagg.sizing import plan_sizing

    server, ops, tls = config.server, config.ops, config.server.tls
    root = config.topology.role == Role.ROOT
    files = config.topology.tier_files(tls.certificate_dir) if root else tls.files()
    security = {
        TlsMode.MUTUAL: f"mutual TLS (client certificates signed by {files.root_certificate})",
        TlsMode.SERVER_ONLY: "TLS, server certificate only",
        TlsMode.INSECURE: "PLAINTEXT (insecure)",
    }[TlsMode.MUTUAL if root else tls.mode]
    topology = config.topology
    listeners = [
        _listener(
            "tier", topology.tier_bind_address, topology.tier_port, "grpc", TlsMode.MUTUAL.value, security
        )
        if root
        else _listener("federation", server.bind_address, server.port, "grpc", tls.mode.value, security),
        _listener("ops", ops.bind_address, ops.port, "grpc", None, "plaintext"),
        _listener("metrics", ops.metrics_bind_address, ops.metrics_port, "http", None, "plaintext"),
    ]
    warnings: list[str] = []
    certificate: dict[str, Any] | None = None
    if tls.mode == TlsMode.INSECURE and not root:
        warnings.append(
            "server.tls.mode is insecure: the federation port is plaintext and unauthenticated, so anyone who "
            "reaches it can read the model and act as any collaborator; use it only on a trusted network "
            "(collaborators connect with --insecure)"
        )
    elif (facts := certificate_facts(files.certificate.read_bytes())) is not None and facts.not_after:
        days_left = (facts.not_after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
        certificate = {
            "file": str(files.certificate),
            "subject": facts.subject,
            "issuer": facts.issuer,
            "names": list(facts.names),
            "not_after": facts.not_after.isoformat(),
            "days_left": round(days_left, 1),
        }
        if days_left < 30:
            warnings.append(f"the server certificate {files.certificate} expires in {days_left:.0f} days")
        if not facts.names:
            warnings.append(
                f"the server certificate {files.certificate} carries no names (SANs); collaborators check the "
                "name they dial against them"
            )
    if tls.mode == TlsMode.SERVER_ONLY and not root:
        warnings.append(
            "server.tls.mode is tls (server-only): collaborators present no certificate, so they are told apart "
            "only by the names they claim; prefer mtls"
        )
    resumes = (config.storage.state_dir / "checkpoint.json").is_file()
    if resumes:
        warnings.append(
            f"the state directory {config.storage.state_dir} holds a checkpoint: serve resumes that federation "
            "and does not start from federation.initial_model; to start over, empty the state directory"
        )
    initial_model = config.federation.initial_model
    sizing = None if initial_model is None else plan_sizing(plan, initial_model)
    return {
        "ok": True,
        "federation_uuid": plan.federation_uuid,
        "aggregator_uuid": plan.aggregator_uuid,
        "collaborators": list(plan.collaborators),
        "rounds": plan.rounds_to_train,
        "task_group": config.federation.task_group or None,
        "state_dir": str(config.storage.state_dir),
        "resumes": resumes,
        "initial_model": str(initial_model) if initial_model else None,
        "sizing": None if sizing is None else sizing.to_json(),
        "listeners": listeners,
        "certificate": certificate,
        "warnings": warnings,
        "ignored": list(ignored),
    }


_SERVES = {
    "federation": "OpenFL's aggregator service, health, reflection",
    "tier": "the ingest replicas: OpenFL's aggregator service on their collaborators' behalf, the Tier service, "
    "health, reflection",
    "ops": "gRPC health and reflection",
    "metrics": "Prometheus /metrics",
}


def _listener(
    name: str, address: str, port: int, protocol: str, tls: str | None, security: str
) -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "port": port,
        "protocol": protocol,
        "tls": tls,
        "plaintext": tls in (None, "insecure"),
        "security": security,
        "serves": _SERVES[name],
    }
