"""The Dockerfile's steps, run without a container engine (none runs here).

The Dockerfile does its work in deploy/steps/*.sh; this test runs `install.sh` into a fresh
virtual environment (no system site-packages) from a copy of exactly what the Dockerfile copies,
then `check.sh`, then the image's `install --frozen` and `serve --frozen --offline` from that
environment, answering a request. pip installs from this machine's package index and caches as
configured, so torch's wheel is not fetched from afar (about 75 s for the step on 2 cores).
What it does not run: `user.sh` (it would add a user to this machine), the base image, the
VOLUME, and `docker build` itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from modelfactory import build_embedding_model
from servers import OUTPUTS, free_port, stop, wait_ready

pytestmark = pytest.mark.slow

REPO = Path(__file__).parent.parent
STEPS = REPO / "deploy" / "steps"


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def copied_sources() -> list[str]:
    """What the Dockerfile COPYs into /src: the files the install step may use."""
    lines = re.findall(r"^COPY (.+)$", dockerfile(), re.M)
    return [source.rstrip("/") for line in lines for source in line.split()[:-1]]


def test_the_dockerfile_runs_the_steps_tested_here() -> None:
    text = dockerfile()
    assert "RUN /opt/steps/user.sh\n" in text
    assert (
        "RUN /opt/steps/install.sh /opt/modelmora /src && /opt/steps/check.sh /opt/modelmora"
        in text
    )
    (command,) = re.findall(r"^CMD (.*)$", text, re.M)
    assert json.loads(command) == ["modelmora", "serve", "--host", "0.0.0.0", "--frozen"]
    assert 'VOLUME ["/cache"]' in text and "MODELMORA_HOME=/cache" in text
    assert "USER 1000:1000" in text
    install = (STEPS / "install.sh").read_text()
    readme = (REPO / "README.md").read_text()
    command = "pip install torch==2.13.0 -e '.[serve]'"  # the README's, word for word
    assert command in readme and command in install.replace('pip" ', "pip ")


@pytest.mark.timeout(600)
def test_the_steps_build_an_environment_that_serves(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in copied_sources():
        if name == "deploy/steps":
            continue  # the steps themselves, not part of /src
        origin = REPO / name
        copy = shutil.copytree if origin.is_dir() else shutil.copy
        copy(origin, source / name)
    venv = tmp_path / "venv"
    subprocess.run(["sh", str(STEPS / "install.sh"), str(venv), str(source)], check=True)
    checked = subprocess.run(
        ["sh", str(STEPS / "check.sh"), str(venv)], check=True, capture_output=True, text=True
    )
    assert checked.stdout.splitlines() == ["modelmora 0.1.0", "torch 2.13.0+cpu (CPU)"]

    build_embedding_model(tmp_path / "tiny-bert")
    project = tmp_path / "project"
    project.mkdir()
    (project / "modelmora.toml").write_text(
        '[project]\nname = "demo"\n\n[models.bert]\nsource = "../tiny-bert"\ntask = "embedding"\n'
    )
    modelmora = str(venv / "bin" / "modelmora")
    subprocess.run([modelmora, "lock"], cwd=project, check=True)
    subprocess.run([modelmora, "install", "--frozen"], cwd=project, check=True)
    port = free_port()
    files = (tmp_path / "out.log").open("w+"), (tmp_path / "err.log").open("w+")
    process = subprocess.Popen(
        [modelmora, "serve", "--host", "127.0.0.1", "--port", str(port), "--frozen", "--offline"],
        cwd=project, stdout=files[0], stderr=files[1], text=True,
    )  # fmt: skip
    OUTPUTS[process.pid] = files
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process)
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "bert", "input": ["hi"]})
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["data"][0]["embedding"]) == 32
    finally:
        stop(process)


def test_compose_installs_once_then_serves_from_a_read_only_cache() -> None:
    """Only the shape: no compose here to run it."""
    import yaml

    services = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]
    assert services["install"]["command"] == ["modelmora", "install", "--frozen"]
    assert "cache:/cache" in services["install"]["volumes"]
    server = services["server"]
    assert server["command"][1:] == ["serve", "--host", "0.0.0.0", "--frozen", "--offline"]
    assert "cache:/cache:ro" in server["volumes"]
    assert server["depends_on"]["install"] == {"condition": "service_completed_successfully"}
