"""Large results in S3-compatible object storage: a real endpoint on loopback (moto's server)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from liveserver import serve
from moto.server import ThreadedMotoServer
from waiting import eventually

from modelmora.errors import ManifestError, UnavailableError
from modelmora.manifest import StorageTable, loads
from modelmora.serve.app import create_app
from modelmora.serve.config import ServerSettings, SupervisorSettings
from modelmora.serve.supervisor import ServedModel, Supervisor
from modelmora.storage import Storage, expiry, object_key

ECHO = "runtimes_for_tests:EchoRuntime"
BUCKET = "results"
THRESHOLD = 2000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedMotoServer]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=url_of(server)).create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def url_of(server: ThreadedMotoServer) -> str:
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def storage_for(server: ThreadedMotoServer, bucket: str = BUCKET) -> Storage:
    table = StorageTable(
        bucket=bucket, endpoint_url=url_of(server), prefix="r/", threshold=THRESHOLD
    )
    return Storage(table)


@pytest.fixture
def http(tmp_path: Path, endpoint: ThreadedMotoServer) -> Iterator[httpx.Client]:
    supervisor = Supervisor(
        [ServedModel("echo", "echo", tmp_path, runtime=ECHO, device="cpu")],
        SupervisorSettings(template_imports=("runtimes_for_tests",)),
    )
    app = create_app(
        supervisor,
        ServerSettings(access_log=False),
        tmp_path / "jobs.sqlite3",
        storage=storage_for(endpoint),
    )
    with serve(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield client


def large() -> dict[str, Any]:
    return {"text": "x" * (THRESHOLD * 2)}


def test_a_large_result_goes_to_storage_and_its_url_downloads_it(http: httpx.Client) -> None:
    response = http.post("/infer/echo", json=large())
    assert response.status_code == 200, response.text
    body = response.json()
    assert "result" not in body
    location = body["result_url"]
    download = httpx.get(location["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/json"
    assert len(download.content) == location["bytes"] > THRESHOLD
    assert hashlib.sha256(download.content).hexdigest() == location["sha256"]
    assert json.loads(download.content)["echo"]["text"] == large()["text"]
    expires_at = datetime.fromisoformat(location["expires_at"])
    assert timedelta(minutes=59) < expires_at - datetime.now(timezone.utc) <= timedelta(hours=1)


def test_a_small_result_stays_inline(http: httpx.Client) -> None:
    body = http.post("/infer/echo", json={"text": "hi"}).json()
    assert body["result"]["echo"]["text"] == "hi"
    assert "result_url" not in body


def test_a_jobs_large_result_is_stored(http: httpx.Client) -> None:
    created = http.post("/jobs", json={"model": "echo", "input": large()})
    assert created.status_code == 202, created.text
    job = eventually(lambda: finished(http, created.json()["id"]), 60, what="the job to finish")
    assert job["state"] == "succeeded", job
    location = job["result"]["result_url"]
    download = httpx.get(location["url"])
    assert hashlib.sha256(download.content).hexdigest() == location["sha256"]
    assert json.loads(download.content)["echo"]["text"] == large()["text"]


def finished(http: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = http.get(f"/jobs/{job_id}").json()
    return job if job["state"] in ("succeeded", "failed") else None


def test_storage_down_is_a_clear_503_and_a_failed_job(
    http: httpx.Client, endpoint: ThreadedMotoServer
) -> None:
    endpoint.stop()
    response = http.post("/infer/echo", json=large())
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable"
    assert "object storage: could not store the result" in error["message"]
    assert http.post("/infer/echo", json={"text": "hi"}).status_code == 200  # inline still works
    created = http.post("/jobs", json={"model": "echo", "input": large()})
    job = eventually(lambda: finished(http, created.json()["id"]), 60, what="the job to finish")
    assert job["state"] == "failed"
    assert "object storage" in job["error"]["message"]


def test_a_missing_bucket_names_the_reason(endpoint: ThreadedMotoServer) -> None:
    with pytest.raises(UnavailableError, match="NoSuchBucket"):
        storage_for(endpoint, bucket="absent").put(b"{}")


def test_the_tables_credentials_are_used(endpoint: ThreadedMotoServer) -> None:
    table = StorageTable(
        bucket=BUCKET, endpoint_url=url_of(endpoint), access_key_id="a", secret_access_key="b"
    )
    stored = Storage(table).put(b"{}")
    assert httpx.get(stored.url).content == b"{}"


def test_the_key_is_the_content_hash() -> None:
    key, digest = object_key("p/", b"{}")
    assert digest == hashlib.sha256(b"{}").hexdigest()
    assert key == f"p/{digest}.json"


def test_expiry_counts_from_the_signing_time_in_utc() -> None:
    signed = datetime(2026, 1, 1, 12, 0, 0, 500_000, tzinfo=timezone(timedelta(hours=2)))
    assert expiry(signed, 3600) == datetime(2026, 1, 1, 11, 0, tzinfo=timezone.utc)
    assert expiry(signed, 7 * 86400).day == 8


MANIFEST = '[project]\nname = "p"\n'


def storage_table(text: str) -> StorageTable | None:
    return loads(MANIFEST + text, Path("modelmora.toml")).storage


def test_the_storage_table_reads_sizes_durations_and_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3_SECRET", "s3cret")
    table = storage_table(
        '[storage]\nbucket = "b"\nendpoint_url = "http://127.0.0.1:9000"\nthreshold = "2MB"\n'
        'expires = "15m"\naccess_key_id = "k"\nsecret_access_key = "${S3_SECRET}"\n'
    )
    assert table is not None
    assert (table.threshold, table.expires, table.secret_access_key) == (2_000_000, 900, "s3cret")
    assert storage_table("") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'threshhold = 1\nbucket = "b"',
            "storage.threshhold: unknown key; did you mean 'threshold'",
        ),
        ('bucket = "b"\nthreshold = "lots"', "storage.threshold: 'lots' is not a size"),
        ('bucket = "b"\nexpires = "8d"', "storage.expires: '8d': a presigned URL lives 1s to 7d"),
        ('bucket = "b"\nendpoint_url = "localhost"', "storage.endpoint_url: 'localhost' is no URL"),
        ('bucket = "b"\naccess_key_id = "k"', "storage: access_key_id and secret_access_key go"),
        ('prefix = "x/"', "storage.bucket: missing"),
    ],
)
def test_storage_table_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message.replace(".", r"\.")):
        storage_table(f"[storage]\n{text}\n")


def test_the_client_fetches_a_stored_result_as_if_it_were_inline(http: httpx.Client) -> None:
    from modelmora.client import AsyncClient, Client

    url = str(http.base_url).rstrip("/")
    with Client(url) as client:
        answer = client.infer("echo", None, **large())
        job = client.jobs.wait(client.jobs.submit("echo", large()).id, timeout=60)
        from_job = client.jobs.result(job)
        small = client.jobs.wait(client.jobs.submit("echo", {"text": "hi"}).id, timeout=60)
        assert client.jobs.result(small) == small.result and small.result["echo"]["text"] == "hi"

    async def both() -> tuple[Any, Any]:
        async with AsyncClient(url) as client:
            job = await client.jobs.wait((await client.jobs.submit("echo", large())).id)
            return (await client.infer("echo", None, **large())).result, await client.jobs.result(
                job
            )

    async_answer, async_from_job = asyncio.run(both())
    assert answer.result["echo"]["text"] == large()["text"] and "result_url" not in answer.body
    assert from_job["echo"]["text"] == async_from_job["echo"]["text"] == large()["text"]
    assert async_answer == answer.result


def test_a_changed_stored_result_is_refused(
    http: httpx.Client, endpoint: ThreadedMotoServer
) -> None:
    from modelmora.client import Client
    from modelmora.client.errors import StoredResultError

    with Client(str(http.base_url).rstrip("/")) as client:
        job = client.jobs.wait(client.jobs.submit("echo", large()).id, timeout=60)
        location = job.result["result_url"]
        s3 = boto3.client("s3", endpoint_url=url_of(endpoint))
        key = location["url"].split(f"/{BUCKET}/", 1)[1].split("?", 1)[0]
        s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"echo": "changed"}')
        with pytest.raises(StoredResultError) as error:
            client.jobs.result(job)
    assert "sha256" in str(error.value)
    assert httpx.get(location["url"]).content == b'{"echo": "changed"}'
