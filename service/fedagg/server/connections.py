"""File descriptors for connections: the process's open-file limit, raised at start, and the connection cap under it.

Every connection to the federation port is a file descriptor, from the moment it is accepted (a TLS handshake that
never completes holds one for ``connection_limits.handshake_seconds``). Under the usual soft limit of 1024 open
files, a thousand idle connections would leave none for the spool, the state directory and the ops port. So at
start the soft limit is raised to the hard limit (and logged), and the connection cap is lowered, with a warning,
until ``reserved_fds`` descriptors stay free for everything else at the cap.
"""

from __future__ import annotations

import logging
import resource

from fedagg.server.options import ConnectionLimits

log = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, error)
            return soft
        log.info(
            "open-file limit raised from %d to %d (connections and the state directory share it)", soft, hard
        )
        return hard
    return soft if soft != resource.RLIM_INFINITY else hard


def connection_cap(limits: ConnectionLimits) -> int:
    """The number of connections the federation port accepts: the configured cap, or less if fds are short."""
    available = raise_open_file_limit() - limits.reserved_fds
    if available < limits.max_connections:
        cap = max(available, 1)
        log.warning(
            "server.connection_limits.max_connections lowered from %d to %d: the open-file limit leaves only "
            "that many after reserved_fds (%d); raise the limit (ulimit -n, or the container runtime's) for more",
            limits.max_connections,
            cap,
            limits.reserved_fds,
        )
        return cap
    return limits.max_connections
