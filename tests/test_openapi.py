"""`/openapi.json` says what the server accepts, and the server accepts what it says.

One test per defect that the schema-driven fuzz (`test_fuzz.py`) found, against a live server with
a tiny model of each built-in task and jobs enabled; and the sampling bounds, which the API and the
generation runtime read from one module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from liveserver import serve
from modelfactory import build_classification_model, build_embedding_model, build_generation_model
from pydantic import ValidationError

from modelmora.errors import InvalidInputError
from modelmora.runtimes import sampling
from modelmora.runtimes.sampling import SamplingParams
from modelmora.serve.api.schemas import (
    MAX_PAGE,
    ChatCompletionRequest,
    GenerationInferRequest,
)
from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

CHAT = [{"role": "user", "content": "hi"}]
TASK_BODIES = {
    "emb": "EmbeddingInferRequest",
    "cls": "ClassificationInferRequest",
    "gen": "GenerationInferRequest",
}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("openapi")
    models = [
        ServedModel("emb", "embedding", build_embedding_model(root / "emb")),
        ServedModel("cls", "text-classification", build_classification_model(root / "cls")),
        ServedModel("gen", "text-generation", build_generation_model(root / "gen")),
    ]
    supervisor = Supervisor(models, SupervisorSettings(request_timeout=60))
    app = create_app(supervisor, ServerSettings(access_log=False), jobs_path=root / "jobs.db")
    with serve(app) as base_url:
        yield base_url


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def document(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/openapi.json").json()


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    operation = document["paths"][path]["post"]
    schema: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
    return schema


def component(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    return schema


# Pages past what SQLite counts were a 500


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/jobs", "/models"])
def test_a_page_past_the_bound_is_refused_and_the_bound_is_published(
    http: httpx.Client, document: dict[str, Any], path: str
) -> None:
    beyond = http.get(path, params={"page": 2**64 - 1, "limit": 164, "state": "failed"})
    last = http.get(path, params={"page": MAX_PAGE, "limit": 1000})

    assert beyond.status_code == 422, beyond.text
    assert beyond.json()["error"]["detail"][0]["field"] == "page"
    assert last.status_code == 200 and last.json()["page"] == MAX_PAGE
    [page] = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "page"]
    assert page["schema"]["maximum"] == MAX_PAGE and str(MAX_PAGE) in page["schema"]["description"]


# A 405 listed only the methods of the first route of its path


@pytest.mark.slow
def test_a_wrong_method_gets_405_with_every_method_of_the_path(
    http: httpx.Client, document: dict[str, Any]
) -> None:
    for template, operations in document["paths"].items():
        path = template.replace("{name}", "emb").replace("{id}", "no-such-job")
        expected = {method.upper() for method in operations} | {"OPTIONS"}
        expected |= {"HEAD"} if "GET" in expected else set()

        wrong = http.request("PATCH", path)
        options = http.options(path)

        assert wrong.status_code == 405, path
        assert set(wrong.headers["Allow"].split(", ")) == expected, path
        assert options.status_code == 204, path
        assert set(options.headers["Allow"].split(", ")) == expected, path


# `/infer/{name}` published a oneOf of every task's body; the server takes one task's body


@pytest.mark.slow
def test_each_model_has_an_infer_operation_with_its_tasks_body(document: dict[str, Any]) -> None:
    infer = sorted(path for path in document["paths"] if path.startswith("/infer/"))

    assert infer == ["/infer/cls", "/infer/emb", "/infer/gen"]
    for name, body in TASK_BODIES.items():
        assert body_schema(document, f"/infer/{name}") == {"$ref": f"#/components/schemas/{body}"}
    embedding = document["components"]["schemas"]["EmbeddingInferRequest"]
    classification = document["components"]["schemas"]["ClassificationInferRequest"]
    assert "normalize" in embedding["properties"]
    assert "normalize" not in classification["properties"]
    assert classification["additionalProperties"] is False


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("emb", {"inputs": ["a", "b"], "normalize": False, "timeout": 30, "keep_alive": "5m"}),
        ("cls", {"inputs": "good", "top_k": 2.0, "priority": "high"}),
        ("gen", {"messages": CHAT, "max_new_tokens": 2, "temperature": 0, "stop": "x", "seed": 1}),
        ("gen", {"inputs": "hello", "max_new_tokens": 2.0, "priority": 2.0, "top_p": 0.5}),
    ],
)
def test_infer_accepts_what_its_operation_documents(
    http: httpx.Client, document: dict[str, Any], name: str, body: dict[str, Any]
) -> None:
    documented = component(document, body_schema(document, f"/infer/{name}"))["properties"]
    response = http.post(f"/infer/{name}", json=body)

    assert set(body) <= set(documented)
    assert response.status_code == 200, response.text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("cls", {"inputs": "x", "normalize": True}, "normalize"),  # not in its schema
        ("cls", {"inputs": "x", "top_k": "2"}, "top_k"),  # a string is no integer
        ("emb", {"inputs": "x", "normalize": 0}, "normalize"),  # nor 0 a boolean
        ("gen", {"max_new_tokens": 2}, "inputs"),  # neither a prompt nor messages
        ("gen", {"inputs": None, "messages": CHAT}, "inputs"),  # null is not a string
        ("gen", {"inputs": "x", "priority": 2.5}, "priority"),
        ("gen", {"inputs": "x", "priority": "2"}, "priority"),  # the header's spelling
    ],
)
def test_infer_refuses_what_its_operation_does_not_document(
    http: httpx.Client, name: str, body: dict[str, Any], field: str
) -> None:
    response = http.post(f"/infer/{name}", json=body)

    assert response.status_code == 422
    assert field in response.json()["error"]["message"]


@pytest.mark.slow
def test_a_generation_body_documents_one_of_prompt_and_messages(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["GenerationInferRequest"]

    assert schema["oneOf"] == [{"required": ["inputs"]}, {"required": ["messages"]}]
    assert schema["properties"]["inputs"] == {"minLength": 1, "title": "Inputs", "type": "string"}


# Bodies that name a model: the OpenAI routes and jobs


@pytest.mark.slow
def test_openai_bodies_name_the_served_models_of_their_task(document: dict[str, Any]) -> None:
    paths = ("/v1/embeddings", "/v1/completions", "/v1/chat/completions")
    models = [component(document, body_schema(document, p))["properties"]["model"] for p in paths]

    names = [model.get("enum", [model.get("const")]) for model in models]
    assert names == [["emb"], ["gen"], ["gen"]]


@pytest.mark.slow
def test_an_integral_priority_is_an_integer_on_every_route(http: httpx.Client) -> None:
    chat = http.post(
        "/v1/chat/completions",
        json={"model": "gen", "messages": CHAT, "max_tokens": 2.0, "priority": 2.0},
    )
    job = http.post("/jobs", json={"model": "cls", "input": "good", "priority": 3.0})

    assert chat.status_code == 200, chat.text
    assert job.status_code == 202 and job.json()["priority"] == 3


@pytest.mark.slow
def test_job_bodies_are_documented_per_model(http: httpx.Client, document: dict[str, Any]) -> None:
    variants = [component(document, ref) for ref in body_schema(document, "/jobs")["oneOf"]]
    by_model = {variant["properties"]["model"]["const"]: variant for variant in variants}
    gen_input = by_model["gen"]["properties"]["input"]["anyOf"]

    assert sorted(by_model) == ["cls", "emb", "gen"]
    assert {"minLength": 1, "type": "string"} in gen_input  # a prompt, not a list of texts
    assert http.post("/jobs", json={"model": "gen", "input": ["a", "b"]}).status_code == 422
    assert http.post("/jobs", json={"model": "emb", "input": ["a", "b"]}).status_code == 202
    assert http.post("/jobs", json={"model": "gen", "input": {"messages": CHAT}}).status_code == 202


# Responses: streams and readiness


@pytest.mark.slow
def test_streams_and_unready_answers_are_documented(
    http: httpx.Client, document: dict[str, Any]
) -> None:
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    ready = document["paths"]["/ready"]["get"]["responses"]
    streamed = http.post(
        "/v1/chat/completions",
        json={"model": "gen", "messages": CHAT, "max_tokens": 2, "stream": True},
    )

    assert set(chat) == {"application/json", "text/event-stream"}
    assert chat["text/event-stream"]["schema"]["required"] == ["data"]
    assert ready["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/Readiness")
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.text.endswith("data: [DONE]\n\n")


# Values the fuzz sent that the models could not take


@pytest.mark.slow
def test_a_temperature_that_float32_rounds_to_zero_decodes_greedily(http: httpx.Client) -> None:
    def text(temperature: float) -> Any:
        body = {"inputs": "hello", "max_new_tokens": 4, "temperature": temperature}
        response = http.post("/infer/gen", json=body)
        assert response.status_code == 200, response.text
        return response.json()["result"]["text"]

    assert text(5e-324) == text(0)


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_refused(http: httpx.Client) -> None:
    response = http.post("/infer/gen", json={"inputs": "x" * 200})  # the model takes 128 tokens

    assert response.status_code == 422
    assert "context" in response.json()["error"]["message"]


@pytest.mark.slow
def test_dimensions_shorten_the_vectors_up_to_the_models_own(http: httpx.Client) -> None:
    def embed(dimensions: int) -> httpx.Response:
        body = {"model": "emb", "input": ["hello", "world"], "dimensions": dimensions}
        return http.post("/v1/embeddings", json=body)

    full = http.post("/v1/embeddings", json={"model": "emb", "input": "hello"}).json()
    size = len(full["data"][0]["embedding"])
    short = embed(size // 4).json()["data"]

    assert [len(item["embedding"]) for item in short] == [size // 4] * 2
    assert math.fsum(v * v for v in short[0]["embedding"]) == pytest.approx(1.0)
    assert embed(size).status_code == 200
    too_many = embed(size + 1)
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "dimensions"


# One definition of the sampling bounds, read by the API and the runtime alike

OVER_THE_BOUNDS = [
    ("max_new_tokens", 0),
    ("max_new_tokens", int(sampling.MAX_NEW_TOKENS.maximum) + 1),
    ("temperature", -0.001),
    ("temperature", sampling.TEMPERATURE.maximum + 0.001),
    ("top_p", 0.0),
    ("top_p", 1.001),
    ("seed", int(sampling.SEED.minimum) - 1),
    ("seed", int(sampling.SEED.maximum) + 1),
    ("stop", ""),
    ("stop", ["x"] * (sampling.MAX_STOP_STRINGS + 1)),
]
AT_THE_BOUNDS = [
    ("max_new_tokens", int(sampling.MAX_NEW_TOKENS.maximum)),
    ("temperature", sampling.TEMPERATURE.minimum),
    ("temperature", sampling.TEMPERATURE.maximum),
    ("top_p", sampling.TOP_P.maximum),
    ("seed", int(sampling.SEED.minimum)),
    ("seed", int(sampling.SEED.maximum)),
    ("stop", ["x"] * sampling.MAX_STOP_STRINGS),
]
OPENAI_NAMES = {"max_new_tokens": "max_tokens"}


@pytest.mark.parametrize(("field", "value"), OVER_THE_BOUNDS)
def test_the_api_and_the_runtime_refuse_the_same_sampling_values(field: str, value: Any) -> None:
    openai = {"model": "gen", "messages": CHAT, OPENAI_NAMES.get(field, field): value}

    with pytest.raises(ValidationError, match=OPENAI_NAMES.get(field, field)):
        ChatCompletionRequest.model_validate(openai)
    with pytest.raises(ValidationError, match=field):
        GenerationInferRequest.model_validate({"inputs": "x", field: value})
    with pytest.raises(InvalidInputError, match=field):
        SamplingParams.from_request({field: value})


@pytest.mark.parametrize(("field", "value"), AT_THE_BOUNDS)
def test_the_api_and_the_runtime_accept_the_same_sampling_values(field: str, value: Any) -> None:
    openai = {"model": "gen", "messages": CHAT, OPENAI_NAMES.get(field, field): value}
    native = GenerationInferRequest.model_validate({"inputs": "x", field: value})
    ChatCompletionRequest.model_validate(openai)

    assert SamplingParams.from_request(native.to_runtime()) == SamplingParams.from_request(
        {**native.to_runtime(), field: value}
    )


def test_runtime_defaults_are_the_apis() -> None:
    native = GenerationInferRequest.model_validate({"inputs": "x"}).to_runtime()
    openai = ChatCompletionRequest.model_validate({"model": "gen", "messages": CHAT})

    assert SamplingParams.from_request(native) == SamplingParams.from_request({})
    assert SamplingParams.from_request(openai.runtime_request()) == SamplingParams.from_request({})
