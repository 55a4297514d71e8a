"""The parts of the HTTP API that `modelmora.serve.app` puts together.

http           settings, per-app state, bounded JSON bodies, error shapes, API-key check
native         /health, /ready, /models, /infer and their schemas
openai_compat  /v1/*: the OpenAI-compatible API and its schemas
telemetry      request ids, JSON access logs, Prometheus metrics
openapi        the Endpoint table, /openapi.json and /docs
"""
