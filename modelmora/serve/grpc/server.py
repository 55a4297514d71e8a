"""grpc.aio's server on the app's event loop: started by the app's lifespan when `grpc_port` is
set, stopped before the scheduler closes, so that calls in flight finish first."""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import Any

from modelmora.errors import ModelmoraError
from modelmora.serve.api.http import AppState
from modelmora.serve.api.telemetry import Metrics
from modelmora.serve.config import ServerSettings

logger = logging.getLogger("modelmora.serve.grpc")
INSTALL = "pip install 'modelmora[grpc]'"


@dataclass(frozen=True)
class GrpcServer:
    server: Any
    """A `grpc.aio.Server`."""
    service: Any
    """Its `InferenceService`."""


def check(settings: ServerSettings) -> None:
    """Fail in one line before anything starts: grpcio missing, or the port in use."""
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise ModelmoraError("--grpc-port needs grpcio, which is not installed", INSTALL) from None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.grpc_port))
        except OSError as error:
            raise port_error(settings, error) from None


def port_error(settings: ServerSettings, error: OSError) -> ModelmoraError:
    if error.errno == errno.EADDRINUSE:
        return ModelmoraError(
            f"gRPC port {settings.grpc_port} is in use on {settings.host}",
            "pass another --grpc-port, or stop what listens there",
        )
    where = address(settings)
    return ModelmoraError(f"cannot listen for gRPC on {where} ({error.strerror})", "check --host")


def address(settings: ServerSettings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.grpc_port}"


async def start(state: AppState, metrics: Metrics | None) -> GrpcServer:
    """Serve the Open Inference Protocol's gRPC service on `state.settings.grpc_port`."""
    import grpc

    from modelmora.oip.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
    from modelmora.serve.grpc.service import InferenceService

    settings = state.settings
    limit = settings.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit)])
    service = InferenceService(state, metrics)
    add_GRPCInferenceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    try:
        server.add_insecure_port(address(settings))
    except RuntimeError as error:
        raise ModelmoraError(f"cannot listen for gRPC on {address(settings)} ({error})") from None
    await server.start()
    logger.info("gRPC (Open Inference Protocol) on %s", address(settings))
    return GrpcServer(server, service)


async def stop(running: GrpcServer, grace: float) -> None:
    """Take no new calls; streams end once their requests are answered; calls in flight get
    `grace` seconds, then are cancelled."""
    running.service.stop_reading()
    await running.server.stop(grace)
