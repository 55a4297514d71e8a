"""`/docs` (Swagger UI from the package, no CDN), the index at `/`, and what needs no API key."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

KEY = {"Authorization": "Bearer s3cret"}


def client(**settings: object) -> TestClient:
    """The app without its lifespan: these routes need no worker."""
    models = [ServedModel("emb", "embedding", Path("."))]
    supervisor = Supervisor(models, SupervisorSettings())
    return TestClient(create_app(supervisor, ServerSettings(**settings)))  # type: ignore[arg-type]


def test_docs_is_swagger_ui_served_by_the_server_itself() -> None:
    http = client()
    page = http.get("/docs")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    script = http.get("/docs/swagger-ui-bundle.js")
    style = http.get("/docs/swagger-ui.css")

    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert '"/openapi.json"' in page.text and "/infer/emb" in page.text  # the <noscript> page
    assert "/docs/swagger-ui-bundle.js" in sources and "/docs/swagger-ui.css" in sources
    assert not [source for source in sources if "://" in source]  # nothing from a CDN
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert b"SwaggerUIBundle" in script.content
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


def test_the_assets_and_their_licence_are_package_data() -> None:
    folder = importlib.resources.files("modelmora.serve").joinpath("static/swagger-ui")
    names = {entry.name for entry in folder.iterdir()}

    assert {"swagger-ui-bundle.js", "swagger-ui.css", "LICENSE", "NOTICE"} <= names


def test_the_index_names_the_server_and_links_its_docs() -> None:
    index = client().get("/")

    assert index.status_code == 200
    body = index.json()
    assert body["name"] == "ModelMora" and body["version"]
    assert body["links"]["docs"] == "/docs" and body["links"]["openai_models"] == "/v1/models"


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json", "/docs/swagger-ui.css", "/health"])
def test_what_describes_the_api_needs_no_key(path: str) -> None:
    assert client(api_key="s3cret").get(path).status_code == 200


@pytest.mark.parametrize("path", ["/models", "/metrics", "/v1/models"])
def test_data_and_metrics_need_the_key(path: str) -> None:
    http = client(api_key="s3cret")

    assert http.get(path).status_code == 401
    assert http.get(path, headers=KEY).status_code == 200


def test_with_a_key_the_document_says_how_to_send_it() -> None:
    document = client(api_key="s3cret").get("/openapi.json").json()

    assert document["components"]["securitySchemes"]["key"]["scheme"] == "bearer"
    assert document["security"] == [{"key": []}]
    assert "security" not in client().get("/openapi.json").json()


def test_metrics_public_opens_metrics_alone() -> None:
    http = client(api_key="s3cret", metrics_public=True)

    assert http.get("/metrics").status_code == 200
    assert http.get("/models").status_code == 401
