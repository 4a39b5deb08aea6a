"""A consumer group's state (KIP-848) and the reconciliation of one member: no I/O.

A group has a *group epoch*, bumped whenever membership, subscriptions or the subscribed topics'
partition counts change; a *target assignment* computed by an assignor for that epoch; and per
member a *current assignment* with its *member epoch*, which moves towards the target in steps
that never give a partition to a member before its previous owner has let it go:

    STABLE                 the member holds its part of the target at the target's epoch
    UNREVOKED_PARTITIONS   it must first give up ``revoking`` (no longer in its target); it keeps
                           its epoch until its heartbeat no longer reports any of them
    UNRELEASED_PARTITIONS  it is at the target epoch but some of its target partitions are still
                           held (assigned or being revoked) by other members

``reconcile`` is the one place those transitions happen (Kafka's CurrentAssignmentBuilder). A
partition's owner is the member whose ``assigned`` or ``revoking`` holds it (``Group.owners``,
derived from the members), so no partition is ever given to two members at once.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable

from zbroker.logs import get_logger

log = get_logger("zbroker.groups")

EMPTY: frozenset = frozenset()


class MemberState(enum.Enum):
    STABLE = "stable"
    UNREVOKED_PARTITIONS = "unrevoked_partitions"
    UNRELEASED_PARTITIONS = "unreleased_partitions"


class GroupState(enum.Enum):
    """Kafka's consumer group states (as ``zb-consumer-groups --state`` prints them)."""
    EMPTY = "Empty"
    ASSIGNING = "Assigning"
    RECONCILING = "Reconciling"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclasses.dataclass(frozen=True)
class Member:
    member_id: str
    # what the member told us (MemberMetadata record)
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topics: tuple = ()
    subscribed_regex: str | None = None
    server_assignor: str | None = None
    rebalance_timeout_ms: int = 300000
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 5000
    # a static member whose instance id a newer member took over while it may still be alive:
    # outside the group's target, it keeps what it owns until it goes
    replaced: bool = False
    # where its reconciliation stands (CurrentAssignment record)
    member_epoch: int = 0
    previous_epoch: int = 0
    state: MemberState = MemberState.STABLE
    assigned: frozenset = EMPTY
    revoking: frozenset = EMPTY

    METADATA_FIELDS = ("instance_id", "rack_id", "client_id", "client_host", "subscribed_topics",
                       "subscribed_regex", "server_assignor", "rebalance_timeout_ms",
                       "session_timeout_ms", "heartbeat_interval_ms", "replaced")

    def metadata(self) -> tuple:
        return tuple(getattr(self, f) for f in self.METADATA_FIELDS)

    def reconciled_to(self, epoch: int) -> bool:
        return self.state is MemberState.STABLE and self.member_epoch == epoch

    @property
    def owned(self) -> frozenset:
        return self.assigned | self.revoking


class OffsetAndMetadata:
    __slots__ = ("offset", "leader_epoch", "metadata", "commit_timestamp_ms")

    def __init__(self, offset: int, leader_epoch: int, metadata: str | None,
                 commit_timestamp_ms: int):
        self.offset, self.leader_epoch = offset, leader_epoch
        self.metadata, self.commit_timestamp_ms = metadata, commit_timestamp_ms


class Group:
    """One consumer group as replayed from its records. Mutated only by ``GroupShard.replay``."""

    def __init__(self, group_id: str):
        self.group_id = group_id
        self.epoch = 0
        self.empty_since_ms: int | None = None     # when it lost its last member
        self.assignment_epoch = 0
        self.subscription_metadata: dict[str, int] = {}
        self.members: dict[str, Member] = {}
        self.static: dict[str, str] = {}            # instance id -> member id
        self.target: dict[str, frozenset] = {}      # member id -> target partitions
        self.owners: dict[tuple, str] = {}          # partition -> member id (derived)
        self.offsets: dict[tuple, OffsetAndMetadata] = {}

    @property
    def state(self) -> GroupState:
        """(A replaced member, on its way out, holds partitions its successor waits for: while
        one is there the group is reconciling, not stable or empty.)"""
        if not self.members:
            return GroupState.EMPTY
        if self.epoch > self.assignment_epoch:
            return GroupState.ASSIGNING
        if any(m.replaced or not m.reconciled_to(self.assignment_epoch)
               for m in self.members.values()):
            return GroupState.RECONCILING
        return GroupState.STABLE

    def subscribed_topics(self) -> set[str]:
        return {t for m in self.members.values() for t in m.subscribed_topics}

    def active(self) -> list[Member]:
        """The members the assignor shares the partitions among (not replaced ones)."""
        return [m for _, m in sorted(self.members.items()) if not m.replaced]

    def put_member(self, m: Member) -> None:
        """Replace (or add) a member, keeping ``owners`` and ``static`` in step with it."""
        old = self.members.get(m.member_id)
        if old is not None:
            for tp in old.owned:
                if self.owners.get(tp) == old.member_id:
                    del self.owners[tp]
            if old.instance_id is not None and self.static.get(old.instance_id) == old.member_id:
                del self.static[old.instance_id]
        for tp in m.owned:
            holder = self.owners.get(tp)
            if holder is not None and holder != m.member_id:
                log.error("a partition is recorded as owned by two members; keeping the newer",
                          group=self.group_id, topic=tp[0], partition=tp[1], was=holder,
                          now=m.member_id)
            self.owners[tp] = m.member_id
        self.members[m.member_id] = m
        if m.instance_id is not None and not m.replaced:
            self.static[m.instance_id] = m.member_id

    def remove_member(self, member_id: str) -> None:
        m = self.members.get(member_id)
        if m is None:
            return
        self.put_member(dataclasses.replace(m, assigned=EMPTY, revoking=EMPTY, instance_id=None))
        del self.members[member_id]
        if m.instance_id is not None and self.static.get(m.instance_id) == member_id:
            del self.static[m.instance_id]


def reconcile(m: Member, target_epoch: int, target: frozenset, owned: frozenset | None,
              owner_of: Callable[[tuple], str | None]) -> Member:
    """The member's next current assignment (or ``m`` itself when it cannot move yet).
    ``owned`` is what the member's heartbeat says it holds (None: not said); ``owner_of`` gives
    a partition's current owner."""
    if m.state is MemberState.STABLE:
        if m.member_epoch == target_epoch:
            return m
        return _next_assignment(m, m.member_epoch, target_epoch, target, owned, owner_of)
    if m.state is MemberState.UNREVOKED_PARTITIONS:
        if owned is None or owned & m.revoking:
            return m            # still holds some of what it must give up
        return _next_assignment(m, m.member_epoch + 1, target_epoch, target, owned, owner_of)
    return _next_assignment(m, m.member_epoch, target_epoch, target, owned, owner_of)


def _next_assignment(m: Member, member_epoch: int, target_epoch: int, target: frozenset,
                     owned: frozenset | None, owner_of) -> Member:
    assigned = m.assigned & target
    revoking = m.assigned - assigned
    pending = target - assigned
    unreleased = frozenset(tp for tp in pending if owner_of(tp) not in (None, m.member_id))
    pending -= unreleased
    if revoking and (owned is None or owned & revoking):
        # Give up what is no longer ours first; the epoch stays until the member confirms.
        new = dataclasses.replace(m, state=MemberState.UNREVOKED_PARTITIONS,
                                  assigned=assigned, revoking=revoking)
        epoch = member_epoch
    else:
        new = dataclasses.replace(
            m, state=MemberState.UNRELEASED_PARTITIONS if unreleased else MemberState.STABLE,
            assigned=assigned | pending, revoking=EMPTY)
        epoch = target_epoch
    if epoch != m.member_epoch:
        new = dataclasses.replace(new, member_epoch=epoch, previous_epoch=m.member_epoch)
    return new
