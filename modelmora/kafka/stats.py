"""What the Kafka consumer counts, and the Prometheus collector that shows it on /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelmora.kafka.messages import ConsumerMetrics

Lag = Callable[[], Mapping[tuple[str, int], int]]
"""Records behind the end, per assigned (topic, partition)."""


@dataclass
class KafkaStats:
    messages_in: dict[str, int] = field(default_factory=dict)
    """Request records received, per topic."""
    results_out: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    """Records given up, per error code."""
    retries: int = 0
    """Tries again after a transient failure (of a request, or of publishing its answer)."""
    paused: int = 0
    """Times fetching paused: the model's queue or this server's `max_in_flight` was full."""

    def count_in(self, topic: str) -> None:
        self.messages_in[topic] = self.messages_in.get(topic, 0) + 1

    def count_dead(self, code: str) -> None:
        self.dead_lettered[code] = self.dead_lettered.get(code, 0) + 1

    def summary(self, lag: int) -> ConsumerMetrics:
        return ConsumerMetrics(
            messages_in=sum(self.messages_in.values()),
            results_out=self.results_out,
            dead_lettered=sum(self.dead_lettered.values()),
            retries=self.retries,
            lag=lag,
        )


class KafkaCollector(Collector):
    """Read at scrape time, so never stale."""

    def __init__(self, stats: KafkaStats, lag: Lag) -> None:
        self.stats, self.lag = stats, lag

    def collect(self) -> Iterator[Metric]:
        received = CounterMetricFamily(
            "modelmora_kafka_messages_in", "Request records received.", labels=["topic"]
        )
        for topic, count in self.stats.messages_in.items():
            received.add_metric([topic], count)
        dead = CounterMetricFamily(
            "modelmora_kafka_dead_lettered",
            "Records sent to the dead-letter topic.",
            labels=["code"],
        )
        for code, count in self.stats.dead_lettered.items():
            dead.add_metric([code], count)
        lag = GaugeMetricFamily(
            "modelmora_kafka_consumer_lag",
            "Records not yet committed, per assigned partition.",
            labels=["topic", "partition"],
        )
        for (topic, partition), behind in self.lag().items():
            lag.add_metric([topic, str(partition)], behind)
        yield from (received, dead, lag)
        yield CounterMetricFamily(
            "modelmora_kafka_results_out", "Result records acknowledged.", self.stats.results_out
        )
        yield CounterMetricFamily(
            "modelmora_kafka_retries", "Tries again after a transient failure.", self.stats.retries
        )
        yield CounterMetricFamily(
            "modelmora_kafka_pauses", "Times fetching paused for room.", self.stats.paused
        )
