"""Command-line tools built on the client library, with Kafka's tool names and flags:
``zb-topics``, ``zb-console-producer``, ``zb-console-consumer``, ``zb-producer-perf-test``,
``zb-consumer-perf-test``. Each module has ``main(argv=None) -> int``."""
