"""The OpenAI-compatible API, driven by the official `openai` client over real HTTP on loopback."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest
from liveserver import serve
from modelfactory import build_embedding_model, build_generation_model

from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor

CHAT = [{"role": "user", "content": "hello"}]
pytestmark = pytest.mark.slow  # a live server with worker processes


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("models")
    models = [
        ServedModel("emb", "embedding", build_embedding_model(root / "emb")),
        ServedModel("gen", "text-generation", build_generation_model(root / "gen")),
    ]
    supervisor = Supervisor(models, SupervisorSettings(request_timeout=60))
    with serve(create_app(supervisor, ServerSettings())) as base_url:
        yield base_url


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["emb", "gen"]


def test_embeddings_as_floats_and_base64_agree(client: openai.OpenAI, url: str) -> None:
    texts = ["hello world", "the film was good"]
    floats = client.embeddings.create(model="emb", input=texts, encoding_format="float")
    default = client.embeddings.create(model="emb", input=texts)  # the client asks for base64
    raw = httpx.post(
        f"{url}/v1/embeddings", json={"model": "emb", "input": texts, "encoding_format": "base64"}
    ).json()

    assert [item.index for item in floats.data] == [0, 1]
    assert floats.usage.prompt_tokens > 0 and floats.model == "emb"
    packed = base64.b64decode(raw["data"][1]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)  # little-endian float32
    assert decoded == pytest.approx(floats.data[1].embedding, abs=1e-6)
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_embedding_of_one_string(client: openai.OpenAI) -> None:
    response = client.embeddings.create(model="emb", input="hello", encoding_format="float")

    assert len(response.data) == 1 and len(response.data[0].embedding) > 1


def test_completion(client: openai.OpenAI) -> None:
    response = client.completions.create(model="gen", prompt="hello", max_tokens=4, temperature=0)

    choice = response.choices[0]
    assert response.object == "text_completion" and response.id.startswith("cmpl-")
    assert isinstance(choice.text, str) and choice.finish_reason in {"stop", "length"}
    assert response.usage is not None and response.usage.completion_tokens <= 4


def test_streamed_completion_matches_the_whole_one(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="gen", prompt="hello", max_tokens=5, temperature=0)
    stream = client.completions.create(
        model="gen", prompt="hello", max_tokens=5, temperature=0, stream=True
    )

    assert "".join(chunk.choices[0].text for chunk in stream) == whole.choices[0].text


def test_chat_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="gen",
        messages=CHAT,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )

    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert isinstance(response.choices[0].message.content, str)


def test_streamed_chat_sends_role_text_finish_and_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="gen",
        messages=CHAT,
        max_tokens=5,
        temperature=0,  # type: ignore[arg-type]
    )
    chunks = list(
        client.chat.completions.create(
            model="gen",
            messages=CHAT,  # type: ignore[arg-type]
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    deltas = [chunk.choices[0] for chunk in chunks if chunk.choices]
    assert deltas[0].delta.role == "assistant"
    assert "".join(d.delta.content or "" for d in deltas) == whole.choices[0].message.content
    assert deltas[-1].finish_reason in {"stop", "length"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 5


def test_stream_is_server_sent_events_ending_in_done(url: str) -> None:
    body = {"model": "gen", "messages": CHAT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]

    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_unknown_model_is_openais_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="nope", input="x")

    assert caught.value.code == "model_not_found"
    assert caught.value.body == {
        "message": caught.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


def test_a_model_of_another_task_is_400_naming_param_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="gen", input="x")

    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gen", "prompt": "x", "n": 2}, "n"),
        ({"model": "gen", "prompt": "x", "temperature": 9}, "temperature"),
        ({"model": "gen"}, "prompt"),
        ({"model": "gen", "prompt": ["a", "b"]}, "prompt"),
    ],
)
def test_invalid_request_names_the_param(url: str, body: dict[str, object], param: str) -> None:
    response = httpx.post(f"{url}/v1/completions", json=body)

    error = response.json()["error"]
    assert response.status_code == 400
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_malformed_json_is_openais_error_shape(url: str) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", content=b"{")

    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/completions",
            {"model": "gen", "prompt": "x", "max_new_tokens": 5},
            "max_new_tokens: unknown field; this API calls it `max_tokens`",
        ),
        (
            "/v1/chat/completions",
            {"model": "gen", "messages": CHAT, "tools": []},
            "tools: not supported by ModelMora; leave it out",
        ),
        (
            "/v1/chat/completions",
            {"model": "gen", "messages": CHAT, "max_tokenz": 3},
            "max_tokenz: unknown field; check its spelling against /docs",
        ),
        (
            "/v1/completions",
            {"model": "gen", "prompt": "x", "presence_penalty": 0.5},
            "presence_penalty: not supported by ModelMora; leave it out or send 0",
        ),
        (
            "/v1/embeddings",
            {"model": "emb", "input": ["x"] * 2049},
            "input: too many items: 2049, at most 2048; split them across requests",
        ),
        ("/v1/embeddings", {"model": "emb", "input": []}, "input: send at least 1 item, not 0"),
    ],
)
def test_a_parameter_we_do_not_apply_is_refused_by_name(
    url: str, path: str, body: dict[str, object], message: str
) -> None:
    response = httpx.post(f"{url}{path}", json=body)

    error = response.json()["error"]
    assert response.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["message"] == message and error["param"] == message.split(":")[0]


def test_the_no_op_values_clients_spell_out_are_accepted(client: openai.OpenAI) -> None:
    # Greedy (temperature 0): a sampled token of the tiny random model may be its end of text,
    # which would end the completion before max_tokens whatever the test order's random state.
    reply = client.completions.create(
        model="gen", prompt="hi", max_tokens=2, temperature=0, n=1, user="someone",
        presence_penalty=0, frequency_penalty=0.0, echo=False, best_of=1, logit_bias={},
    )  # fmt: skip
    chat = client.chat.completions.create(
        model="gen", messages=CHAT, max_tokens=2, temperature=0, logprobs=False, stream=True,
        stream_options={"include_usage": True}, presence_penalty=0,
    )  # fmt: skip

    assert reply.usage is not None and reply.usage.completion_tokens == 2
    usage = [chunk.usage for chunk in chat if chunk.usage is not None]
    assert [each.completion_tokens for each in usage] == [2]
