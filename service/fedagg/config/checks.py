"""Rules that span settings, checked once every setting is valid on its own."""

from __future__ import annotations

from fedagg.config.ha import ha_errors
from fedagg.config.schema import Config
from fedagg.config.topology import PARTIAL_SUM_METHODS, WHY_NOT_PARTIAL, Role
from fedagg.server.tls import TlsMode
from fedagg.settings import ConfigError


def cross_setting_errors(config: Config) -> list[ConfigError]:
    """Every rule ``config`` breaks: the plan, the shutdown budget, listeners sharing a port, the election's
    timings, the tier's."""
    errors = [error for error in (_plan_error(config), _grace_error(config)) if error is not None]
    return [*errors, *_port_clashes(config), *ha_errors(config.ha), *_tier_errors(config)]


def _plan_error(config: Config) -> ConfigError | None:
    try:
        config.plan()
    except ConfigError as error:
        return error
    return None


def _grace_error(config: Config) -> ConfigError | None:
    if config.ops.drain_seconds < config.ops.grace_seconds:
        return None
    return ConfigError(
        "ops.drain_seconds",
        config.ops.drain_seconds,
        f"less than ops.grace_seconds ({config.ops.grace_seconds})",
    )


def _port_clashes(config: Config) -> list[ConfigError]:
    """Two listeners on one port (0, any free port, never clashes)."""
    root = config.topology.role == Role.ROOT  # a root listens on its tier port instead of server.port
    ops = {"ops.port": config.ops.port, "ops.metrics_port": config.ops.metrics_port}
    ports = (
        {**ops, "topology.tier_port": config.topology.tier_port}
        if root
        else {"server.port": config.server.port, **ops}
    )
    errors: list[ConfigError] = []
    for index, (key, port) in enumerate(ports.items()):
        taken = [other for other, used in list(ports.items())[:index] if used == port and port]
        if taken:
            errors.append(
                ConfigError(key, port, f"a port other than {taken[0]}'s (two listeners cannot share it)")
            )
    return errors


def _tier_errors(config: Config) -> list[ConfigError]:
    """A tier role needs its addresses, and every task's aggregate must be exact from partial sums."""
    topology = config.topology
    if topology.role == Role.STANDALONE:
        return []
    errors: list[ConfigError] = []
    if topology.role == Role.INGEST and not topology.root_address.strip():
        errors.append(
            ConfigError("topology.root_address", topology.root_address, "host:port of the root's tier port")
        )
    if topology.role == Role.INGEST and config.server.tls.mode != TlsMode.MUTUAL:
        errors.append(
            ConfigError(
                "server.tls.mode",
                config.server.tls.mode.value,
                "mtls under topology.role ingest (the root trusts a replica to have checked each collaborator's "
                "certificate)",
            )
        )
    if topology.role == Role.INGEST and topology.tier_certificate_dir is None:
        errors.append(
            ConfigError(
                "topology.tier_certificate_dir",
                None,
                "the directory holding, in a subdirectory named after each replica, its tier client certificate "
                "(tls.crt, tls.key: CN = the replica's name) and the CA of the root's certificate (ca.crt)",
            )
        )
    if topology.role == Role.ROOT and not topology.replicas:
        errors.append(
            ConfigError(
                "topology.replicas", list(topology.replicas), "the ingest replicas' names (one at least)"
            )
        )
    role = f"topology.role {topology.role.value}"
    for name, task in config.federation.tasks.items():
        key = f"federation.tasks.{name}"
        if task.aggregation not in PARTIAL_SUM_METHODS:
            why = WHY_NOT_PARTIAL.get(
                task.aggregation, "a plug-in's aggregate cannot be shown to be exact from partial sums"
            )
            errors.append(
                ConfigError(
                    f"{key}.aggregation",
                    task.aggregation,
                    f"a method exact from partial sums under {role} ({sorted(PARTIAL_SUM_METHODS)}): "
                    f"{task.aggregation} is refused because {why}; forwarding contributions to the root "
                    "is not built yet",
                )
            )
        if task.aggregation_settings.get("max_update") is not None:
            errors.append(
                ConfigError(
                    f"{key}.aggregation_settings.max_update",
                    task.aggregation_settings["max_update"],
                    f"null under {role}: leaving out each large update at the replicas is not built yet",
                )
            )
        if task.clipping_norm is not None and task.privacy is not None:
            errors.append(
                ConfigError(
                    f"{key}.clipping_norm",
                    task.clipping_norm,
                    f"null under {role} with privacy (privacy clips to its own norm): clipping each update "
                    "twice at the replicas is not built yet",
                )
            )
    return errors
