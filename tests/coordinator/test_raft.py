"""The coordinator's Raft state machine (coordinator/raft.py) without processes: a seeded
simulation of 3 and 5 members with a clock it moves, a network that drops, delays (so
reorders), duplicates and partitions messages, members that crash at any point of an effect
list (what was persisted before the crash survives, nothing after it) and restart from their
disk alone, and snapshots. After every event it checks Raft's safety properties; after the
faults heal, that the ensemble converges and keeps committing."""

import heapq
import itertools
import random

import pytest

from coordinator import raft
from coordinator.raft import (Append, AppendLog, Committed, InstallSnapshot, NotLeader, Persist,
                              RaftCore, ReadFailed, ReadReady, RestoreSnapshot, Role,
                              RoleChanged, Send, SendSnapshot)

pytestmark = pytest.mark.timeout(120)

ELECTION_S = 0.3
HEARTBEAT_S = 0.05


class Broken(AssertionError):
    pass


class Disk:
    """What a member has durably: term, vote, snapshot and the log after it."""

    def __init__(self):
        self.term, self.voted_for = 0, None
        self.snapshot_index, self.snapshot_term, self.snapshot = 0, 0, ()
        self.log: list = []


class Member:
    def __init__(self, sim: "Sim", mid: int):
        self.sim, self.id = sim, mid
        self.disk = Disk()
        self.up = True
        self.applied: list = []             # the state: committed data in order
        self.core = self._boot()

    def _boot(self) -> RaftCore:
        d = self.disk
        self.applied = list(d.snapshot)
        return RaftCore(self.id, self.sim.ids, election_timeout_s=ELECTION_S,
                        heartbeat_s=HEARTBEAT_S, rng=random.Random(self.sim.rng.random()),
                        term=d.term, voted_for=d.voted_for, log=list(d.log),
                        snapshot_index=d.snapshot_index, snapshot_term=d.snapshot_term,
                        now=self.sim.now)

    def crash(self):
        self.up = False

    def restart(self):
        self.up = True
        self.core = self._boot()

    def carry_out(self, effects: list) -> None:
        sim = self.sim
        # a crash may cut an effect list anywhere: what came before it is on disk
        cut = len(effects) + 1
        if sim.faults and not sim.healed and effects and sim.rng.random() < 0.01:
            cut = sim.rng.randrange(len(effects))
        for i, e in enumerate(effects):
            if i == cut:
                sim.trace.append(f"{sim.now:.3f} {self.id} crashes after {i} of its effects")
                self.crash()
                sim.at(sim.rng.uniform(0.05, 1.0), sim.restart, self.id)
                return
            self._one(e)

    def _one(self, e) -> None:
        sim, d, core = self.sim, self.disk, self.core
        if isinstance(e, Persist):
            if e.term < d.term:
                raise Broken(f"member {self.id}'s term went back from {d.term} to {e.term}")
            d.term, d.voted_for = e.term, e.voted_for
        elif isinstance(e, AppendLog):
            at = e.first_index - d.snapshot_index - 1
            if at < 0 or at > len(d.log):
                raise Broken(f"member {self.id} appends at {e.first_index} past its disk")
            del d.log[at:]
            d.log.extend(e.entries)
        elif isinstance(e, RestoreSnapshot):
            d.snapshot_index, d.snapshot_term = e.last_index, e.last_term
            d.snapshot = e.data
            d.log = list(core.log)      # (the core kept what follows it when it matched)
            self.applied = list(e.data)
        elif isinstance(e, Committed):
            self._apply(e.index)
        elif isinstance(e, Send):
            sim.send(self.id, e.to, e.message)
        elif isinstance(e, SendSnapshot):
            sim.send(self.id, e.to, InstallSnapshot(core.term, self.id, d.snapshot_index,
                                                    d.snapshot_term, d.snapshot))
        elif isinstance(e, RoleChanged):
            if e.role is Role.LEADER:
                sim.checker.became_leader(self, e.term)
        elif isinstance(e, ReadReady):
            sim.checker.read_ready(self, e.token, e.index)
        elif isinstance(e, ReadFailed):
            sim.reads.pop(e.token, None)
        else:
            raise AssertionError(e)

    def _apply(self, index: int) -> None:
        core = self.core
        while len(self.applied) < index:
            i = len(self.applied) + 1
            term = core.term_at(i)
            data = core.entries_from(i, 1)[0][1]
            self.sim.checker.committed(self, i, term, data)
            self.applied.append(data)
        # now and then a snapshot of the applied state
        if self.sim.rng.random() < 0.05 and index > core.snapshot_index:
            term = core.term_at(index)
            self.disk.snapshot_index, self.disk.snapshot_term = index, term
            self.disk.snapshot = tuple(self.applied[:index])
            del self.disk.log[:index - core.snapshot_index]
            core.compacted(index, term)


class Checker:
    def __init__(self, sim):
        self.sim = sim
        self.leaders: dict[int, int] = {}       # term -> leader
        self.log: dict[int, tuple] = {}         # index -> (term, data) committed anywhere
        self.acked: dict[object, int] = {}      # proposal data -> index, when committed

    def fail(self, what):
        raise Broken(f"seed {self.sim.seed}: {what}\n" + "\n".join(self.sim.trace[-40:]))

    def became_leader(self, m: Member, term: int):
        other = self.leaders.setdefault(term, m.id)
        if other != m.id:
            self.fail(f"two leaders in term {term}: {other} and {m.id}")
        for i, (t, data) in self.log.items():      # leader completeness
            if i > m.core.snapshot_index and (m.core.term_at(i), m.core.entries_from(i, 1)[0][1]
                                              if m.core.term_at(i) is not None else None) \
                    != (t, data):
                self.fail(f"leader {m.id} of term {term} lacks committed entry {i}")

    def committed(self, m: Member, index: int, term: int, data):
        seen = self.log.setdefault(index, (term, data))
        if seen != (term, data):
            self.fail(f"member {m.id} applies {(term, data)} at {index}; {seen} was committed")
        if data is not None:
            self.acked.setdefault(data, index)

    def read_ready(self, m: Member, token, index: int):
        issued = self.sim.reads.pop(token, None)
        if issued is None:
            return
        if index < issued:
            self.fail(f"read {token} at {m.id} answered at index {index}, but {issued} was "
                      f"committed before it was asked")
        self.sim.reads_done += 1


class Sim:
    def __init__(self, seed: int, n: int = 3, faults: bool = True):
        self.seed, self.rng, self.faults = seed, random.Random(seed), faults
        self.now = 0.0
        self.ids = list(range(1, n + 1))
        self.queue: list = []
        self.seq = itertools.count()
        self.trace: list[str] = []
        self.cut: set[frozenset] = set()
        self.drop_p = self.rng.choice([0.0, 0.02, 0.1]) if faults else 0.0
        self.checker = Checker(self)
        self.members = {i: Member(self, i) for i in self.ids}
        self.values = itertools.count()
        self.reads: dict[object, int] = {}
        self.reads_done = 0
        self.healed = False

    def at(self, delay, fn, *args):
        heapq.heappush(self.queue, (self.now + delay, next(self.seq), fn, args))

    def send(self, src, dst, msg):
        if frozenset((src, dst)) in self.cut or self.rng.random() < self.drop_p:
            return
        for _ in range(2 if self.faults and self.rng.random() < 0.02 else 1):
            delay = 0.001 + self.rng.expovariate(1 / 0.003)
            if self.rng.random() < 0.03:
                delay += self.rng.uniform(0.05, 0.4)
            self.at(delay, self.deliver, dst, msg)

    def deliver(self, dst, msg):
        m = self.members[dst]
        if m.up:
            m.carry_out(m.core.receive(msg, self.now))

    def tick(self, mid):
        m = self.members[mid]
        if m.up:
            m.carry_out(m.core.tick(self.now))
        self.at(0.01, self.tick, mid)

    def client(self):
        leaders = [m for m in self.members.values() if m.up and m.core.role is Role.LEADER]
        for m in leaders:
            if self.rng.random() < 0.7:
                try:
                    _, effects = m.core.propose(next(self.values), self.now)
                except NotLeader:
                    continue
                m.carry_out(effects)
            else:
                token = ("read", next(self.seq))
                self.reads[token] = max((i for i in self.checker.log), default=0)
                if m.up:
                    m.carry_out(m.core.read(token, self.now))
        if not self.healed or self.now < self.end - 1.0:
            self.at(self.rng.uniform(0.005, 0.03), self.client)

    def fault(self):
        if self.healed:
            return
        kind = self.rng.choice(["crash", "cut", "cut", "none"])
        victim = self.members[self.rng.choice(self.ids)]
        length = self.rng.uniform(0.1, 2.0)
        if kind == "crash" and victim.up:
            self.trace.append(f"{self.now:.3f} crash {victim.id} for {length:.2f}s")
            victim.crash()
            self.at(length, self.restart, victim.id)
        elif kind == "cut":
            others = [i for i in self.ids if i != victim.id]
            links = {frozenset((victim.id, o)) for o in others if self.rng.random() < 0.8}
            self.trace.append(f"{self.now:.3f} cut {sorted(map(sorted, links))} for {length:.2f}s")
            self.cut |= links
            self.at(length, self.uncut, links)
        self.at(self.rng.uniform(0.2, 1.5), self.fault)

    def restart(self, mid):
        m = self.members[mid]
        if not m.up:
            self.trace.append(f"{self.now:.3f} restart {mid}")
            m.restart()

    def uncut(self, links):
        self.cut -= links

    def heal(self):
        self.healed = True
        self.trace.append(f"{self.now:.3f} heal")
        self.cut.clear()
        self.drop_p = 0.0
        for m in self.members.values():
            if not m.up:
                m.restart()

    def run(self, seconds: float = 8.0) -> "Sim":
        self.healed = False
        self.end = seconds + 4.0
        for i in self.ids:
            self.at(self.rng.uniform(0, 0.01), self.tick, i)
        self.at(0.1, self.client)
        if self.faults:
            self.at(0.5, self.fault)
        self.at(seconds, self.heal)
        while self.queue and self.now < self.end:
            t, _, fn, args = heapq.heappop(self.queue)
            self.now = t
            try:
                fn(*args)
            except raft.RaftBug as e:
                self.checker.fail(f"RaftBug: {e}")
        self.check_end()
        return self

    def check_end(self):
        ms = list(self.members.values())
        leaders = [m for m in ms if m.core.role is Role.LEADER]
        if len(leaders) != 1:
            self.checker.fail(f"after healing {len(leaders)} leaders")
        lead = leaders[0].core
        for m in ms:
            if m.core.commit_index != lead.commit_index or len(m.applied) != lead.commit_index:
                self.checker.fail(f"member {m.id} did not catch up: commit "
                                  f"{m.core.commit_index}, applied {len(m.applied)}, leader's "
                                  f"{lead.commit_index}")
            if m.applied != ms[0].applied:
                self.checker.fail(f"member {m.id}'s state differs from member {ms[0].id}'s")
        if len(self.checker.acked) < 5:
            self.checker.fail(f"only {len(self.checker.acked)} proposals committed")


def test_a_quiet_ensemble_elects_one_leader_and_commits():
    sim = Sim(1, faults=False).run(3.0)
    assert len(sim.checker.acked) > 50 and sim.reads_done > 10
    assert len(sim.checker.leaders) == 1


@pytest.mark.parametrize("n", [3, 5])
def test_safety_over_many_seeds(n):
    committed = reads = 0
    for seed in range(120 if n == 3 else 60):
        sim = Sim(seed, n).run()
        committed += len(sim.checker.acked)
        reads += sim.reads_done
    assert committed > 1000 and reads > 100


def test_a_member_far_behind_catches_up_by_snapshot():
    sim = Sim(7, faults=False)
    sim.healed = False
    sim.end = 6.0
    for i in sim.ids:
        sim.at(0.001 * i, sim.tick, i)
    sim.at(0.1, sim.client)
    sim.at(0.5, lambda: sim.members[3].crash())
    sim.at(3.0, sim.heal)
    while sim.queue and sim.now < sim.end:
        t, _, fn, args = heapq.heappop(sim.queue)
        sim.now = t
        fn(*args)
        if sim.now > 2.9 and sim.members[3].up is False:
            for m in sim.members.values():       # the others compact everything they applied
                c = m.core
                if m.up and c.commit_index > c.snapshot_index:
                    m.disk.snapshot_index, m.disk.snapshot_term = c.commit_index, \
                        c.term_at(c.commit_index)
                    m.disk.snapshot = tuple(m.applied[:c.commit_index])
                    del m.disk.log[:c.commit_index - c.snapshot_index]
                    c.compacted(c.commit_index, c.term_at(c.commit_index))
    sim.check_end()
    assert sim.members[3].disk.snapshot_index > 0


def test_a_deposed_leader_answers_no_read():
    a = RaftCore(1, [1, 2, 3], rng=random.Random(1))
    out = a.tick(10.0)                       # pre-vote
    out = a.receive(raft.VoteResponse(1, 2, True, True), 10.0)
    out = a.receive(raft.VoteResponse(1, 2, True, False), 10.0)
    assert a.role is Role.LEADER
    out = a.read("r", 10.0)
    assert not [e for e in out if isinstance(e, ReadReady)]
    # a newer term appears before any follower confirmed the round: the read fails
    out = a.receive(Append(2, 3, 0, 0, (), 0, 0), 10.1)
    assert a.role is Role.FOLLOWER
    assert [e for e in out if isinstance(e, ReadFailed)] == [ReadFailed("r", 3)]


def test_votes_are_persisted_before_they_are_sent():
    a = RaftCore(2, [1, 2, 3], rng=random.Random(1))
    out = a.receive(raft.VoteRequest(1, 1, 0, 0, False), 0.0)
    kinds = [type(e).__name__ for e in out]
    assert kinds.index("Persist") < kinds.index("Send")
    assert a.voted_for == 1
    out = a.receive(raft.VoteRequest(1, 3, 0, 0, False), 0.0)      # one vote per term
    assert [e.message.granted for e in out if isinstance(e, Send)] == [False]


def test_a_cut_off_member_does_not_disrupt_the_leader_when_it_returns():
    """Pre-vote: a member that timed out alone asks at term + 1 without taking it; members
    that hear from their leader refuse, so the leader's term stands."""
    b = RaftCore(2, [1, 2, 3], rng=random.Random(1))
    b.receive(Append(5, 1, 0, 0, (), 0, 0), 0.0)                  # follows leader 1, term 5
    out = b.receive(raft.VoteRequest(6, 3, 0, 0, True), 0.1)      # 3 was cut off
    assert [e.message.granted for e in out if isinstance(e, Send)] == [False]
    assert b.term == 5 and b.leader == 1


def elect(core: RaftCore, now: float = 10.0) -> None:
    """Make ``core`` leader: its pre-vote and vote granted by member 2."""
    core.tick(now)
    core.receive(raft.VoteResponse(core.term + 1, 2, True, True), now)
    core.receive(raft.VoteResponse(core.term, 2, True, False), now)
    assert core.role is Role.LEADER


def test_a_vote_survives_a_crash():
    disk = Disk()
    a = RaftCore(2, [1, 2, 3], rng=random.Random(1))
    for e in a.receive(raft.VoteRequest(1, 1, 0, 0, False), 0.0):
        if isinstance(e, Persist):
            disk.term, disk.voted_for = e.term, e.voted_for
    again = RaftCore(2, [1, 2, 3], rng=random.Random(2), term=disk.term,
                     voted_for=disk.voted_for)
    out = again.receive(raft.VoteRequest(1, 3, 0, 0, False), 0.1)
    assert [e.message.granted for e in out if isinstance(e, Send)] == [False]


def test_entries_of_an_earlier_term_commit_only_through_one_of_the_leaders():
    """Raft's figure 8: a majority holding an entry of an older term does not commit it."""
    a = RaftCore(1, [1, 2, 3], rng=random.Random(1), term=3, log=[(1, "a"), (2, "b")])
    elect(a)
    assert a.term == 4 and a.last_index == 3           # the no-op of term 4
    a.receive(raft.AppendResponse(4, 2, True, 2, 0, 0), 10.0)
    assert a.commit_index == 0
    out = a.receive(raft.AppendResponse(4, 2, True, 3, 0, 0), 10.0)
    assert a.commit_index == 3 and Committed(3) in out


def test_a_closed_connection_to_the_leader_starts_an_election_soon_but_safely():
    """peer_lost: the follower stops counting the leader as heard from and stands within a few
    heartbeats, not a whole election timeout; while another member still hears the leader,
    the pre-vote fails and no term moves."""
    b = RaftCore(2, [1, 2, 3], rng=random.Random(1), election_timeout_s=0.3, heartbeat_s=0.05)
    b.receive(Append(5, 1, 0, 0, (), 0, 0), 0.0)
    assert b.tick(0.1) == []                                     # hears its leader
    out = b.peer_lost(3, 0.1)                                    # not the leader: nothing
    assert out == [] and b.leader == 1
    out = b.peer_lost(1, 0.1)
    assert b.leader is None and b.term == 5
    out = b.tick(0.26)                                           # within 3 heartbeats
    asks = [e.message for e in out if isinstance(e, Send)]
    assert asks and all(m.pre_vote and m.term == 6 for m in asks) and b.term == 5
    # member 3 still hears leader 1, so it refuses the pre-vote: term 5 stands
    c = RaftCore(3, [1, 2, 3], rng=random.Random(2))
    c.receive(Append(5, 1, 0, 0, (), 0, 0), 0.2)
    answer = [e.message for e in c.receive(asks[0], 0.26) if isinstance(e, Send)]
    assert answer == [raft.VoteResponse(5, 3, False, True)]
    b.receive(answer[0], 0.27)
    assert b.term == 5 and b.role is not Role.LEADER
    # and the leader's next heartbeat brings it back
    b.receive(Append(5, 1, 0, 0, (), 0, 0), 0.3)
    assert b.role is Role.FOLLOWER and b.leader == 1


def test_a_leader_that_hears_no_majority_steps_down():
    """CheckQuorum: cut off from both followers for two election timeouts, the leader steps
    down (term unchanged) and fails its reads; one answering follower keeps it leading."""
    a = RaftCore(1, [1, 2, 3], rng=random.Random(1), election_timeout_s=0.3, heartbeat_s=0.05)
    elect(a, 10.0)
    term = a.term
    a.receive(raft.AppendResponse(term, 2, True, a.last_index, 0, 1), 10.05)
    for t in (10.1, 10.3, 10.6):
        a.tick(t)
    assert a.role is Role.LEADER            # follower 2 answered within the window
    a.read("r", 10.6)
    out = a.tick(10.7)                      # nobody has answered for 0.65 s
    assert a.role is Role.FOLLOWER and a.term == term and a.leader is None
    assert ReadFailed("r", None) in out


def test_answers_claiming_what_was_never_sent_are_ignored():
    a = RaftCore(1, [1, 2, 3], rng=random.Random(1))
    elect(a, 10.0)
    last = a.last_index
    a.receive(raft.AppendResponse(a.term, 2, True, last + 1000, 0, 0), 10.0)
    assert a.match_index[2] == 0 and a.commit_index == 0
    a.read("r", 10.0)
    out = a.receive(raft.AppendResponse(a.term, 2, True, 0, 0, a._probe + 50), 10.0)
    assert not [e for e in out if isinstance(e, ReadReady)]
    out = a.receive(raft.AppendResponse(a.term, 2, True, last, 0, a._probe), 10.0)
    assert a.commit_index == last and [e for e in out if isinstance(e, ReadReady)]


def test_a_raft_bug_keeps_the_effects_already_produced():
    """A faulty leader of a newer term asks to overwrite a committed entry: the member refuses
    (RaftBug), but the newer term it already took is handed back to be persisted."""
    b = RaftCore(2, [1, 2, 3], rng=random.Random(1))
    b.receive(Append(1, 1, 0, 0, ((1, "a"), (1, "b")), 2, 0), 0.0)
    assert b.commit_index == 2
    try:
        b.receive(Append(3, 3, 0, 0, ((3, "x"),), 0, 0), 0.1)
    except raft.RaftBug as e:
        assert Persist(3, None) in e.effects
    else:
        raise AssertionError("no RaftBug")
