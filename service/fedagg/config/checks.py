"""Rules that span settings, checked once every setting is valid on its own."""

from __future__ import annotations

from fedagg.config.ha import ha_errors
from fedagg.config.schema import Config
from fedagg.settings import ConfigError


def cross_setting_errors(config: Config) -> list[ConfigError]:
    """Every rule ``config`` breaks: the plan, the shutdown budget, listeners sharing a port, the election's
    timings."""
    errors = [error for error in (_plan_error(config), _grace_error(config)) if error is not None]
    return [*errors, *_port_clashes(config), *ha_errors(config.ha)]


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
    ports = {
        "server.port": config.server.port,
        "ops.port": config.ops.port,
        "ops.metrics_port": config.ops.metrics_port,
    }
    errors: list[ConfigError] = []
    for index, (key, port) in enumerate(ports.items()):
        taken = [other for other, used in list(ports.items())[:index] if used == port and port]
        if taken:
            errors.append(
                ConfigError(key, port, f"a port other than {taken[0]}'s (two listeners cannot share it)")
            )
    return errors
