"""Client benchmark: producer and consumer records/s against one broker (acks=1, 100-byte
records, one partition), and what idempotence costs the producer (acks=all, off against on).

    python benchmarks/bench_produce.py

Starts its own coordinator and broker on free loopback ports with temporary data directories,
then: the producer (acks=1, linger_ms=5, batch_size BENCH_BATCH_BYTES, default 16384 as
Kafka's) calls ``send()`` once per record for BENCH_RECORDS records (default 2,000,000) and
flushes; a consumer reads them all back from the beginning. Then the same producer with
acks=all, idempotence off and on in turn, BENCH_ROUNDS (3) times each, each into a fresh topic;
the figures are the medians. Then acks=1 against a second broker with security.protocol=CURVE
beside the plaintext one, in turn (half the records, medians of BENCH_ROUNDS), and the same
against a broker serving Prometheus metrics (metrics.listener). Stops everything and
prints the figures last, as one line of name=value pairs. Client and broker share this
machine's cores, as they would in the quick start.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import AdminClient, Consumer, Producer  # noqa: E402
from tests.procs import BrokerProc, CoordinatorProc, Procs  # noqa: E402

RECORDS = int(os.environ.get("BENCH_RECORDS", "2000000"))
RECORD_BYTES = 100
BATCH_BYTES = int(os.environ.get("BENCH_BATCH_BYTES", "16384"))    # Kafka's batch.size default
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def produce(bootstrap: str, topic: str, **settings) -> tuple[float, float]:
    value = b"x" * RECORD_BYTES
    settings = {"acks": 1, **settings}
    with Producer(bootstrap, linger_ms=5, batch_size=BATCH_BYTES, **settings) as p:
        send = p.send
        send(topic, value).result(30)              # metadata and connection are warm
        start = time.perf_counter()
        cpu0, thread0 = time.process_time(), time.thread_time()
        for _ in range(RECORDS):
            send(topic, value)
        thread_s = time.thread_time() - thread0
        p.flush()
        elapsed = time.perf_counter() - start
        cpu_s = time.process_time() - cpu0
        last = send(topic, value).result(30)
    assert last.offset == RECORDS + 1, last
    print(f"  CPU per record: send() {thread_s / RECORDS * 1e6:.2f} us, whole client "
          f"{cpu_s / RECORDS * 1e6:.2f} us", flush=True)
    return RECORDS / elapsed, elapsed


def consume(bootstrap: str, topic: str) -> tuple[float, float]:
    total = RECORDS + 2
    n = 0
    with Consumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                  max_poll_records=10000) as c:
        got = c.poll(10000, max_records=1)           # connection and first fetch are warm
        n += sum(len(v) for v in got.values())
        start = time.perf_counter()
        cpu0, thread0 = time.process_time(), time.thread_time()
        deadline = time.monotonic() + 120
        while n < total and time.monotonic() < deadline:
            for recs in c.poll(1000).values():
                n += len(recs)
        elapsed = time.perf_counter() - start
        thread_s, cpu_s = time.thread_time() - thread0, time.process_time() - cpu0
    assert n == total, f"read {n} of {total} records"
    print(f"  CPU per record: poll() {thread_s / total * 1e6:.2f} us, whole client "
          f"{cpu_s / total * 1e6:.2f} us", flush=True)
    return (total - 1) / elapsed, elapsed


def side_by_side(procs: Procs, tmp: Path, name: str, plain_broker, settings: dict,
                 client: dict, security=None) -> tuple[float, float]:
    """acks=1 records/s to a broker started with ``settings`` (in a cluster of its own) against
    the plain one, in turn, BENCH_ROUNDS times each (half the records), each into a fresh topic:
    the medians (with, without)."""
    coord = CoordinatorProc(procs, tmp / f"coordinator-{name}").start()
    other = BrokerProc(procs, 1, coord.address, tmp / f"broker-{name}",
                       {"log.level": "WARNING", **settings})
    other.security = security
    other.start()
    global RECORDS
    full, RECORDS = RECORDS, RECORDS // 2
    print(f"producer, acks=1, {RECORDS:,} records, {name} off and on in turn, {ROUNDS} times ...",
          flush=True)
    rates = {False: [], True: []}
    try:
        for r in range(ROUNDS):
            for on in (False, True):
                b, kw = (other, client) if on else (plain_broker, {})
                topic = f"{name}-{'on' if on else 'off'}-{r}"
                with AdminClient(b.address, **kw) as admin:
                    admin.create_topic(topic, 1, 1)
                rate, _ = produce(b.address, topic, **kw)
                rates[on].append(rate)
                print(f"  {name} {'on ' if on else 'off'}: {rate:,.0f} records/s", flush=True)
    finally:
        RECORDS = full
    return statistics.median(rates[True]), statistics.median(rates[False])


def curve_figures(procs: Procs, tmp: Path, plain_broker) -> tuple[float, float]:
    from zbroker.security import ClientSecurity, create_keys
    keys = tmp / "keys"
    authorized = keys / "authorized"
    authorized.mkdir(parents=True)
    create_keys(str(keys), "server")
    create_keys(str(authorized), "bench")
    client = dict(security_protocol="CURVE",
                  curve_secret_key_file=str(authorized / "bench.key_secret"),
                  curve_server_key_file=str(keys / "server.key"))
    return side_by_side(procs, tmp, "CURVE", plain_broker, {
        "security.protocol": "CURVE",
        "curve.server.secret.key.file": str(keys / "server.key_secret"),
        "curve.authorized.keys.dir": str(authorized),
        "curve.client.secret.key.file": str(authorized / "bench.key_secret")}, client,
        ClientSecurity("CURVE", client["curve_secret_key_file"],
                       client["curve_server_key_file"]))


def metrics_figures(procs: Procs, tmp: Path, plain_broker) -> tuple[float, float]:
    from tests.procs import free_port
    return side_by_side(procs, tmp, "metrics", plain_broker,
                        {"metrics.listener": f"http://127.0.0.1:{free_port()}"}, {})


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-produce-") as tmp:
        procs = Procs(Path(tmp))
        try:
            coord = CoordinatorProc(procs, Path(tmp) / "coordinator").start()
            broker = BrokerProc(procs, 1, coord.address, Path(tmp) / "broker",
                                {"log.level": "WARNING"}).start()
            with AdminClient(broker.address) as admin:
                admin.create_topic("bench", 1, 1)
            print(f"producer: {RECORDS:,} records of {RECORD_BYTES} bytes, send() per record, "
                  f"acks=1 ...", flush=True)
            p_rate, p_s = produce(broker.address, "bench")
            print(f"  {p_rate:,.0f} records/s ({p_rate * RECORD_BYTES / 1e6:.1f} MB/s) in "
                  f"{p_s:.1f} s", flush=True)
            print("consumer: reading them back from the beginning ...", flush=True)
            c_rate, c_s = consume(broker.address, "bench")
            print(f"  {c_rate:,.0f} records/s ({c_rate * RECORD_BYTES / 1e6:.1f} MB/s) in "
                  f"{c_s:.1f} s", flush=True)
            print(f"producer, acks=all, idempotence off and on in turn, {ROUNDS} times ...",
                  flush=True)
            rates = {False: [], True: []}
            with AdminClient(broker.address) as admin:
                for r in range(ROUNDS):
                    for idem in (False, True):
                        topic = f"idem-{'on' if idem else 'off'}-{r}"
                        admin.create_topic(topic, 1, 1)
                        rate, _ = produce(broker.address, topic, acks="all",
                                          enable_idempotence=idem)
                        rates[idem].append(rate)
                        print(f"  idempotence {'on ' if idem else 'off'}: {rate:,.0f} "
                              f"records/s", flush=True)
            idem_on, idem_off = statistics.median(rates[True]), statistics.median(rates[False])
            curve_on, curve_off = curve_figures(procs, Path(tmp), broker)
            metrics_on, metrics_off = metrics_figures(procs, Path(tmp), broker)
        finally:
            procs.cleanup()
    print(f"producer_records_per_s={p_rate:.0f} producer_mb_per_s={p_rate * RECORD_BYTES / 1e6:.1f}"
          f" consumer_records_per_s={c_rate:.0f} "
          f"consumer_mb_per_s={c_rate * RECORD_BYTES / 1e6:.1f} records={RECORDS} "
          f"record_bytes={RECORD_BYTES} batch_bytes={BATCH_BYTES} linger_ms=5 acks=1 partitions=1 "
          f"acks_all_records_per_s={idem_off:.0f} idempotent_records_per_s={idem_on:.0f} "
          f"idempotence_cost_pct={(1 - idem_on / idem_off) * 100:.1f} "
          f"curve_off_records_per_s={curve_off:.0f} curve_on_records_per_s={curve_on:.0f} "
          f"curve_kept_pct={curve_on / curve_off * 100:.1f} "
          f"metrics_off_records_per_s={metrics_off:.0f} metrics_on_records_per_s={metrics_on:.0f} "
          f"metrics_cost_pct={(1 - metrics_on / metrics_off) * 100:.1f}")


if __name__ == "__main__":
    main()
