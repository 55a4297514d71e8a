"""A loopback HTTP proxy in front of a real server that fails on purpose, for the client's tests.

    with FaultProxy(server_url) as proxy:
        proxy.inject(Fault("status", 503, times=2))      # the next 2 requests get a 503
        proxy.inject(Fault("drop_after_forward", path="/jobs", method="POST"))
        Client(proxy.url).embed(...)

Each request takes the first injected fault that matches its method and path, if any, and uses
it up; the others go to the server untouched. Kinds: `status` (answer `status`, with `Retry-After`
if given, and forward nothing), `drop` (close the connection without an answer, forward nothing),
`drop_after_forward` (forward, then close without the server's answer: the work is done, the
client never hears of it), `stall` (hold the request, answer nothing, until `release()` or the
proxy stops).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import httpx

FaultKind = Literal["status", "drop", "drop_after_forward", "stall"]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Fault:
    kind: FaultKind
    status: int = 503
    retry_after: str | None = None
    path: str = ""
    """A prefix of the paths it applies to; every path by default."""
    method: str | None = None
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return path.startswith(self.path) and self.method in (None, method)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    fault: FaultKind | None


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=upstream, timeout=120)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults += faults

    def release(self) -> None:
        self.released.set()

    def requests_to(self, method: str, path: str) -> list[Seen]:
        return [seen for seen in self.seen if (seen.method, seen.path) == (method, path)]

    def take(self, method: str, path: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            self.seen.append(Seen(method, path, headers, fault.kind if fault else None))
        return fault

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        return self._http.request(method, path, headers=sent, content=body)


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle_one(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = dict(self.headers.items())
            fault = proxy.take(self.command, self.path, headers)
            kind = fault.kind if fault else None
            if fault is not None and kind == "status":
                return self.answer(fault.status, {"Retry-After": fault.retry_after}, b"")
            if kind == "stall":
                proxy.released.wait(120)
            if kind in ("drop", "stall"):
                return self.drop()
            response = proxy.forward(self.command, self.path, headers, body)
            if kind == "drop_after_forward":
                return self.drop()
            kept = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
            self.answer(response.status_code, kept, response.content)

        def answer(self, status: int, headers: dict[str, str | None], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if value is not None and name.lower() != "content-encoding":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def drop(self) -> None:
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = handle_one

    return Handler
