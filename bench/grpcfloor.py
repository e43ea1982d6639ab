"""The floor of a kiln gRPC service, for benchmarks: a minimal server of the kind kiln's services are.

``grpc.aio`` on uvloop (as :mod:`kiln_platform.service_main` runs every service) with the same message-size
options, generic unary methods taking and returning bytes: no servicer, no authentication, no protobuf. A
benchmark starts it as a child process (:func:`run`) and calls it as kiln's clients call kiln (a channel with
``kiln.api._rpc``'s options, a deadline and the app's token as metadata; nothing checks the token), so kiln's
figure beside it shows what kiln's own work costs over what any Python gRPC service pays here.
"""

from __future__ import annotations

import pathlib
from collections.abc import Awaitable, Callable, Mapping

import grpc

from kiln_platform import grpcserver

Method = Callable[[bytes, "grpc.aio.ServicerContext[bytes, bytes]"], Awaitable[bytes]]
SERVER_OPTIONS = [("grpc.max_receive_message_length", 32 * 1024 * 1024),
                  ("grpc.max_send_message_length", 32 * 1024 * 1024), ("grpc.so_reuseport", 0)]


async def serve(ready: pathlib.Path, service: str, methods: Mapping[str, Method]) -> None:
    """Serve ``methods`` (short name -> handler) as ``/<service>/<name>`` on a free loopback port; write
    ``host:port`` to ``ready`` once listening; run until killed."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        service, {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    grpcserver.write_ready_file(ready, f"127.0.0.1:{port}")
    await server.wait_for_termination()


def run(main: Awaitable[None]) -> None:
    """Run the server's coroutine on uvloop, as kiln's services run."""
    import uvloop
    uvloop.run(main)  # type: ignore[arg-type]
