"""Crash recovery: torn and corrupt tails (hypothesis), and a real kill -9 while appending."""

import os
import random
import re
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.storage.appender import CONFIG as APPENDER_CONFIG
from tests.storage.appender import batch_values
from zbroker import records as r
from zbroker.storage import PartitionLog

PROPS = {"segment.bytes": 400, "index.interval.bytes": 64}
REPO_ROOT = str(Path(__file__).resolve().parents[2])


def crash(log: PartitionLog) -> None:
    """Drop a log as a kill -9 would: descriptors closed, no indexes written, no marker."""
    for job in log._pending_jobs:
        job.done.wait(5)
    for seg in log._segments:
        seg.close()


def read_all(log: PartitionLog) -> bytes:
    out, off = [], log.log_start_offset
    while off < log.log_end_offset:
        data = log.read(off, 1 << 20)
        assert data, off
        out.append(data)
        last = None
        for h, _ in r.iter_batches(data):
            last = h
        off = last.next_offset
    return b"".join(out)


def segment_batches(directory: str) -> list[tuple[str, int, int]]:
    """(path, position, size) of every batch in every segment, in log order."""
    out = []
    for name in sorted(n for n in os.listdir(directory) if n.endswith(".log")):
        path = os.path.join(directory, name)
        data = Path(path).read_bytes()
        pos = 0
        while pos < len(data):
            size = r.validate_batch(data, pos).size
            out.append((path, pos, size))
            pos += size
    return out


@pytest.mark.timeout(90)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(1, 6), min_size=1, max_size=25),
       kind=st.sampled_from(["cut", "flip", "garbage", "zeros"]),
       where=st.floats(0, 1, exclude_max=True), noise=st.binary(min_size=1, max_size=200),
       bit=st.integers(0, 7), keep_recovery_point=st.booleans())
def test_recovery_keeps_complete_batches_and_never_serves_damage(
        counts, kind, where, noise, bit, keep_recovery_point):
    with tempfile.TemporaryDirectory() as d:
        log = PartitionLog(d, PROPS)
        for i, n in enumerate(counts):
            b = r.BatchBuilder("zlib" if i % 3 == 0 else "none")
            for j in range(n):
                b.append(b"%d.%d" % (i, j) * (1 + j), key=b"k" if j % 2 else None,
                         timestamp_ms=1000 + i)
            log.append(b.build(), leader_epoch=1)
        original = read_all(log)
        end_offset = log.log_end_offset
        crash(log)
        batches = segment_batches(d)
        starts = [0]
        for _, _, size in batches:
            starts.append(starts[-1] + size)
        last_path = batches[-1][0]

        if kind in ("garbage", "zeros"):  # junk after the last batch, as a torn append leaves
            with open(last_path, "ab") as f:
                f.write(noise if kind == "garbage" else bytes(len(noise)))
            survivors = len(batches)
        else:
            if keep_recovery_point:  # damage only what recovery is sure to scan: the last segment
                candidates = [k for k, b in enumerate(batches) if b[0] == last_path]
            else:                    # never flushed: every segment is scanned
                rp = os.path.join(d, "recovery-point-checkpoint")
                if os.path.exists(rp):
                    os.unlink(rp)
                candidates = list(range(len(batches)))
            k = candidates[int(where * len(candidates))]
            path, pos, size = batches[k]
            rel = int((where * len(candidates) % 1) * size)
            if kind == "cut":
                rel = max(rel, 1) if rel < size else rel
                os.truncate(path, pos + rel)
                survivors = k  # the torn batch goes, and every segment after this one
            else:
                if 12 <= rel < 16:
                    rel -= 4  # the leader epoch is outside the checksum: see segment.recover
                with open(path, "r+b") as f:
                    f.seek(pos + rel)
                    byte = f.read(1)[0]
                    f.seek(pos + rel)
                    f.write(bytes([byte ^ (1 << bit)]))
                survivors = k
            # batches of later segments cannot survive a hole before them
        event(f"{kind}: lost {len(batches) - survivors} of {len(batches)} batches"
              if survivors < len(batches) else f"{kind}: nothing lost")
        event(f"segments: {len({b[0] for b in batches})}")
        log = PartitionLog(d, PROPS)
        assert log.recovered_unclean
        kept = original[:starts[survivors]]
        expected_end = (r.read_header(original, starts[survivors]).base_offset
                        if survivors < len(batches) else end_offset)
        assert log.log_end_offset == expected_end
        assert read_all(log) == kept  # byte for byte: nothing damaged is served
        # and the log goes on from there
        res = log.append(r.build_batch([b"after"]), leader_epoch=2)
        assert res.base_offset == expected_end
        assert read_all(log) == kept + log.read(expected_end, 1 << 20)
        log.close()
        log = PartitionLog(d, PROPS)
        assert not log.recovered_unclean and log.log_end_offset == expected_end + 1
        log.close()


@pytest.mark.timeout(30)
def test_missing_indexes_and_checkpoints_after_a_crash(tmp_path):
    log = PartitionLog(str(tmp_path), PROPS)
    for i in range(60):
        log.append(r.build_batch([b"x%d" % i] * 3), leader_epoch=0)
    original = read_all(log)
    crash(log)
    for name in os.listdir(tmp_path):
        if name.endswith(".index") or name.endswith(".timeindex") or "checkpoint" in name:
            os.unlink(tmp_path / name)
    log = PartitionLog(str(tmp_path), PROPS)
    assert log.log_end_offset == 180 and read_all(log) == original
    for off in range(180):
        (h, _), = r.iter_batches(log.read(off, 1))
        assert h.base_offset <= off <= h.last_offset


def acked(proc) -> list[tuple[int, int]]:
    text = proc.log_path.read_text(errors="replace")
    return [(int(a), int(b)) for a, b in re.findall(r"^(\d+) (\d+)$", text, re.M)]


@pytest.mark.timeout(60)
def test_kill9_while_appending_reopens_cleanly(procs, tmp_path):
    directory = str(tmp_path / "topic-0")
    rng = random.Random(int(os.environ.get("ZB_TEST_SEED", time.time_ns())))
    expected: list[bytes] = []  # the value at every offset acknowledged so far, in order
    for run in range(3):
        proc = procs.python(f"appender{run}", "tests.storage.appender", directory, str(run),
                            env={"PYTHONPATH": REPO_ROOT})
        target = rng.randint(50, 400)
        deadline = time.monotonic() + 20
        while len(acked(proc)) < target:
            assert proc.popen.poll() is None, proc.log_tail()
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.01)
        time.sleep(rng.random() * 0.05)
        proc.kill9()
        acks = acked(proc)
        assert acks[0][0] == len(expected), "a run starts at the log end offset"
        for i, (base, last) in enumerate(acks):
            values = batch_values(run, i)
            assert last - base + 1 == len(values)
            expected += values

        log = PartitionLog(directory, APPENDER_CONFIG)
        assert log.recovered_unclean
        # every acknowledged batch is there; at most the batches written but not yet printed
        # (the one in flight when the signal came) are there too
        assert log.log_end_offset >= len(expected)
        data = read_all(log)
        got = [rec.value for rec in r.iter_records(data)]
        assert [rec.offset for rec in r.iter_records(data)] == list(range(len(got)))
        assert got[:len(expected)] == expected
        unacked = got[len(expected):]
        assert unacked == [] or unacked[0].startswith(b"%d-%d-" % (run, len(acks)))
        expected = got  # an unacknowledged but complete batch stays in the log
        if run == 1:
            log.close()  # one run starts from a clean shutdown
        else:
            crash(log)
