"""A hard time limit for the OpenFL-side scripts (OpenFL's client retries forever on most errors)."""

from __future__ import annotations

import logging
import os
import threading


def start_watchdog(seconds: float, what: str, logger: logging.Logger) -> None:
    """Exit the process with status 3 after ``seconds`` (0 or less: never)."""
    if seconds <= 0:
        return

    def expire() -> None:
        logger.error("%s: timed out after %s s", what, seconds)
        logging.shutdown()
        os._exit(3)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
