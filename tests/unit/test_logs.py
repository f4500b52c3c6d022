"""Log formatting: JSON fields, context, and PEM redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import subprocess
import sys

from fedagg.logs import (
    REDACTED,
    ContextFilter,
    JsonFormatter,
    forward_native_lines,
    in_current_context,
    redact,
    set_log_context,
)
from fedagg.pki.authority import CertificateAuthority


def capture(json_lines: bool) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(message)s%(context)s"))
    logger = logging.getLogger(f"test.logs.{json_lines}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_pem_blocks_are_redacted_from_messages_and_arguments() -> None:
    issued = CertificateAuthority().issue_client("one")
    logger, stream = capture(json_lines=False)

    logger.warning("loaded %s and %s", issued.certificate_pem.decode(), issued.private_key_pem.decode())

    output = stream.getvalue()
    assert "BEGIN" not in output
    assert output.count(REDACTED) == 2


def test_redact_leaves_ordinary_text_alone() -> None:
    assert redact("certificate CN 'one' does not match") == "certificate CN 'one' does not match"
    assert redact("x -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE----- y") == f"x {REDACTED} y"


def test_json_lines_carry_the_context_set_by_a_handler() -> None:
    logger, stream = capture(json_lines=True)

    async def handler() -> None:
        set_log_context(collaborator="one", round_number=3, task="train")
        logger.info("upload %d", 7)
        await asyncio.get_running_loop().run_in_executor(
            None, in_current_context(logger.debug, "in a thread")
        )

    asyncio.run(handler())
    logger.info("outside")

    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["message"], first["collaborator"], first["round"], first["task"]) == (
        "upload 7",
        "one",
        3,
        "train",
    )
    assert (second["level"], second["collaborator"]) == ("debug", "one")
    assert (third["collaborator"], third["round"], third["task"]) == (None, None, None)
    assert set(first) == {"time", "level", "logger", "message", "collaborator", "round", "task"}


def test_a_native_line_written_just_before_an_abort_reaches_the_json_log() -> None:
    crash = (
        "import os\n"
        "from fedagg.logs import configure_logging\n"
        "configure_logging('info', json_lines=True)\n"
        "os.write(2, b'F1207 12:00:00.000000 1 crash.cc:1] the native line before the abort\\n')\n"
        "os.abort()\n"
    )

    crashed = subprocess.run(
        [sys.executable, "-c", crash], capture_output=True, text=True, timeout=60, check=False
    )

    assert crashed.returncode == -signal.SIGABRT
    records = [json.loads(line) for line in crashed.stderr.splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("critical", "grpc.core", "F1207 12:00:00.000000 1 crash.cc:1] the native line before the abort")
    ]


def test_a_failed_tls_handshake_is_a_warning_though_grpc_core_says_info() -> None:
    logger, stream = capture(json_lines=True)
    logger.setLevel(logging.WARNING)
    lines = [
        "I1207 12:24:24.028427 1 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: "
        "error:100000c0:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE\n",
        "I1207 12:24:24.030000 1 chttp2_server.cc:1] an ordinary info line\n",
    ]

    forward_native_lines(lines, logger)

    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [record["level"] for record in records] == ["warning"]
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in records[0]["message"]
