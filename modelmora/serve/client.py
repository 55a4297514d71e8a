"""The client behind `modelmora ps`, `run`, `load`, `stop` and the version commands: now
`modelmora.client`, with retries and a circuit breaker; kept here for existing imports."""

from modelmora.client import DEFAULT_URL, Client

__all__ = ["DEFAULT_URL", "Client"]
