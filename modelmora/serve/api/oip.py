"""The Open Inference Protocol over REST (KServe v2 / Triton), under `/v2`."""

from __future__ import annotations

from modelmora.serve.api.openapi import Endpoint

ENDPOINTS: list[Endpoint] = []
