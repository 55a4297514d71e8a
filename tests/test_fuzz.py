"""Schema-driven fuzzing: schemathesis sends what `/openapi.json` describes to a live server.

Every operation of the document goes through schemathesis's phases (examples, coverage, fuzzing,
stateful) and its default checks: no 5xx, documented statuses, content types, response schemas and
headers, valid bodies accepted, invalid ones refused, 405 with `Allow` for undocumented methods.
The server is the real app on uvicorn on loopback, with a tiny model of each built-in task and
jobs enabled; the document names the served models, so the fuzz reaches the inference code.

Run it alone with `.venv/bin/python -m pytest tests/test_fuzz.py` (about half a minute). It is
deterministic: a fixed seed, and hypothesis derandomized, so CI sees the same cases every time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modelfactory
import pytest
import schemathesis
from liveserver import serve
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

SEED = 20240611
MAX_EXAMPLES = 12
"""Per operation in the fuzzing phase; the other phases derive their cases from the schema."""
LIST_EXAMPLES = 100
"""For `GET /jobs` and `GET /models`: cheap, and a page far down takes many cases to reach."""
CONTEXT = 2048
"""The generation model's context, in tokens (bytes: its tokenizer has one token a byte)."""
EMBEDDING_DIMENSIONS = 32
"""What `modelfactory.build_embedding_model` makes."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    models = [
        ServedModel("emb", "embedding", modelfactory.build_embedding_model(root / "emb")),
        ServedModel(
            "cls", "text-classification", modelfactory.build_classification_model(root / "cls")
        ),
        ServedModel("gen", "text-generation", generation_model(root / "gen")),
    ]
    supervisor = Supervisor(models, SupervisorSettings(request_timeout=60))
    app = create_app(supervisor, ServerSettings(access_log=False), jobs_path=root / "jobs.db")
    with serve(app) as base_url:
        yield base_url


def generation_model(dest: Path) -> Path:
    """The tiny GPT-2 with a longer context than the builder's 128 tokens, as real models have.

    A prompt longer than the context is refused with 422, and no schema can say so (it counts
    characters, the model counts tokens): with 128 tokens the fuzz's longer chats would test only
    that refusal, which `test_openapi.py` covers.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modelfactory, "MAX_LENGTH", CONTEXT)
        return modelfactory.build_generation_model(dest)


def test_every_operation_keeps_to_the_document(url: str) -> None:
    failures, statuses = fuzz(url)

    assert not failures, "\n\n".join(failures)
    inference = [label for label in statuses if label.startswith(("POST /infer/", "POST /v1/"))]
    assert len(inference) == 6 and "POST /jobs" in statuses
    for label in [*inference, "POST /jobs"]:  # the fuzz reached the models, not only 4xx
        assert any(200 <= status < 300 for status in statuses[label]), label


def fuzz(url: str) -> tuple[list[str], dict[str, set[int]]]:
    """Run every phase over the document; the failures found, and the statuses per operation."""
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "request-timeout": 60,
            # A page past what SQLite counts was a 500; the default number of cases missed it.
            "operations": [
                {
                    "include-path-regex": "^/(jobs|models)$",
                    "include-method": "GET",
                    "generation": {"max-examples": LIST_EXAMPLES},
                },
                # No text-to-image model here: the schema's bounds (2048x2048, 200 steps, 8
                # images) cost minutes of CPU per case. tests/test_image.py covers the route.
                {"include-path": "/v1/images/generations", "enabled": False},
            ],
            # A 504 answers a request whose own `timeout` passed (the fuzz sends them down to
            # 5e-324 s): `deadline_is_the_clients` below accepts it only then.
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "504"]}},
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    schema.hook("filter_body")(only_the_models_dimensions)
    failures: list[str] = []
    statuses: defaultdict[str, set[int]] = defaultdict(set)
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    statuses[event.recorder.label].add(interaction.response.status_code)
            if event.status == Status.FAILURE:
                failures += describe(event)
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: schemathesis could not test it: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            failures.append(f"schemathesis stopped: {event.exception!r}")
    return list(dict.fromkeys(failures)), statuses


@schemathesis.check
def deadline_is_the_clients(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """A 504 only for a request that set its own timeout, not the server's default of 60 s: the
    native `timeout` (seconds), or the Open Inference Protocol's `parameters.timeout` (µs)."""
    if response.status_code == 504:
        body = case.body if isinstance(case.body, dict) else {}
        parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
        assert body.get("timeout") is not None or parameters.get("timeout"), "504"


def only_the_models_dimensions(ctx: schemathesis.HookContext, body: Any) -> bool:
    """`filter_body`: `dimensions` up to the embedding model's own, as clients ask for.

    More than the model has is refused (422), and the document, written before any model loads,
    cannot say how many that is: the model's size is known once it is loaded.
    """
    if ctx.operation is None or ctx.operation.label != "POST /v1/embeddings":
        return True
    dimensions = body.get("dimensions") if isinstance(body, dict) else None
    number = isinstance(dimensions, (int, float)) and not isinstance(dimensions, bool)
    return not number or dimensions <= EMBEDDING_DIMENSIONS  # fewer: shortened vectors


def describe(event: events.ScenarioFinished) -> list[str]:
    """Each failed check: what it says, the answer, and the curl command that reproduces it."""
    found = []
    for case_id, checks in event.recorder.checks.items():
        interaction = event.recorder.interactions.get(case_id)
        response = interaction.response if interaction is not None else None
        answer = f"{response.status_code} {response.content[:300]!r}" if response else "none"
        for check in checks:
            if check.failure_info is not None:
                failure = check.failure_info.failure
                found.append(
                    f"{event.recorder.label} [{check.name}] {failure.title}: {failure.message}\n"
                    f"answer: {answer}\n{check.failure_info.code_sample}"
                )
    return found
