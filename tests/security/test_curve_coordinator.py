"""CurveZMQ on the coordinator through real processes: zb-keys writes pyzmq's certificate
files; a coordinator with security.protocol=CURVE serves a client with an authorized key, and
refuses, during the handshake and with a sentence naming the address and the reason, a client
without CURVE, one whose key is not authorized, and one that expects another server key; a
broker registers with its own key; an ensemble's members authenticate each other, and a
stranger's peer messages never reach Raft."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.client import CoordinatorClient
from tests.procs import BrokerProc, CoordinatorProc, Ensemble, wait_until
from zbroker import errors

pytestmark = pytest.mark.timeout(90)
BIN = Path(sys.executable).parent


def keys(tmp_path, *names) -> Path:
    d = tmp_path / "keys"
    for name in names:
        r = subprocess.run([str(BIN / "zb-keys"), "--name", name, "--dir", str(d)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert f"{name}.key" in r.stdout
    return d


def authorize(d: Path, *names) -> Path:
    auth = d / "authorized"
    auth.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(d / f"{name}.key", auth / f"{name}.key")
    return auth


def curve_settings(d: Path, auth: Path) -> dict:
    return {"security.protocol": "CURVE",
            "curve.server.secret.key.file": str(d / "server.key_secret"),
            "curve.authorized.keys.dir": str(auth)}


def client(address, d, name, server="server", **kw):
    return CoordinatorClient(address, session_timeout_ms=4000, connect_timeout_ms=3000,
                             security_protocol="CURVE",
                             curve_secret_key_file=str(d / f"{name}.key_secret"),
                             curve_server_key_file=str(d / f"{server}.key"), **kw)


def test_zb_keys_writes_a_pair_and_refuses_to_overwrite(tmp_path):
    d = keys(tmp_path, "alice")
    assert (d / "alice.key").read_text().count("public-key") == 1
    assert "secret-key" in (d / "alice.key_secret").read_text()
    assert (d / "alice.key_secret").stat().st_mode & 0o077 == 0
    r = subprocess.run([str(BIN / "zb-keys"), "--name", "alice", "--dir", str(d)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "exists already" in r.stderr and "Traceback" not in r.stderr


def test_a_curve_coordinator_serves_authorized_keys_and_refuses_the_rest(procs, tmp_path):
    d = keys(tmp_path, "server", "alice", "bob", "broker-1")
    auth = authorize(d, "alice", "broker-1")
    coord = CoordinatorProc(procs, tmp_path / "c", curve_settings(d, auth)).start()
    with client(coord.address, d, "alice") as c:
        c.create("/k", b"v")
        assert c.get("/k")[0] == b"v"
    refusals = {
        "plaintext": dict(),
        "bob": dict(security_protocol="CURVE", curve_secret_key_file=str(d / "bob.key_secret"),
                    curve_server_key_file=str(d / "server.key")),
        "wrong server key": dict(security_protocol="CURVE",
                                 curve_secret_key_file=str(d / "alice.key_secret"),
                                 curve_server_key_file=str(d / "bob.key")),
    }
    said = {}
    for what, kw in refusals.items():
        started = time.monotonic()
        with pytest.raises(errors.ZbError) as e:
            CoordinatorClient(coord.address, session_timeout_ms=4000, connect_timeout_ms=5000,
                              **kw)
        said[what] = str(e.value)
        assert time.monotonic() - started < 4, f"{what}: only after the connect timeout"
        assert coord.address in said[what], said[what]
    assert "wants CURVE" in said["plaintext"]
    assert "refused our CURVE key" in said["bob"]
    assert "public key" in said["wrong server key"]
    # a broker presents its own key to the coordinator and registers
    b = BrokerProc(procs, 1, coord.address, tmp_path / "b1", {
        "curve.client.secret.key.file": str(d / "broker-1.key_secret"),
        "coordinator.curve.server.key.file": str(d / "server.key")}).start()
    with client(coord.address, d, "alice") as c:
        wait_until(lambda: c.children("/brokers/ids") == ["1"], 20, "the broker registered")
    assert "Traceback" not in coord.proc.log_text()
    assert b.alive
    # the tools take Kafka's --command-config
    cc = tmp_path / "client.properties"
    cc.write_text(f"security.protocol=CURVE\ncurve.secret.key.file={d / 'alice.key_secret'}\n"
                  f"curve.server.key.file={d / 'server.key'}\n")
    shell = subprocess.run([str(BIN / "zb-coordinator-shell"), "--coordinator", coord.address,
                            "--command-config", str(cc), "get", "/k"],
                           capture_output=True, text=True, timeout=30)
    assert shell.returncode == 0 and "v" in shell.stdout, shell.stdout + shell.stderr
    quorum = subprocess.run([str(BIN / "zb-metadata-quorum"), "--coordinator", coord.address,
                             "--command-config", str(cc), "describe", "--status"],
                            capture_output=True, text=True, timeout=30)
    assert quorum.returncode == 0 and "LeaderId:" in quorum.stdout, quorum.stderr
    plain = subprocess.run([str(BIN / "zb-coordinator-shell"), "--coordinator", coord.address,
                            "get", "/k"], capture_output=True, text=True, timeout=30)
    assert plain.returncode == 1 and "wants CURVE" in plain.stderr, plain.stderr
    assert "Traceback" not in plain.stderr
    cc.write_text("security.protocol=CURVE\nsasl.mechanism=PLAIN\n")
    bad = subprocess.run([str(BIN / "zb-metadata-quorum"), "--coordinator", coord.address,
                          "--command-config", str(cc), "describe", "--status"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "sasl.mechanism" in bad.stderr, bad.stderr


def test_authorized_keys_are_picked_up_without_a_restart(procs, tmp_path):
    d = keys(tmp_path, "server", "alice", "bob")
    auth = authorize(d, "alice")
    coord = CoordinatorProc(procs, tmp_path / "c", curve_settings(d, auth)).start()
    with pytest.raises(errors.AuthenticationFailed):
        client(coord.address, d, "bob").close()
    shutil.copy(d / "bob.key", auth / "bob.key")           # bob is let in ...
    wait_until(lambda: _connects(coord.address, d, "bob"), 15, "bob's key picked up")
    (auth / "alice.key").unlink()                           # ... and alice no longer
    wait_until(lambda: not _connects(coord.address, d, "alice"), 15, "alice's key dropped")
    assert "authorized keys changed" in coord.proc.log_text()


def _connects(address, d, name):
    try:
        c = client(address, d, name)
    except errors.AuthenticationFailed:
        return False
    c.close()
    return True


def test_a_curve_ensemble_replicates_and_a_stranger_cannot_reach_raft(procs, tmp_path):
    import zmq
    d = keys(tmp_path, "server", "alice", "member", "mallory")
    auth = authorize(d, "alice", "member")
    settings = {**curve_settings(d, auth),
                "curve.client.secret.key.file": str(d / "member.key_secret")}
    e = Ensemble(procs, tmp_path / "ens", 3, settings).start()
    with client(e.address, d, "alice") as c:
        c.create("/e", b"1")
        leader = e.leader_id()
        term = c.describe_quorum()["term"]
        # mallory, with a key of her own, and a plaintext stranger: refused at the handshake
        ctx = zmq.Context()
        for sec in ("mallory", None):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if sec:
                from zbroker.security import ClientSecurity
                ClientSecurity("CURVE", str(d / f"{sec}.key_secret"),
                               str(d / "server.key")).apply(s)
            s.connect(f"tcp://127.0.0.1:{e.peer_ports[leader]}")
            s.send(b"anything")
            s.close()
        ctx.term()
        e.member(leader).kill9()
        while True:                         # the others elect one of themselves, over CURVE
            try:
                c.set("/e", b"2")
                break
            except errors.ConnectionLoss:   # (in flight when the leader died: try again)
                pass
        assert c.get("/e")[0] == b"2" and c.describe_quorum()["term"] > term
    for m in e.members.values():
        assert '"refused a message on the peer port"' not in m.proc.log_text()
