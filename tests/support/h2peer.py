"""A hostile gRPC peer on raw HTTP/2 (the ``h2`` library): it never opens its flow-control window, holds streams
open, and sends exactly the bytes a test chooses. It answers pings and settings (so keepalive cannot tell it from an
honest client) and reads nothing else.

One thread (the peer's reader) owns the socket: a TLS connection must not be read and written from two threads at
once. The test's thread changes the HTTP/2 state under the lock and wakes the reader, which sends what is due.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from fedagg.collaborator import ClientTls


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message (uncompressed)."""
    return struct.pack(">BI", 0, len(message)) + message


class H2Peer:
    """One HTTP/2 connection to ``host:port``, over mTLS when ``tls`` is given. Use as a context manager."""

    def __init__(self, host: str, port: int, tls: ClientTls | None, *, window: int = 0) -> None:
        raw = socket.create_connection((host, port), timeout=10)
        if tls is not None:
            context = ssl.create_default_context(cafile=str(tls.root_certificate))
            if tls.certificate is not None and tls.private_key is not None:
                context.load_cert_chain(str(tls.certificate), str(tls.private_key))
            context.set_alpn_protocols(["h2"])
            raw = context.wrap_socket(raw, server_hostname="localhost")
        raw.settimeout(None)
        self._socket = raw
        """Used by the reader thread only (after the connection preface)."""
        self._wakeup, self._waker = socket.socketpair()
        self._lock = threading.Lock()
        """Guards ``_connection``, ``events`` and ``ended`` (the test thread and the reader thread share them)."""
        self._connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self._connection.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self._connection.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.ended: set[int] = set()
        """Streams the server ended (trailers or reset)."""
        self.changed = threading.Condition(self._lock)
        """Notified whenever the server sent something (a window update, a status, a reset)."""
        self._flush()
        self._reader = threading.Thread(target=self._read, name="h2peer-reader", daemon=True)
        self._reader.start()

    def __enter__(self) -> H2Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=10)
        self._socket.close()
        self._wakeup.close()
        self._waker.close()

    def _flush(self) -> None:
        """Send what the HTTP/2 state has due (before the reader starts, and from the reader only)."""
        with self._lock:
            data = self._connection.data_to_send()
        if data:
            self._socket.sendall(data)

    def _wake(self) -> None:
        """Have the reader send what is due."""
        self._waker.send(b"!")

    def _read(self) -> None:
        while True:
            pending = getattr(self._socket, "pending", lambda: 0)()
            readable = [self._socket] if pending else select.select([self._socket, self._wakeup], [], [])[0]
            if self._wakeup in readable:
                self._wakeup.recv(4096)
            try:
                if self._socket in readable:
                    data = self._socket.recv(65536)
                    if not data:
                        return
                    self._receive(data)
                self._flush()  # what the test asked for, ping and settings acknowledgements; never a window update
            except (OSError, h2.exceptions.ProtocolError):
                return

    def _receive(self, data: bytes) -> None:
        with self._lock:
            events = self._connection.receive_data(data)
            self.events.extend(events)
            for event in events:
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.ended.add(event.stream_id)
            self.changed.notify_all()

    def open_call(self, method: str, messages: Iterable[bytes] = (), *, end: bool = True) -> int:
        """Start a call of ``/openfl.aggregator.Aggregator/<method>``, send ``messages``; return its stream id."""
        with self._lock:
            stream = self._connection.get_next_available_stream_id()
            self._connection.send_headers(
                stream,
                [
                    (":method", "POST"),
                    (":scheme", "https"),
                    (":path", f"/openfl.aggregator.Aggregator/{method}"),
                    (":authority", "localhost"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ],
            )
        self._wake()
        for message in messages:
            self.send(stream, message)
        if end:
            self.end(stream)
        return stream

    def send(self, stream: int, message: bytes) -> None:
        """Send one gRPC message on ``stream`` (waits for the server's window as a real client would)."""
        frame = grpc_frame(message)
        while frame:
            with self._lock:
                room = min(
                    self._connection.local_flow_control_window(stream),
                    self._connection.max_outbound_frame_size,
                )
                if room > 0:
                    self._connection.send_data(stream, frame[:room])
                    frame = frame[room:]
                    self._wake()
                    continue
                if not self.changed.wait(timeout=30):
                    raise TimeoutError(f"the server opened no window on stream {stream} for 30 s")

    def end(self, stream: int) -> None:
        """Half-close ``stream`` (the request is complete)."""
        with self._lock:
            self._connection.end_stream(stream)
        self._wake()

    def status(self, stream: int) -> str | None:
        """The ``grpc-status`` the server ended ``stream`` with (None: not ended with a status)."""
        with self._lock:
            for event in self.events:
                headers = (
                    getattr(event, "headers", None) if getattr(event, "stream_id", None) == stream else None
                )
                for name, value in headers or ():
                    if name in (b"grpc-status", "grpc-status"):
                        return value.decode() if isinstance(value, bytes) else str(value)
        return None

    def wait_ended(self, stream: int, timeout: float) -> bool:
        """Whether the server ended ``stream`` (status or reset) within ``timeout`` seconds."""
        with self._lock:
            return self.changed.wait_for(lambda: stream in self.ended, timeout)
