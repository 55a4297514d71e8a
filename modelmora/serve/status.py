"""The status of a served model: one record, built by the supervisor, published by the API
(`GET /models`, `/ready`), printed by `modelmora ps --json`. Its fields are the documented schema.

    unloaded ──load──► loading ──► ready ──idle, evicted, unloaded──► unloaded
                          │          └──crash──► restarting ──backoff──► loading
                          └──load error──► failed            (until loaded again by hand)

This module imports only pydantic, so the CLI's client can parse the record.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

ModelState = Literal["unloaded", "loading", "ready", "restarting", "failed"]
MODEL_STATES: tuple[ModelState, ...] = get_args(ModelState)


class Batching(BaseModel):
    """The scheduling settings in effect for a model (manifest fields of the same names)."""

    model_config = ConfigDict(extra="ignore")

    max_batch_size: int
    max_batch_delay_ms: float
    max_batch_tokens: int
    max_queue: int
    max_in_flight: int


class ModelStatus(BaseModel):
    """One served model: what it is, what its worker is doing, and what waits for it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    task: str
    source: str
    revision: str
    state: ModelState
    pid: int | None
    device: str | None
    memory_bytes: int | None
    cpu_percent: float | None = Field(
        default=None, description="CPU used since the previous health check, percent of one core"
    )
    rss_bytes: int | None = Field(default=None, description="the worker's resident memory")
    uss_bytes: int | None = Field(
        default=None, description="memory only the worker holds (None where it cannot be read)"
    )
    gpu_memory_bytes: int | None = Field(
        default=None, description="the worker's GPU memory (NVML; None without a GPU)"
    )
    gpu_utilization: float | None = Field(
        default=None, description="percent busy of the worker's GPU (NVML; None without a GPU)"
    )
    loaded_at: float | None = Field(description="unix time")
    last_used: float | None = Field(description="unix time")
    expires_at: float | None = Field(description="unix time of the idle unload")
    in_flight: int
    requests_total: int
    requests_failed: int
    loads: int
    unloads: int
    crashes: int = Field(description="crashes since the server started")
    crash_streak: int = Field(
        default=0,
        description="crashes in a row, without a stable run between them (the backoff's count)",
    )
    restart_at: float | None = Field(
        default=None,
        description="unix time at which a crashed worker is started again (restarting)",
    )
    last_crash: str | None = Field(
        default=None, description="how the last crashed worker died, kept after it restarted"
    )
    last_load_ms: float | None
    error: str | None = Field(description="why the model failed or is restarting")
    queued: dict[str, int] = Field(
        default_factory=dict, description="requests waiting in the queue, per priority"
    )
    batching: Batching
