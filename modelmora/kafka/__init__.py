"""Kafka for `modelmora serve --kafka`: requests from topics, results and events to topics.

    config.py    the `[kafka]` table and `--kafka`: pure pydantic (the manifest validates with it)
    messages.py  the JSON records on the wire: request, result, dead letter, events
    handling.py  one request message through the server's scheduler: retries, dead letters
    lanes.py     one partition's messages: computed at once, published and committed in order
    consumer.py  the consumer group loop: fetch, pause when full, commit after acks, rebalances
    events.py    lifecycle, performance and audit events
    stats.py     the counters and the Prometheus collector of /metrics
    bridge.py    what the server's lifespan starts and stops

Only `config` and `messages` may be imported without the `kafka` extra; the rest imports aiokafka,
and the server imports it only when Kafka is configured.
"""
