import pytest

from tests.procs import CoordinatorProc, Procs


@pytest.fixture
def procs(tmp_path):
    """Start real processes; all of them are killed with SIGKILL and reaped at teardown."""
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def coordinator(procs, tmp_path):
    """A running coordinator process (tick 100 ms) with its own data directory."""
    return CoordinatorProc(procs, tmp_path / "coordinator-data").start()


@pytest.fixture
def coordinator_client(coordinator):
    from coordinator.client import CoordinatorClient
    c = CoordinatorClient(coordinator.address, session_timeout_ms=4000)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster(procs, tmp_path):
    """A factory: ``cluster(n_brokers=3, racks=None, overrides=None, coordinators=1,
    **settings)`` starts a coordinator (an ensemble of ``coordinators`` members) and brokers 1..n (real processes, killed at teardown) and returns a
    ``tests.procs.Cluster`` (.coordinator, .brokers, .bootstrap, .broker(id), .metadata(),
    .controller_id(), .create_topic(), .wait_for()) once every broker sees every other and a
    controller. Broker settings come from ``overrides`` ({"num.partitions": "3"}) and keyword
    arguments with dots spelled as underscores (num_partitions=3)."""
    from tests.procs import BrokerProc, Cluster
    made = []

    def make(n_brokers: int = 3, racks: list | None = None, overrides: dict | None = None,
             coordinators: int = 1, **settings) -> Cluster:
        k = len(made)
        if coordinators > 1:        # an ensemble: .coordinator is a tests.procs.Ensemble
            from tests.procs import Ensemble
            coord = Ensemble(procs, tmp_path / f"cluster{k}-ensemble", coordinators).start()
        else:
            coord = CoordinatorProc(procs, tmp_path / f"cluster{k}-coordinator").start()
        common = {key.replace("_", "."): str(v).lower() if isinstance(v, bool) else str(v)
                  for key, v in settings.items()}
        common.update(overrides or {})
        brokers = []
        for i in range(1, n_brokers + 1):
            o = dict(common)
            if racks:
                o["broker.rack"] = racks[i - 1]
            brokers.append(BrokerProc(procs, i, coord.address,
                                      tmp_path / f"cluster{k}-broker{i}", o))
        for b in brokers:
            b.start(wait=False)
        for b in brokers:
            try:
                b.wait_ready()
            except Exception as e:
                raise RuntimeError(f"broker {b.broker_id} did not start: {e}\n"
                                   f"{b.proc.log_tail()}") from None
        c = Cluster(coord, brokers)
        c.wait_ready()
        made.append(c)
        return c
    return make


@pytest.fixture
def netns_hosts():
    """``netns_hosts(n)``: n test hosts as network namespaces (tests/netns.py), removed at the
    end; the test is skipped, with the reason, where namespaces cannot be made."""
    from tests.netns import Hosts, why_not_available
    made = []

    def make(n: int):
        reason = why_not_available()
        if reason:
            pytest.skip(f"multi-host test needs network namespaces: {reason}")
        hosts = Hosts(n)
        made.append(hosts)
        return hosts
    try:
        yield make
    finally:
        for hosts in made:
            hosts.destroy()
