"""`/ui`: the web UI, static files shipped in the package and served by the server itself.

The page and its scripts hold no data, so they need no key (as `/docs`); every call the page makes
to the API sends the key the user typed in, and gets the same 401 and 403 as any other client.
"""

from __future__ import annotations

import functools
import importlib.resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from modelmora.serve.api.openapi import Handler

UI_FOLDER = "static/ui"
ASSETS = {
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "chart.js": "text/javascript",
    "dom.js": "text/javascript",
    "models.js": "text/javascript",
    "playground.js": "text/javascript",
    "snippets.js": "text/javascript",
    "jobs.js": "text/javascript",
    "errors.js": "text/javascript",
    "app.css": "text/css",
}
PUBLIC_PATHS = frozenset({"/ui", "/ui/", *(f"/ui/{name}" for name in ASSETS)})
_NO_CACHE = {"Cache-Control": "no-cache"}  # a new version of the server brings new files


@functools.cache
def _read(name: str) -> bytes:
    return importlib.resources.files("modelmora.serve").joinpath(f"{UI_FOLDER}/{name}").read_bytes()


async def page(request: Request) -> Response:
    """The page shell: navigation and the key field; the scripts fill it in."""
    return Response(_read("index.html"), media_type="text/html", headers=_NO_CACHE)


async def to_page(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


def _asset(name: str, media_type: str) -> Handler:
    async def serve_asset(request: Request) -> Response:
        return Response(_read(name), media_type=media_type, headers=_NO_CACHE)

    return serve_asset


def routes() -> list[Route]:
    return [
        Route("/ui", to_page, methods=["GET"]),
        Route("/ui/", page, methods=["GET"]),
        *(
            Route(f"/ui/{name}", _asset(name, kind), methods=["GET"])
            for name, kind in ASSETS.items()
        ),
    ]
