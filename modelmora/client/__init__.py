"""A Python client for a running ModelMora server that survives failures.

    with Client("http://127.0.0.1:8000", retry=RetryPolicy(deadline=30)) as client:
        vectors = client.embed("minilm", ["hello"]).vectors

`Client` (threads) and `AsyncClient` (asyncio) send the same calls (`calls.py`) through the same
retries and circuit breaker (`resilience.py`). `GrpcClient` speaks the Open Inference Protocol
over gRPC (`oipgrpc.py`), grpcio imported when one is made. No server code, no torch.
"""

from modelmora.client.aio import AsyncClient, AsyncJobs
from modelmora.client.errors import CircuitOpenError, ServerUnreachableError, StoredResultError
from modelmora.client.images import GeneratedImage, Images
from modelmora.client.oipgrpc import GrpcClient
from modelmora.client.resilience import (
    BreakerCounters,
    BreakerState,
    CircuitBreaker,
    RetryCounters,
    RetryEvent,
    RetryPolicy,
)
from modelmora.client.results import Embeddings, Generation, Inference, Job, Prediction, Predictions
from modelmora.client.sync import Client, Jobs
from modelmora.client.transport import DEFAULT_URL

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncJobs",
    "BreakerCounters",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "Client",
    "Embeddings",
    "GeneratedImage",
    "Generation",
    "GrpcClient",
    "Images",
    "Inference",
    "Job",
    "Jobs",
    "Prediction",
    "Predictions",
    "RetryCounters",
    "RetryEvent",
    "RetryPolicy",
    "ServerUnreachableError",
    "StoredResultError",
]
