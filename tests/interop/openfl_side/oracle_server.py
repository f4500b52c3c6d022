"""OpenFL's aggregator gRPC server, bound to the oracle's ``--host`` and reporting the port it bound."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import cpu_count
from pathlib import Path
from typing import Any

import grpc
from openfl.component.aggregator.aggregator import Aggregator
from openfl.protocols import aggregator_pb2_grpc
from openfl.transport.grpc.aggregator_server import AggregatorGRPCServer
from openfl_versions import LEGACY, channel_options  # a sibling module


class LoopbackAggregatorServer(AggregatorGRPCServer):
    """OpenFL's server, bound to ``host`` and reporting the bound port (``--port 0`` = ephemeral).

    With 1.7.1, ``get_server`` repeats OpenFL's own (executor, channel options, servicer, credentials) and
    OpenFL's ``serve()`` calls it; it only changes the bind address and keeps the port that ``add_*_port``
    returns. 1.8/1.9 build the server inside ``serve()`` (``transport.grpc.common.create_grpc_server``), so
    ``serve()`` is repeated here, with the same executor, options and dynamic TLS credentials.
    """

    def __init__(self, aggregator: Aggregator, agg_port: int, host: str, **kwargs: Any) -> None:
        super().__init__(aggregator, agg_port, **kwargs)
        self.uri = f"{host}:{agg_port}"
        self.bound_port: int | None = None

    def _bound(self, port: int) -> None:
        if port == 0:
            raise RuntimeError(f"could not bind {self.uri}")
        self.bound_port = port
        # The socket is bound and listening from here on; the server is started right after.
        print(f"PORT={port}", flush=True)

    def get_server(self) -> grpc.Server:
        """OpenFL 1.7.1's ``get_server``, on ``self.uri``."""
        self.server = grpc.server(ThreadPoolExecutor(max_workers=cpu_count()), options=channel_options)
        aggregator_pb2_grpc.add_AggregatorServicer_to_server(self, self.server)
        if not self.use_tls:
            self.logger.warning("gRPC is running on insecure channel with TLS disabled.")
            port = self.server.add_insecure_port(self.uri)
        else:
            self.server_credentials = grpc.ssl_server_credentials(
                ((Path(self.private_key).read_bytes(), Path(self.certificate).read_bytes()),),
                root_certificates=Path(self.root_certificate).read_bytes(),
                require_client_auth=self.require_client_auth,
            )
            port = self.server.add_secure_port(self.uri, self.server_credentials)
        self._bound(port)
        return self.server

    def serve(self) -> None:
        if LEGACY:
            super().serve()
            return
        # OpenFL 1.8/1.9's serve() and create_grpc_server(), on self.uri, without Flower interop.
        server = grpc.server(ThreadPoolExecutor(max_workers=8), options=channel_options)
        if not self.use_tls:
            port = server.add_insecure_port(self.uri)
        else:
            pair = ((Path(self.private_key).read_bytes(), Path(self.certificate).read_bytes()),)
            root = Path(self.root_certificate).read_bytes()
            config = grpc.ssl_server_certificate_configuration(pair, root_certificates=root)
            credentials = grpc.dynamic_ssl_server_credentials(
                config,
                lambda: grpc.ssl_server_certificate_configuration(pair, root_certificates=root),
                require_client_authentication=self.require_client_auth,
            )
            port = server.add_secure_port(self.uri, credentials)
        aggregator_pb2_grpc.add_AggregatorServicer_to_server(self, server)
        self._bound(port)
        server.start()
        while not self.aggregator.all_quit_jobs_sent():
            time.sleep(0.2)
        server.stop(0)
