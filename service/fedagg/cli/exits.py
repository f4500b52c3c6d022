"""Exit statuses, and turning a client error into one ``fedagg: ...`` line and its status."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from fedagg.collaborator import AggregatorError, AggregatorUnreachable, ConnectionFailed

# Exit statuses of the commands that connect to an aggregator (collaborator, status, metrics, model pull).
EXIT_OK = 0
EXIT_REFUSED = 1  # the aggregator answered with an error status
EXIT_USAGE = 2  # bad options or unreadable local files (argparse uses 2 as well)
EXIT_CONNECTION = 3  # cannot connect, and retrying cannot help (TLS, certificate names, TLS mode)
EXIT_TIMEOUT = 4  # the aggregator stayed unreachable or unavailable for --timeout seconds
EXIT_INTERRUPTED = 130


def usage_error(message: str) -> SystemExit:
    """Print ``fedagg: message`` on stderr; the exit of a usage error (status 2, like argparse's) to raise."""
    print(f"fedagg: {message}", file=sys.stderr)
    return SystemExit(EXIT_USAGE)


@contextmanager
def reported_errors(who: str = "") -> Iterator[None]:
    """Turn client errors into one ``fedagg: ...`` line on stderr and the documented exit status."""
    prefix = f"fedagg: {who}: " if who else "fedagg: "
    try:
        yield
    except ConnectionFailed as error:
        print(f"{prefix}cannot connect: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONNECTION) from None
    except AggregatorUnreachable as error:
        print(
            f"{prefix}gave up after {error.seconds:.0f}s (--timeout): {error.problem}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(EXIT_TIMEOUT) from None
    except AggregatorError as error:
        print(f"{prefix}the aggregator refused the call: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_REFUSED) from None
