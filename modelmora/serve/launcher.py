"""Starting worker processes, and the server's end of their sockets.

A `Launcher` forks workers from the template process (Linux: torch is imported once, there) or
spawns them afresh. A `Worker` is one such process with a reader task that routes its replies to
the `Call` they answer, by request id. Policy (when to start, end or restart a worker) lives in
`modelmora.serve.supervisor`; the other end of every socket lives in `modelmora.serve.worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from modelmora.errors import ServeError, UnavailableError
from modelmora.serve.config import WorkerStart
from modelmora.serve.protocol import (
    HEADER,
    CallReply,
    FromTemplate,
    LoadReply,
    PongMessage,
    TemplateReadyMessage,
    ToWorker,
    decode_from_worker,
    encode,
    error_message,
    pack,
    raise_for_error,
    unpack_from_template,
)

logger = logging.getLogger("modelmora.supervisor")


class WorkerProcess(Protocol):
    pid: int

    def signal(self, signum: int) -> None: ...

    async def wait(self) -> int | None:
        """The exit code (negative: killed by that signal), or None when it cannot be known."""
        ...


class ForkedProcess:
    """A worker forked by the template, which reaps it and reports its exit status to us."""

    def __init__(self, pid: int, exit_status: asyncio.Future[int | None]) -> None:
        self.pid = pid
        self.exit_status = exit_status

    def signal(self, signum: int) -> None:
        # Once the template has reaped it, the pid may belong to someone else.
        if not self.exit_status.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def wait(self) -> int | None:
        return await asyncio.shield(self.exit_status)


class SpawnedProcess:
    """A worker started as `python -m modelmora.serve.worker worker FD PID`, our own child."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def wait(self) -> int | None:
        return await self.process.wait()


class TemplateProcess:
    """The server's end of the template process (its loop: `modelmora.serve.worker.ForkServer`)."""

    def __init__(self, imports: Sequence[str]) -> None:
        self.imports = list(imports)
        self.process: asyncio.subprocess.Process | None = None
        self.control: socket.socket | None = None
        self.reader: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[TemplateReadyMessage] | None = None
        self.forks: dict[int, asyncio.Future[int]] = {}
        self.exits: dict[int, asyncio.Future[int | None]] = {}
        self.tokens = itertools.count(1)
        self.is_closed = False

    @property
    def is_alive(self) -> bool:
        return self.reader is not None and not self.is_closed

    async def start(self) -> TemplateReadyMessage:
        """Start the process and wait until its imports are done; returns its ready message."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.control, self.ready = ours, loop.create_future()
        with theirs:
            self.process = await start_python("template", theirs, template_environment())
        ours.setblocking(False)
        ours.send(pack({"kind": "prepare", "sys_path": sys.path, "imports": self.imports}))
        self.reader = asyncio.create_task(self.read(), name="modelmora-template")
        ready = await self.ready
        logger.info("worker template ready: imports took %.0f ms", ready["import_ms"])
        return ready

    async def fork(self, sock: socket.socket) -> ForkedProcess:
        """Have the template fork a worker that talks over `sock`."""
        assert self.control is not None
        if self.is_closed:
            raise UnavailableError("the worker template process ended", retry_after=1)
        token = next(self.tokens)
        self.forks[token] = asyncio.get_running_loop().create_future()
        try:
            data = pack({"kind": "fork", "token": token})
            await send_with_fd(self.control, data, sock.fileno())
            pid = await self.forks[token]
        finally:
            # Abandoned (cancelled), the worker still gets forked: it exits when its socket closes.
            self.forks.pop(token, None)
        return ForkedProcess(pid, self.exits[pid])

    async def read(self) -> None:
        assert self.control is not None and self.ready is not None
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self.control, 1 << 16):
                self.route(unpack_from_template(data))
        except OSError:
            pass
        finally:
            self.is_closed = True
            self.control.close()
            self.forget_everything()
        if self.process is not None:  # it ended without being asked to: reap it
            await end_process(self.process, timeout=1.0)

    def route(self, message: FromTemplate) -> None:
        assert self.ready is not None
        if message["kind"] == "ready":
            self.ready.set_result(message)
        elif message["kind"] == "forked":
            self.exits[message["pid"]] = asyncio.get_running_loop().create_future()
            waiting = self.forks.get(message["token"])
            if waiting is not None and not waiting.done():
                waiting.set_result(message["pid"])
        elif message["kind"] == "exited" and message["pid"] in self.exits:
            settle(self.exits.pop(message["pid"]), message["returncode"])

    def forget_everything(self) -> None:
        """The template is gone: so are its workers (PR_SET_PDEATHSIG), their statuses unknown."""
        gone = UnavailableError("the worker template process ended")
        for future in [self.ready, *self.forks.values()]:
            if future is not None and not future.done():
                future.set_exception(gone)
                future.exception()  # nobody may be waiting; do not warn about it
        for exit_status in self.exits.values():
            settle(exit_status, None)
        self.forks.clear()
        self.exits.clear()

    async def stop(self, timeout: float) -> None:
        """Closing the socket tells the template to kill what is left and exit."""
        if self.reader is not None and not self.is_closed:
            self.reader.cancel()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)
        if self.control is not None:
            self.control.close()
        if self.process is not None:
            await end_process(self.process, timeout)


class Worker:
    """One worker process and the supervisor's end of its socket."""

    def __init__(
        self,
        name: str,
        process: WorkerProcess,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        self.writer = writer
        self.ready: asyncio.Future[LoadReply] = asyncio.get_running_loop().create_future()
        self.is_serving = False
        self.device: str | None = None
        self.memory_bytes: int | None = None
        self.ending: str | None = None
        """Why the supervisor is ending it (unload, idle, evict, shutdown, unresponsive)."""
        self.is_closed = False
        self.is_pinging = False
        self.done = asyncio.Event()
        """Set once its exit has been handled."""
        self.calls: dict[int, asyncio.Queue[CallReply]] = {}
        self.ids = itertools.count(1)
        self.reading = asyncio.create_task(self.read(reader), name=f"modelmora-worker-{name}")

    async def read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                self.route(decode_from_worker(await reader.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the process ended, or we ended it
        finally:
            self.is_closed = True
            self.writer.close()

    def route(self, message: LoadReply | CallReply) -> None:
        if message["kind"] == "ready" or message["kind"] == "load_failed":
            self.note_load_reply(message)
        elif (replies := self.calls.get(message["id"])) is not None:
            replies.put_nowait(message)

    def note_load_reply(self, message: LoadReply) -> None:
        if self.ready.done():
            return
        if message["kind"] == "ready":
            self.is_serving, self.device = True, message["device"]
            self.memory_bytes = message["memory_bytes"]
        self.ready.set_result(message)

    def send(self, message: ToWorker) -> None:
        if self.is_closed:
            raise UnavailableError(f"worker for '{self.name}' has ended", retry_after=1)
        self.writer.write(encode(message))

    def call(self, request: dict[str, Any], stream: bool) -> Call:
        call_id = next(self.ids)
        replies: asyncio.Queue[CallReply] = asyncio.Queue()
        self.send(
            {"kind": "infer", "batch": [{"id": call_id, "request": request, "stream": stream}]}
        )
        self.calls[call_id] = replies
        return Call(self, call_id, replies)

    async def ping(self, timeout: float) -> PongMessage:
        call_id = next(self.ids)
        replies: asyncio.Queue[CallReply] = asyncio.Queue()
        self.calls[call_id] = replies
        self.is_pinging = True
        try:
            self.send({"kind": "ping", "id": call_id})
            reply = await asyncio.wait_for(replies.get(), timeout)
        finally:
            self.calls.pop(call_id, None)
            self.is_pinging = False
        raise_for_error(reply, self.name)
        if reply["kind"] != "pong":
            raise ServeError(f"worker for '{self.name}' answered a ping with {reply['kind']}")
        return reply

    def fail_calls(self, error: UnavailableError) -> None:
        """Every call in flight gets `error` as its answer: the worker has gone."""
        for call_id, replies in self.calls.items():
            replies.put_nowait(error_message(call_id, error))
        self.calls.clear()

    def fail_loading(self, error: ServeError) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # the load may have been abandoned: do not log it as unseen


class Call:
    """One request on a worker: its replies in order, and a cancel if we stop listening early."""

    def __init__(self, worker: Worker, call_id: int, replies: asyncio.Queue[CallReply]) -> None:
        self.worker, self.call_id, self.replies = worker, call_id, replies
        self.is_finished = False

    async def reply(self) -> CallReply:
        """The next reply; raises the error it carries."""
        message = await self.replies.get()
        if message["kind"] in ("result", "end", "error"):
            self.is_finished = True
        raise_for_error(message, self.worker.name)
        return message

    def close(self) -> None:
        self.worker.calls.pop(self.call_id, None)
        if not self.is_finished and not self.worker.is_closed:
            self.worker.send({"kind": "cancel", "id": self.call_id})


class Launcher:
    """Starts worker processes, forked from the template or spawned, each with its own socket."""

    def __init__(self, start: WorkerStart, template_imports: Sequence[str], stop_timeout: float):
        self.fork = start == "fork" or (start == "auto" and sys.platform.startswith("linux"))
        self.template_imports = template_imports
        self.stop_timeout = stop_timeout
        self.template: TemplateProcess | None = None
        self.template_start: asyncio.Task[TemplateReadyMessage] | None = None
        self.retired: list[TemplateProcess] = []

    def start_template(self) -> None:
        """Start the template in the background, once, and again if it has died."""
        if not self.fork or (self.template_start is not None and not self.has_lost_template()):
            return
        if self.template is not None:
            self.retired.append(self.template)
        self.template = TemplateProcess(self.template_imports)
        self.template_start = asyncio.create_task(self.template.start(), name="modelmora-template")

    def is_warming_up(self) -> bool:
        """The template is still importing: a cold model would pay those seconds now."""
        return self.template_start is not None and not self.template_start.done()

    def has_lost_template(self) -> bool:
        started = self.template_start
        return started is not None and started.done() and not self.template_is_alive()

    def template_is_alive(self) -> bool:
        return self.template is not None and self.template.is_alive

    async def start(self, name: str, device: str) -> Worker:
        """A new worker process for model `name`, connected, not yet told what to load."""
        ours, theirs = socket.socketpair()
        try:
            with theirs:
                process = await self.start_process(device, theirs)
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()  # a worker already started sees end-of-file and exits
            raise
        return Worker(name, process, reader, writer)

    async def start_process(self, device: str, sock: socket.socket) -> WorkerProcess:
        if self.fork:
            self.start_template()
            assert self.template is not None and self.template_start is not None
            ready = await asyncio.shield(self.template_start)
            # A plugin import that opened CUDA in the template makes forked CUDA workers fail.
            if not (ready["cuda_initialized"] and device != "cpu"):
                return await self.template.fork(sock)
        return SpawnedProcess(await start_python("worker", sock, os.environ.copy()))

    async def stop(self) -> None:
        if self.template_start is not None:
            self.template_start.cancel()
            await asyncio.gather(self.template_start, return_exceptions=True)
        for template in [*self.retired, self.template]:
            if template is not None:
                await template.stop(self.stop_timeout)


def settle(future: asyncio.Future[int | None], value: int | None) -> None:
    if not future.done():
        future.set_result(value)


def template_environment() -> dict[str, str]:
    # Asking torch whether CUDA is there opens the driver unless it asks NVML: a template that
    # opened the driver would hand every forked worker a CUDA it cannot use.
    return {**os.environ, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


async def start_python(
    role: str, sock: socket.socket, env: dict[str, str]
) -> asyncio.subprocess.Process:
    """`python -m modelmora.serve.worker ROLE FD PID` in a session of its own, `sock` as FD."""
    fd = sock.fileno()
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelmora.serve.worker",
        role,
        str(fd),
        str(os.getpid()),
        pass_fds=(fd,),
        stdin=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # Ctrl+C in a terminal reaches the server only; it drains first
        env=env,
    )


async def send_with_fd(sock: socket.socket, data: bytes, fd: int) -> None:
    """sendmsg with SCM_RIGHTS on a non-blocking socket: retry while the buffer is full."""
    while True:
        try:
            socket.send_fds(sock, [data], [fd])
            return
        except BlockingIOError:
            await asyncio.sleep(0.01)


async def end_process(process: asyncio.subprocess.Process, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), timeout)
        return
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
