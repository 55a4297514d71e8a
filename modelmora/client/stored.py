"""Results the server kept in object storage (`result_url`): fetched and checked, so a caller
gets the same answer whether it came inline or through storage.

The presigned URL is fetched with a plain GET and none of the client's headers: it carries its
own signature, and the API key must not travel to the storage endpoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import httpx

from modelmora.client.errors import StoredResultError


def location(body: Any) -> Mapping[str, Any] | None:
    """Where a reply's result is kept, when the server stored it instead of answering it."""
    if not isinstance(body, Mapping) or "result" in body:
        return None
    where = body.get("result_url")
    return where if isinstance(where, Mapping) else None


def location_in(response: httpx.Response) -> Mapping[str, Any] | None:
    """`location` of a successful reply; a reply that cannot hold one is not parsed twice."""
    if not response.is_success or b'"result_url"' not in response.content:
        return None
    return location(response.json())


def checked(where: Mapping[str, Any], response: httpx.Response) -> bytes:
    """The stored object's bytes, once their size and sha256 match what the server announced."""
    if response.status_code == 403:
        raise StoredResultError(
            f"the stored result's URL was refused (403); it expires at {where.get('expires_at')}",
            hint="ask for the result again: a new request or GET /jobs/{id} signs a new URL",
        )
    if response.is_error:
        raise StoredResultError(
            f"the stored result could not be fetched: {response.status_code} from the storage",
            hint="check that this machine reaches the server's [storage] endpoint_url",
        )
    content = response.content
    if len(content) != where.get("bytes") or hashlib.sha256(content).hexdigest() != where.get(
        "sha256"
    ):
        raise StoredResultError(
            "the stored result does not match the size and sha256 the server announced",
            hint="ask again; if it persists, the object in storage was changed",
        )
    return content


def download(where: Mapping[str, Any], timeout: float) -> bytes:
    """A stored object's bytes, checked."""
    try:
        response = httpx.get(str(where["url"]), timeout=timeout)
    except httpx.TransportError as error:
        raise unreachable(error) from None
    return checked(where, response)


async def download_async(where: Mapping[str, Any], timeout: float) -> bytes:
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.get(str(where["url"]))
    except httpx.TransportError as error:
        raise unreachable(error) from None
    return checked(where, response)


def fetch(where: Mapping[str, Any], timeout: float) -> Any:
    """Download and check a stored result (JSON)."""
    return json.loads(download(where, timeout))


async def fetch_async(where: Mapping[str, Any], timeout: float) -> Any:
    return json.loads(await download_async(where, timeout))


def unreachable(error: httpx.TransportError) -> StoredResultError:
    return StoredResultError(
        f"the storage holding the result did not answer ({type(error).__name__}: {error})",
        hint="check that this machine reaches the server's [storage] endpoint_url",
    )


def inlined(response: httpx.Response, result: Any) -> httpx.Response:
    """The reply as if the server had answered the result inline."""
    body = {**response.json(), "result": result}
    body.pop("result_url", None)
    headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "content-encoding", "transfer-encoding")
    }
    return httpx.Response(
        response.status_code, headers=headers, json=body, request=response.request
    )
