"""Logging: human-readable lines by default, JSON lines on request, never a key or certificate body.

Request handlers put the collaborator, round and task of what they are doing into context variables
(:func:`log_context`); every record logged in that context carries them.
"""

from __future__ import annotations

import contextvars
import datetime
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

_COLLABORATOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("collaborator", default=None)
_ROUND: contextvars.ContextVar[int | None] = contextvars.ContextVar("round", default=None)
_TASK: contextvars.ContextVar[str | None] = contextvars.ContextVar("task", default=None)
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
REDACTED = "[redacted PEM block]"
T = TypeVar("T")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


def set_log_context(
    collaborator: str | None = None, round_number: int | None = None, task: str | None = None
) -> None:
    """Attach fields to every record logged from now on in the current context (an RPC handler's task)."""
    if collaborator is not None:
        _COLLABORATOR.set(collaborator)
    if round_number is not None:
        _ROUND.set(round_number)
    if task is not None:
        _TASK.set(task)


def in_current_context(function: Callable[..., T], *args: Any) -> Callable[[], T]:
    """``function(*args)`` bound to a copy of the current context, for running it in an executor thread."""
    context = contextvars.copy_context()
    return lambda: context.run(function, *args)


def redact(text: str) -> str:
    """Replace PEM blocks (certificates, keys) with a marker."""
    return _PEM.sub(REDACTED, text) if "-----BEGIN" in text else text


class ContextFilter(logging.Filter):
    """Adds the context fields to records and scrubs PEM blocks from messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = {"collaborator": _COLLABORATOR.get(), "round": _ROUND.get(), "task": _TASK.get()}
        record.__dict__.update(fields)
        parts = [f"{name}={value}" for name, value in fields.items() if value is not None]
        record.__dict__["context"] = f" [{' '.join(parts)}]" if parts else ""
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, collaborator, round, task (and error)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "collaborator": getattr(record, "collaborator", None),
            "round": getattr(record, "round", None),
            "task": getattr(record, "task", None),
        }
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


NATIVE_LOGGER = "grpc.core"
HANDSHAKE_FAILED = "Handshake failed"
_native_reader: subprocess.Popen[bytes] | None = None
_native_routed = threading.Event()  # routed at most once per process
_NATIVE_LEVELS = {
    "D": logging.DEBUG,
    "I": logging.INFO,
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}


def route_native_stderr(level: str) -> None:
    """Make every line that native code (grpc-core) writes to file descriptor 2 a JSON record of ``grpc.core``.

    grpc-core prints its own lines (``E1202 01:12:35.39 32489 add_port.cc:83] ...``) straight to the process's
    standard error, which would break a JSON log stream. Descriptor 2 becomes a pipe read by a separate process
    (``python -m fedagg.logs``) that writes the records to the original standard error: it outlives this process,
    so the line native code writes just before it aborts still gets out (a thread of this process would die with
    it, the line unread). It reads until every writer is gone, in a session of its own (a Ctrl-C on the terminal
    is meant for this process). Python's own ``sys.stderr`` keeps the original destination.
    """
    original = os.dup(2)
    reader, writer = os.pipe()
    global _native_reader  # noqa: PLW0603 - one per process, kept so that it is never collected
    _native_reader = subprocess.Popen(
        [sys.executable, "-m", "fedagg.logs", level],
        stdin=reader,
        stdout=original,
        stderr=original,
        start_new_session=True,
    )
    os.close(reader)
    os.dup2(writer, 2)
    os.close(writer)
    sys.stderr = open(original, "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115


def native_logger(level: str) -> logging.Logger:
    """The ``grpc.core`` logger of the reader process: JSON lines on its standard output."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    native = logging.getLogger(NATIVE_LOGGER)
    native.handlers[:] = [handler]
    native.setLevel(level.upper())
    return native


def forward_native_lines(lines: Iterable[str], native: logging.Logger) -> None:
    """Log each native line (``E1202 ...``) to ``native`` (see :func:`_native_level`), each as soon as it arrives."""
    for line in lines:
        text = line.rstrip()
        if text:
            native.log(_native_level(text), "%s", text)
            for handler in native.handlers:
                handler.flush()


def _native_level(text: str) -> int:
    """The level of a native line: its first letter's, but at least WARNING for a failed TLS handshake (grpc-core
    says INFO; it is the only trace of a refused client certificate, and operators run at ``warning``)."""
    level = _NATIVE_LEVELS.get(text[0], logging.ERROR)
    return max(level, logging.WARNING) if HANDSHAKE_FAILED in text else level


def configure_logging(level: str, json_lines: bool) -> None:
    """Set up the root logger for the process (in JSON mode, native lines on stderr become records too)."""
    if json_lines and not _native_routed.is_set():
        _native_routed.set()
        route_native_stderr(level)
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


if __name__ == "__main__":  # the reader of route_native_stderr's pipe
    forward_native_lines(
        io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"), native_logger(sys.argv[1])
    )
