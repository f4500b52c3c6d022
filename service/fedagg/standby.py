"""Standby: wait, without polling, until this process alone uses the state directory (the kernel's lock)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading

from fedagg.assembly import AggregatorProcess

log = logging.getLogger(__name__)

NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


async def lock_state_directory(aggregator: AggregatorProcess, stop: asyncio.Event) -> bool:
    """Wait until this process alone uses the state directory (a standby: blocked in the kernel's lock, so it
    takes over the moment the holder exits); False when stopped first."""
    lock = aggregator.state_lock
    loop = asyncio.get_running_loop()
    if lock is None:
        return True
    try:
        if await loop.run_in_executor(None, lock.try_acquire):
            return True
    except OSError as error:
        if error.errno in NO_LOCKS:
            log.error(
                "the file system of storage.state_dir (%s) does not support flock (%s): use storage whose locks "
                "work across nodes (README, Leader election and fencing)",
                aggregator.config.storage.state_dir,
                error.strerror,
            )
        raise
    log.warning(
        "the state directory %s is in use by another fedagg process (%s); waiting for it to exit "
        "(two aggregators must not share storage.state_dir; a standby takes over when the holder exits)",
        aggregator.config.storage.state_dir,
        await loop.run_in_executor(None, lock.holder),
    )
    acquired = asyncio.Event()
    abandoned = threading.Event()

    def wait_for_lock() -> None:
        lock.acquire()
        if abandoned.is_set():  # the process stopped waiting: let go at once
            lock.release()
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone
            loop.call_soon_threadsafe(acquired.set)

    threading.Thread(target=wait_for_lock, name="fedagg-state-lock", daemon=True).start()
    waits = [asyncio.ensure_future(event.wait()) for event in (acquired, stop)]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if acquired.is_set():
        log.info("the state directory is ours now")
        return True
    abandoned.set()
    log.info("stop signal received while waiting for the state directory: exiting")
    return False
