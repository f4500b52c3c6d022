"""The physical reference: a raw gRPC client stream of 2 MiB chunks to a trivial server, in two processes.

``python -m bench.raw_stream serve [--pki DIR]`` serves ``/bench.Raw/Upload`` (client stream of raw bytes,
each message dropped on arrival; the reply is the byte count) on an ephemeral loopback port and prints
``PORT=<n>``; with ``--pki`` (a ``write_federation_pki`` directory) it requires mTLS as fedagg does.
``python -m bench.raw_stream send --port N --bytes B --streams S [--pki DIR]`` opens S channels (as
``col-0`` ... with mTLS) and sends B bytes on each at the same time, in 2 MiB messages built once; it prints
``{"bytes": total, "seconds": wall}`` as JSON. grpcio's synchronous server and client, fedagg's channel
options; no protobuf framing, no disk, no checks: what gRPC over loopback and TLS alone costs here.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

CHUNK_BYTES = 2 * 1024 * 1024
METHOD = "/bench.Raw/Upload"
OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def _identity(data: bytes) -> bytes:
    return data


def server_credentials(pki: Path) -> grpc.ServerCredentials:
    """The aggregator's certificate of a ``write_federation_pki`` directory, requiring client certificates."""
    return grpc.ssl_server_credentials(
        [((pki / "aggregator" / "tls.key").read_bytes(), (pki / "aggregator" / "tls.crt").read_bytes())],
        root_certificates=(pki / "aggregator" / "ca.crt").read_bytes(),
        require_client_auth=True,
    )


def serve(pki: Path | None) -> None:
    def upload(chunks: Iterator[bytes], _context: grpc.ServicerContext) -> bytes:
        total = 0
        for chunk in chunks:
            total += len(chunk)
        return str(total).encode()

    handler = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(
                upload, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    if pki is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(pki))
    server.start()
    print(f"PORT={port}", flush=True)
    server.wait_for_termination()


def send(port: int, total: int, streams: int, pki: Path | None) -> dict[str, float]:
    chunk = b"\x01" * CHUNK_BYTES
    count = max(1, total // CHUNK_BYTES)

    def channel(index: int) -> grpc.Channel:
        if pki is None:
            return grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        directory = pki / "collaborators" / f"col-{index}"
        credentials = grpc.ssl_channel_credentials(
            (directory / "ca.crt").read_bytes(),
            (directory / "tls.key").read_bytes(),
            (directory / "tls.crt").read_bytes(),
        )
        return grpc.secure_channel(f"localhost:{port}", credentials, options=OPTIONS)

    channels = [channel(index) for index in range(streams)]
    calls = [
        c.stream_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        for c in channels
    ]
    for call in calls:  # connect (and handshake) before timing
        call(iter([b"x"]))
    barrier = threading.Barrier(streams + 1)
    received: list[int] = []

    def run(index: int) -> None:
        barrier.wait()
        received.append(int(calls[index](chunk for _ in range(count))))

    threads = [threading.Thread(target=run, args=(index,)) for index in range(streams)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for c in channels:
        c.close()
    return {"bytes": float(sum(received)), "seconds": seconds}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("serve", "send"))
    parser.add_argument("--pki", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.pki)
    else:
        print(json.dumps(send(args.port, args.bytes, args.streams, args.pki)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
