"""Run the reference gateway on a loopback port inside a test (or a demo)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from maaskit.app import AppService
from maaskit.settings import Settings

__all__ = ["free_port", "running_gateway"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings | None = None, *, app_service: AppService | None = None, port: int | None = None
) -> AsyncIterator[str]:
    """Serve :func:`maaskit.gateway.create_gateway` with uvicorn on 127.0.0.1; yields its base URL.

    The server runs as a task of the current event loop and is stopped (its lifespan closing the
    maaskit app) when the block exits. Needs the ``server`` extra.
    """
    import uvicorn

    from maaskit.gateway import create_gateway

    port = port or free_port()
    config = uvicorn.Config(
        create_gateway(settings, app_service=app_service),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(400):  # bounded wait for start-up (10 s)
            if server.started or task.done():
                break
            await asyncio.sleep(0.025)
        if not server.started:
            if task.done():
                task.result()
            raise RuntimeError("the gateway did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
