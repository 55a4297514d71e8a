"""Serve an ASGI app with real uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp
from waiting import eventually


@contextmanager
def serve(app: ASGIApp, startup_timeout: float = 120.0) -> Iterator[str]:
    """Yield the base URL while uvicorn serves `app`; on exit, shut down as on SIGTERM."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, loop="asyncio", http="h11", ws="none", lifespan="on",
        log_level="warning", access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()

    def has_started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start; see the captured log")
        return server.started

    eventually(has_started, startup_timeout, what="uvicorn to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
