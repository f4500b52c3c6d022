"""Starting the disk write of a file's bytes while it is still being written, so its fsync has little left to wait
for.

An upload is acknowledged only once its spool file is fsynced. Left to the kernel, an upload's pages stay dirty in
the page cache until that fsync, which then writes the whole upload while the collaborator waits; when several
uploads end together, their fsyncs queue behind each other on the disk. On the benchmark's virtual machine (a
disk of about 480 MB/s) four 191 MiB uploads ending at once left both cores idle for most of a second, and a
writer that outruns the kernel's dirty limits is made to write pages back itself, on its own CPU.

:class:`Writeback` asks the kernel (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux) to start writing each
stretch of :data:`WRITEBACK_BYTES` as soon as it is written: the disk works while the rest of the upload is still
on the wire, and the fsync waits only for the tail. It starts the write and waits for nothing (durability is still
the fsync's). Where the call is missing or refused (another C library or kernel), nothing is started and the
fsync does all the work, as before.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable
from typing import BinaryIO

from fedagg.glibc import glibc_function

log = logging.getLogger(__name__)

WRITEBACK_BYTES = 8 << 20
"""How many written bytes wait before their write to the disk is started."""
SYNC_FILE_RANGE_WRITE = 2
"""Start writing the range's dirty pages that are not being written already (``<fcntl.h>``)."""


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    function = glibc_function("sync_file_range")
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


class Writeback:
    """Where one file's started writes have got to. Single owner: the writer of that file."""

    def __init__(self) -> None:
        self._started = 0

    def written(self, file: BinaryIO, end: int) -> None:
        """``file``'s bytes up to ``end`` are written: once the stretch not yet started is :data:`WRITEBACK_BYTES`
        long, flush it to the page cache and start its write to the disk."""
        if end - self._started < WRITEBACK_BYTES:
            return
        start_write = _sync_file_range()
        if start_write is not None:
            file.flush()
            if start_write(file.fileno(), self._started, end - self._started, SYNC_FILE_RANGE_WRITE) != 0:
                log.debug("sync_file_range refused: the fsync writes everything")
        self._started = end
