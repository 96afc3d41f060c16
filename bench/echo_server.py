"""A bare grpc.aio echo server: the ceiling that Tally's figures are compared with.

Run as a subprocess: `python bench/echo_server.py --loop uvloop`. It binds a free
127.0.0.1 port and prints one JSON line `{"port": N}` on stdout. `/bench.Echo/Echo`
returns the request bytes unchanged (identity serializers: no protobuf work at all)
and counts the calls it answered; `/bench.Echo/Served` returns that count as ASCII
digits so the bench can read it between runs. On SIGTERM or SIGINT it prints
`{"served": N}` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

SERVICE = "bench.Echo"
ECHO_METHOD = f"/{SERVICE}/Echo"
SERVED_METHOD = f"/{SERVICE}/Served"


class Counter:
    def __init__(self) -> None:
        self.served = 0

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.served += 1
        return request

    async def report(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(self.served).encode()


def handler(counter: Counter) -> grpc.GenericRpcHandler:
    # No request_deserializer / response_serializer: the handlers see and return raw bytes.
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(counter.echo),
            "Served": grpc.unary_unary_rpc_method_handler(counter.report),
        },
    )


def _emit(payload: dict[str, int]) -> None:
    print(json.dumps(payload), flush=True)


async def serve() -> None:
    counter = Counter()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(counter),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _emit({"port": port})
    await stop.wait()
    await server.stop(grace=1)
    _emit({"served": counter.served})


def run(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    if loop_name == "uvloop":
        import uvloop

        runner = uvloop.run
    runner(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    run(serve(), parser.parse_args().loop)


if __name__ == "__main__":
    main()
