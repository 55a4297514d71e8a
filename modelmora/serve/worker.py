"""The worker process: one model, loaded once, answering the supervisor's requests one at a time.

    server process ──spawns──► template ──forks──► worker, one per model
    (supervisor)   control socket        data socket (the supervisor's, passed through the template)

The template imports torch and transformers once and forks a worker per model load, so a worker
starts with them already in memory instead of paying seconds of imports. The template never
touches CUDA: a CUDA context does not survive a fork, so each worker opens its own after the fork.
Where fork is not available the launcher spawns `python -m modelmora.serve.worker worker ...`.

The messages on both sockets, and their framing, are declared in `modelmora.serve.protocol`.

Workers end with their parent: the kernel kills them when it exits (PR_SET_PDEATHSIG, Linux), and a
worker whose socket reaches end-of-file exits too. torch is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from modelmora.errors import ModelmoraError, ServeError, UnavailableError
from modelmora.runtimes import Runtime, resolve_runtime
from modelmora.serve.protocol import (
    EXIT_LOAD_FAILED,
    Channel,
    ErrorMessage,
    InferItem,
    TemplateReadyMessage,
    ToWorker,
    error_message,
    pack,
    unpack_to_template,
)
from modelmora.vectors import pack_result

PR_SET_PDEATHSIG = 1


# --- the worker ---------------------------------------------------------------------------------


def run_worker(sock: socket.socket) -> NoReturn:
    """Load the model the supervisor names, say so, then answer requests until told to end."""
    channel = Channel(sock)
    runtime = load_runtime(channel)
    RequestLoop(channel, runtime).run()


def load_runtime(channel: Channel) -> Runtime:
    message = channel.receive()
    if message is None or message["kind"] != "load":
        os._exit(0)
    spec = message["spec"]
    add_to_sys_path(message["sys_path"])
    timings: dict[str, float] = {}
    try:
        with timed(timings, "import_ms"):
            import_modules(message["imports"], keep_going=True)
            use_threads(spec.threads)
            runtime = resolve_runtime(spec.task, spec.runtime)()
        with timed(timings, "load_ms"):
            runtime.load(spec)
        with timed(timings, "warmup_ms"):
            runtime.warm_up()
    except Exception as error:
        channel.send({"kind": "load_failed", "message": describe_load_error(error)})
        os._exit(EXIT_LOAD_FAILED)
    memory = memory_in_use(runtime)
    channel.send(
        {
            "kind": "ready",
            "device": runtime.device,
            "memory_bytes": memory,
            "import_ms": timings["import_ms"],
            "load_ms": timings["load_ms"],
            "warmup_ms": timings["warmup_ms"],
        }
    )
    return runtime


class RequestLoop:
    """Requests run one at a time on the main thread; a reader thread answers pings meanwhile.

    The reader thread also notes cancellations (a request whose client left or whose deadline
    passed), and exits the process when the supervisor's end of the socket closes.
    """

    def __init__(self, channel: Channel, runtime: Runtime) -> None:
        self.channel = channel
        self.runtime = runtime
        self.inbox: queue.SimpleQueue[tuple[float, InferItem]] = queue.SimpleQueue()
        self.cancelled: set[int] = set()

    def run(self) -> NoReturn:
        threading.Thread(target=self.read, name="modelmora-reader", daemon=True).start()
        while True:
            received_at, item = self.inbox.get()
            self.answer(received_at, item)

    def read(self) -> None:
        try:
            while (message := self.channel.receive()) is not None:
                self.dispatch(message)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)  # no supervisor left to answer to

    def dispatch(self, message: ToWorker) -> None:
        if message["kind"] == "infer":
            received_at = time.monotonic()
            for item in message["batch"]:
                self.inbox.put((received_at, item))
        elif message["kind"] == "cancel":
            self.cancelled.add(message["id"])
        elif message["kind"] == "ping":
            memory = memory_in_use(self.runtime)
            self.channel.send({"kind": "pong", "id": message["id"], "memory_bytes": memory})

    def answer(self, received_at: float, item: InferItem) -> None:
        request_id = item["id"]
        started = time.monotonic()
        wait_ms = (started - received_at) * 1000
        try:
            if request_id in self.cancelled:
                return
            if item["stream"]:
                self.stream(request_id, item["request"])
                end_ms = since(started)
                self.channel.send(
                    {"kind": "end", "id": request_id, "wait_ms": wait_ms, "compute_ms": end_ms}
                )
            else:
                result = dict(pack_result(self.runtime.infer(item["request"])))
                self.channel.send(
                    {
                        "kind": "result",
                        "id": request_id,
                        "result": result,
                        "wait_ms": wait_ms,
                        "compute_ms": since(started),
                    }
                )
        except Exception as error:
            self.channel.send(describe_request_error(request_id, error))
        finally:
            self.cancelled.discard(request_id)

    def stream(self, request_id: int, request: dict[str, Any]) -> None:
        chunks = self.runtime.stream(request)
        try:
            for chunk in chunks:
                if request_id in self.cancelled:
                    break
                self.channel.send({"kind": "chunk", "id": request_id, "data": chunk})
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a generator's cleanup stops its work (a generation thread, say)


# --- the template -------------------------------------------------------------------------------


def run_template(control: socket.socket) -> NoReturn:
    """Import what workers need, say ready, then fork a worker for every request that comes in."""
    packet = control.recv(1 << 20)
    if not packet:
        os._exit(0)  # the server closed before asking anything: it failed to start
    prepare = unpack_to_template(packet)
    if prepare["kind"] != "prepare":
        os._exit(1)
    add_to_sys_path(prepare["sys_path"])
    started = time.monotonic()
    failed = import_modules(prepare["imports"], keep_going=True)
    ready: TemplateReadyMessage = {
        "kind": "ready",
        "import_ms": since(started),
        "failed_imports": failed,
        "cuda_initialized": is_cuda_initialized(),
    }
    try:
        control.send(pack(ready))
    except OSError:
        os._exit(0)  # the server left while we imported (it failed to start): no one to tell
    ForkServer(control).serve()


class ForkServer:
    """The template's forking loop: one socket for the supervisor's requests, one pipe for signals.

    SIGCHLD and SIGTERM only write a byte to the wake-up pipe; the loop then reaps exited workers
    (reporting each exit status, which the supervisor cannot get itself: they are not its children)
    or ends.
    """

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.stopping = False
        self.wake_read, self.wake_write = os.pipe()
        for fd in (self.wake_read, self.wake_write):
            os.set_blocking(fd, False)

    def serve(self) -> NoReturn:
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self.note_stop)
        try:
            while not self.stopping:
                self.step()
        finally:
            self.end_children()
        os._exit(0)

    def note_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def step(self) -> None:
        readable, _, _ = select.select([self.control.fileno(), self.wake_read], [], [])
        if self.wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_read, 512)
        self.reap()
        if self.control.fileno() in readable:
            self.handle_control()

    def handle_control(self) -> None:
        data, fds, _, _ = socket.recv_fds(self.control, 1 << 16, 1)
        if not data:
            self.stopping = True  # the supervisor closed the socket or died
            return
        message = unpack_to_template(data)
        if message["kind"] == "fork" and fds:
            self.fork_worker(message["token"], fds[0])

    def fork_worker(self, token: int, fd: int) -> None:
        with warnings.catch_warnings():
            # Python 3.12+ warns on fork with threads alive. torch's import starts one, which
            # sits idle: the template runs no torch work, so no lock can be held across the fork.
            warnings.filterwarnings(
                "ignore", "This process .* is multi-threaded", DeprecationWarning
            )
            pid = os.fork()
        if pid == 0:
            self.become_worker(fd)
        os.close(fd)
        self.children.add(pid)
        self.report(pack({"kind": "forked", "token": token, "pid": pid}))

    def become_worker(self, fd: int) -> NoReturn:
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            for inherited in (self.wake_read, self.wake_write):
                os.close(inherited)
            self.control.close()
            die_with_parent(self.pid)
            run_worker(socket.socket(fileno=fd))
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(1)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            returncode = os.waitstatus_to_exitcode(status)
            self.report(pack({"kind": "exited", "pid": pid, "returncode": returncode}))

    def report(self, packet: bytes) -> None:
        try:
            self.control.send(packet)
        except OSError:
            self.stopping = True  # nobody left to report to

    def end_children(self) -> None:
        """Workers the supervisor did not end itself have no one to serve: kill and reap them."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


# --- shared helpers -----------------------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL us when our parent exits (Linux), and exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)


def import_modules(names: Sequence[str], keep_going: bool = False) -> list[str]:
    """Import `names`; with keep_going, return the ones that failed instead of raising."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            if not keep_going:
                raise
            failed.append(name)
    return failed


def add_to_sys_path(paths: Sequence[str]) -> None:
    """The server's import path, so `runtime = "module:Class"` resolves here as it does there."""
    sys.path.extend(path for path in paths if path not in sys.path)


def use_threads(threads: int) -> None:
    """Cap torch's intra-op threads so that workers on one machine do not fight over cores."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def is_cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def memory_in_use(runtime: Runtime) -> int | None:
    """Accelerator memory when the model is there, else this process's unique memory (USS).

    USS, not RSS: a forked worker shares the template's pages (torch alone is hundreds of MB), and
    only its unique pages come back when it ends.
    """
    accelerator = runtime.accelerator_memory()
    if accelerator is not None:
        return accelerator
    import psutil

    try:
        return int(psutil.Process().memory_full_info().uss)
    except (psutil.AccessDenied, AttributeError):
        return int(psutil.Process().memory_info().rss)


def describe_load_error(error: BaseException) -> str:
    if isinstance(error, ModelmoraError):
        return str(error)
    traceback.print_exception(error)  # the full story goes to the server's log
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return f"out of memory while loading: {first_line(error)}"
    return f"{type(error).__name__}: {first_line(error)}"


def describe_request_error(call_id: int, error: Exception) -> ErrorMessage:
    if isinstance(error, ServeError):
        return error_message(call_id, error)
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return error_message(call_id, UnavailableError(f"out of memory: {first_line(error)}"))
    traceback.print_exception(error)
    return error_message(call_id, ServeError(f"{type(error).__name__}: {first_line(error)}"))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def since(started: float) -> float:
    return (time.monotonic() - started) * 1000


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings[name] = since(started)


def main(argv: Sequence[str]) -> NoReturn:
    """`python -m modelmora.serve.worker (template|worker) FD PARENT_PID`, from the launcher."""
    role, fd, parent_pid = argv[0], int(argv[1]), int(argv[2])
    die_with_parent(parent_pid)
    sock = socket.socket(fileno=fd)
    # Ctrl+C goes to the server; it drains and ends the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if role == "template":
        run_template(sock)
    run_worker(sock)


if __name__ == "__main__":
    main(sys.argv[1:])
