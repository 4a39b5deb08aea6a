"""The group coordinator of one ``__consumer_offsets`` partition: every group that hashes to it,
as a state machine that does no I/O (STYLE 2).

Each operation takes a request's fields and the time, and returns a ``Result``: the records to
append to the partition (``records.py``) and the response's fields. State changes only by
replaying records (``replay``), and an operation replays each record as it emits it, so the
state in memory is always exactly the replay of the log; a broker taking over the partition
replays it and has the same groups. Time enters as arguments: ``now`` (monotonic seconds) for
sessions and rebalance timeouts, which are not logged (a coordinator that loads a partition
gives every member a fresh session), and ``now_ms`` (wall clock) for commit timestamps, which
are.

What an operation raises (a ZbError) is the request's error; it raises before it emits
anything, so a refused request changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Callable, NamedTuple

from zbroker import errors, protocol
from zbroker.groups import records as rec
from zbroker.groups.assignors import ASSIGNORS, MemberSpec
from zbroker.groups.model import (EMPTY, Group, GroupState, Member, MemberState,
                                  OffsetAndMetadata, reconcile)
from zbroker.logs import get_logger

log = get_logger("zbroker.groups")


class ShardConfig(NamedTuple):
    session_timeout_ms: int = 45000
    min_session_timeout_ms: int = 6000
    max_session_timeout_ms: int = 60000
    heartbeat_interval_ms: int = 5000
    min_heartbeat_interval_ms: int = 1000
    max_heartbeat_interval_ms: int = 15000
    max_group_size: int = 1000
    assignors: tuple = ("uniform", "range")     # the first is the default
    offset_metadata_max_bytes: int = 4096
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000
    rebalance_timeout_ms: int = 300000          # when a member names none


class Result(NamedTuple):
    records: list                # [(key bytes, value bytes | None)]
    response: dict | None        # the response's fields (None: nothing to answer)


class GroupShard:
    def __init__(self, partition: int, config: ShardConfig = ShardConfig(),
                 topics: dict[str, int] | None = None):
        self.partition = partition
        self.config = config
        self.groups: dict[str, Group] = {}
        self.topics: dict[str, int] = dict(topics or {})   # the cluster's partition counts
        self._topics_known = topics is not None
        self.sessions: dict[tuple[str, str], float] = {}    # (group, member) -> deadline
        self.rebalance_deadlines: dict[tuple[str, str], tuple[float, int]] = {}
        self.touched: set[str] = set()      # groups changed since the caller last cleared it
        self._out: list | None = None       # records of the operation under way
        self._op_ms = 0                     # its wall-clock time
        self._missing_topics: set = set()   # topics with offsets here, missing from the cluster

    # --- replay ---------------------------------------------------------------------------------
    def replay(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the log. A record that is not ours is skipped with a warning."""
        try:
            r = rec.decode(key, value)
        except Exception as e:
            log.warning("skipping an unreadable record in __consumer_offsets",
                        partition=self.partition, error=str(e))
            return
        self._apply(r)

    def _apply(self, r: rec.GroupRecord) -> None:
        gid, v = r.group_id, r.value
        self.touched.add(gid)
        g = self.groups.get(gid)
        if r.type == rec.GROUP_METADATA:
            if v is None:
                if g is not None:
                    for mid in list(g.members):
                        self._forget_timers(gid, mid)
                    del self.groups[gid]
                return
            g = g or self._new_group(gid)
            g.epoch = v["epoch"]
            g.empty_since_ms = v.get("empty_since_ms")
            return
        if g is None:
            if v is None:
                return
            g = self._new_group(gid)
        if r.type == rec.OFFSET_COMMIT:
            tp = (r.key[0], r.key[1])
            if v is None:
                g.offsets.pop(tp, None)
            else:
                g.offsets[tp] = OffsetAndMetadata(v["offset"], v.get("leader_epoch", -1),
                                                  v.get("metadata"),
                                                  v.get("commit_timestamp_ms", 0))
        elif r.type == rec.SUBSCRIPTION_METADATA:
            g.subscription_metadata = dict(v["topics"]) if v is not None else {}
        elif r.type == rec.MEMBER_METADATA:
            mid = r.key[0]
            if v is None:
                g.remove_member(mid)
                self._forget_timers(gid, mid)
                return
            old = g.members.get(mid) or Member(mid)
            g.put_member(dataclasses.replace(
                old, instance_id=v.get("instance_id"), rack_id=v.get("rack_id"),
                client_id=v.get("client_id") or "", client_host=v.get("client_host") or "",
                subscribed_topics=tuple(v.get("topics") or ()),
                subscribed_regex=v.get("regex"), server_assignor=v.get("assignor"),
                rebalance_timeout_ms=v.get("rebalance_timeout_ms", old.rebalance_timeout_ms),
                session_timeout_ms=v.get("session_timeout_ms", old.session_timeout_ms),
                heartbeat_interval_ms=v.get("heartbeat_interval_ms",
                                            old.heartbeat_interval_ms),
                replaced=bool(v.get("replaced", False))))
        elif r.type == rec.TARGET_ASSIGNMENT_METADATA:
            g.assignment_epoch = v["epoch"] if v is not None else 0
        elif r.type == rec.TARGET_ASSIGNMENT_MEMBER:
            mid = r.key[0]
            if v is None:
                g.target.pop(mid, None)
            else:
                g.target[mid] = rec.partitions_from_wire(v["partitions"])
        elif r.type == rec.CURRENT_ASSIGNMENT:
            mid = r.key[0]
            old = g.members.get(mid)
            if v is None:
                if old is not None:
                    g.put_member(dataclasses.replace(old, assigned=EMPTY, revoking=EMPTY))
                return
            g.put_member(dataclasses.replace(
                old or Member(mid), member_epoch=v["epoch"], previous_epoch=v["previous_epoch"],
                state=MemberState(v["state"]), assigned=rec.partitions_from_wire(v["assigned"]),
                revoking=rec.partitions_from_wire(v["revoking"])))

    def _new_group(self, gid: str) -> Group:
        g = Group(gid)
        self.groups[gid] = g
        return g

    def _forget_timers(self, gid: str, mid: str) -> None:
        self.sessions.pop((gid, mid), None)
        self.rebalance_deadlines.pop((gid, mid), None)

    def loaded(self, now: float) -> None:
        """After replaying the whole partition: every member gets a fresh session (and, if it
        is revoking, a fresh rebalance timeout), as a restarted coordinator does."""
        for gid, g in self.groups.items():
            for m in g.members.values():
                self.sessions[(gid, m.member_id)] = now + m.session_timeout_ms / 1000
                if m.state is MemberState.UNREVOKED_PARTITIONS:
                    self.rebalance_deadlines[(gid, m.member_id)] = (
                        now + m.rebalance_timeout_ms / 1000, m.member_epoch)

    def snapshot_records(self) -> list:
        """Records that rebuild the whole state from nothing: appended after everything else,
        they let the log start at their first offset (what came before is no longer needed).
        Replaying them on top of the state they describe changes nothing."""
        out = []
        for gid, g in sorted(self.groups.items()):
            out.append(rec.group_epoch(gid, g.epoch, g.empty_since_ms))
            if g.subscription_metadata:
                out.append(rec.subscription_metadata(gid, g.subscription_metadata))
            for mid, m in sorted(g.members.items()):
                out.append(rec.member_metadata(gid, m))
                out.append(rec.current_assignment(gid, m))
            if g.assignment_epoch or g.target:
                out.append(rec.target_epoch(gid, g.assignment_epoch))
            for mid, parts in sorted(g.target.items()):
                out.append(rec.target_member(gid, mid, parts))
            for (t, p), o in sorted(g.offsets.items()):
                out.append(rec.offset_commit(gid, t, p, o.offset, o.leader_epoch, o.metadata,
                                             o.commit_timestamp_ms))
        return out

    # --- emitting -------------------------------------------------------------------------------
    def _begin(self, now_ms: int | None = None) -> list:
        """Start an operation; ``now_ms`` (wall clock) is what it records as the time."""
        self._out = []
        if now_ms is not None:
            self._op_ms = now_ms
        return self._out

    def _emit(self, record: tuple) -> None:
        """Append a record to the operation's result and apply it at once."""
        assert self._out is not None, "a record emitted outside an operation"
        self._out.append(record)
        self.replay(*record)

    def _done(self, response: dict | None) -> Result:
        out, self._out = self._out or [], None
        return Result(out, response)

    # --- ConsumerGroupHeartbeat -----------------------------------------------------------------
    def heartbeat(self, req: dict, client_host: str, now: float,
                  arrived: float | None = None, now_ms: int = 0) -> Result:
        """A member joins (epoch 0), heartbeats, or leaves (-1, or -2 for a static member that
        will be back). ``arrived`` is when the request came in (it may have waited here); the
        session runs from then."""
        arrived = now if arrived is None else arrived
        f = self._check_heartbeat(req)
        gid, mid, epoch, instance_id = f["group_id"], f["member_id"], f["member_epoch"], \
            f["instance_id"]
        if epoch < 0:
            return self._leave(gid, mid, epoch, instance_id, now_ms)
        owned = f["owned"]
        if epoch == protocol.JOIN_GROUP_MEMBER_EPOCH:
            if owned:
                raise errors.InvalidRequest("A member joining (epoch 0) must not report owned "
                                            "partitions.")
            owned = EMPTY
        g = self.groups.get(gid)
        member, replaced = self._find_member(g, gid, mid, epoch, instance_id, owned)
        session_ms, interval_ms = self._timeouts(f, member)
        self._begin(now_ms)
        if g is None:
            self._emit(rec.group_epoch(gid, 0))
            g = self.groups[gid]
        if replaced is not None:
            member = self._take_over(g, replaced, mid)
        is_new = member is None
        member = member or Member(mid)
        updated = dataclasses.replace(
            member,
            instance_id=instance_id if instance_id is not None else member.instance_id,
            rack_id=f["rack_id"] if f["rack_id"] is not None else member.rack_id,
            client_id=f["client_id"] if f["client_id"] is not None else member.client_id,
            client_host=client_host or member.client_host,
            subscribed_topics=f["topics"] if f["topics"] is not None
            else member.subscribed_topics,
            subscribed_regex=f["regex"] if f["regex"] is not None or f["topics"] is not None
            else member.subscribed_regex,
            server_assignor=f["assignor"] if f["assignor"] is not None
            else member.server_assignor,
            rebalance_timeout_ms=f["rebalance_timeout_ms"] if f["rebalance_timeout_ms"] >= 0
            else (self.config.rebalance_timeout_ms if is_new else member.rebalance_timeout_ms),
            session_timeout_ms=session_ms, heartbeat_interval_ms=interval_ms)
        if is_new or updated.metadata() != member.metadata():
            self._emit(rec.member_metadata(gid, updated))
        bump = is_new or updated.subscribed_topics != member.subscribed_topics
        self._refresh_subscription(g, bump)
        self._update_target(g)
        m = g.members[mid]
        new = reconcile(m, g.assignment_epoch, g.target.get(mid, EMPTY), owned, g.owners.get)
        if new != m:
            self._emit(rec.current_assignment(gid, new))
        self._track_rebalance(gid, new, now)
        key = (gid, mid)
        self.sessions[key] = max(self.sessions.get(key, 0.0), arrived + session_ms / 1000)
        return self._done({"member_id": mid, "member_epoch": new.member_epoch,
                           "heartbeat_interval_ms": new.heartbeat_interval_ms,
                           "session_timeout_ms": new.session_timeout_ms,
                           "assignment": rec.partitions_to_list(new.assigned)})

    def _check_heartbeat(self, req: dict) -> dict:
        gid = req.get("group_id")
        protocol.check_group_id(gid)
        mid = req.get("member_id")
        if not isinstance(mid, str) or not mid or len(mid) > protocol.MEMBER_ID_CHARS_MAX:
            raise errors.InvalidRequest(f"A member id must be a non-empty string of at most "
                                        f"{protocol.MEMBER_ID_CHARS_MAX} characters (the client "
                                        f"chooses it).")
        epoch = req.get("member_epoch")
        if epoch < protocol.LEAVE_GROUP_STATIC_MEMBER_EPOCH:
            raise errors.InvalidRequest(f"The member epoch {epoch} is not valid.")
        out = {"group_id": gid, "member_id": mid, "member_epoch": epoch}
        for field, limit in (("instance_id", protocol.INSTANCE_ID_CHARS_MAX),
                             ("rack_id", protocol.RACK_ID_CHARS_MAX),
                             ("client_id", protocol.CLIENT_ID_CHARS_MAX),
                             ("server_assignor", protocol.ASSIGNOR_NAME_CHARS_MAX),
                             ("subscribed_topic_regex", protocol.REGEX_CHARS_MAX)):
            value = req.get(field)
            if value is not None and (not value or len(value) > limit):
                raise errors.InvalidRequest(f"The field {field} must be a non-empty string of at "
                                            f"most {limit} characters, or null.")
            out[field] = value
        if epoch == protocol.LEAVE_GROUP_STATIC_MEMBER_EPOCH and out["instance_id"] is None:
            raise errors.InvalidRequest("Only a static member (with an instance id) may leave "
                                        "with epoch -2.")
        out["regex"] = out.pop("subscribed_topic_regex")
        out["assignor"] = out.pop("server_assignor")
        if out["assignor"] is not None and out["assignor"] not in self.config.assignors:
            raise errors.UnsupportedAssignor(
                f"The assignor {out['assignor']!r} is not one this broker runs; it runs "
                f"{', '.join(self.config.assignors)}.")
        topics = req.get("subscribed_topic_names")
        if topics is not None:
            if len(topics) > protocol.TOPICS_PER_REQUEST_MAX:
                raise errors.InvalidRequest(f"A member may subscribe to at most "
                                            f"{protocol.TOPICS_PER_REQUEST_MAX} topics.")
            for t in topics:
                protocol.check_topic_name(t)
            topics = tuple(sorted(set(topics)))
        elif epoch == protocol.JOIN_GROUP_MEMBER_EPOCH:
            raise errors.InvalidRequest("A member joining (epoch 0) must name the topics it "
                                        "subscribes to.")
        out["topics"] = topics
        owned = req.get("topic_partitions")
        if owned is not None:
            out["owned"] = self._partition_list(owned, "topic_partitions")
        else:
            out["owned"] = None
        for field in ("rebalance_timeout_ms", "session_timeout_ms", "heartbeat_interval_ms"):
            value = req.get(field, -1)
            if value < -1 or value > 24 * 3600 * 1000:
                raise errors.InvalidRequest(f"The field {field} must be -1 (the default) or a "
                                            f"time in milliseconds.")
            out[field] = value
        return out

    @staticmethod
    def _partition_list(entries, field: str) -> frozenset:
        out = set()
        for e in entries:
            if not isinstance(e, (list, tuple)) or len(e) != 2 or \
                    not isinstance(e[0], str) or not isinstance(e[1], (list, tuple)):
                raise errors.InvalidRequest(f"Each entry of {field} must be [topic, "
                                            f"[partition, ...]].")
            for p in e[1]:
                if not isinstance(p, int) or isinstance(p, bool) or p < 0:
                    raise errors.InvalidRequest(f"The partitions in {field} must be whole "
                                                f"numbers of 0 or more.")
                out.add((e[0], p))
            if len(out) > protocol.PARTS_PER_REQUEST_MAX:
                raise errors.InvalidRequest(f"{field} may name at most "
                                            f"{protocol.PARTS_PER_REQUEST_MAX} partitions.")
        return frozenset(out)

    def _timeouts(self, f: dict, member: Member | None) -> tuple[int, int]:
        c = self.config
        session = f["session_timeout_ms"]
        if session == -1:
            session = member.session_timeout_ms if member is not None else c.session_timeout_ms
        elif not c.min_session_timeout_ms <= session <= c.max_session_timeout_ms:
            raise errors.InvalidSessionTimeout(
                f"The session timeout {session} ms is outside what this broker allows "
                f"({c.min_session_timeout_ms}..{c.max_session_timeout_ms} ms, "
                f"group.consumer.min/max.session.timeout.ms).")
        interval = f["heartbeat_interval_ms"]
        if interval == -1:
            if member is not None and f["session_timeout_ms"] == -1:
                interval = member.heartbeat_interval_ms
            else:
                interval = max(c.min_heartbeat_interval_ms,
                               min(c.heartbeat_interval_ms, session // 3))
        elif not c.min_heartbeat_interval_ms <= interval <= c.max_heartbeat_interval_ms:
            raise errors.InvalidRequest(
                f"The heartbeat interval {interval} ms is outside what this broker allows "
                f"({c.min_heartbeat_interval_ms}..{c.max_heartbeat_interval_ms} ms, "
                f"group.consumer.min/max.heartbeat.interval.ms).")
        if interval * 3 > session:
            raise errors.InvalidRequest(f"The heartbeat interval ({interval} ms) must be at most "
                                        f"a third of the session timeout ({session} ms).")
        return session, interval

    def _find_member(self, g: Group | None, gid: str, mid: str, epoch: int,
                     instance_id: str | None, owned: frozenset | None):
        """(the member, or None for a new one; a static member being replaced, or None), after
        every check that may refuse the heartbeat."""
        member = g.members.get(mid) if g is not None else None
        replaced = None
        if member is not None and member.replaced:
            raise errors.FencedInstanceId(
                f"The member {mid} of group {gid!r} was replaced by a newer member with its "
                f"instance id {member.instance_id!r}.")
        if member is not None and member.instance_id != instance_id:
            raise errors.InvalidRequest(
                f"The member {mid} joined with instance id {member.instance_id!r} and cannot "
                f"change it to {instance_id!r}.")
        if instance_id is not None and g is not None:
            holder = g.static.get(instance_id)
            if epoch == protocol.JOIN_GROUP_MEMBER_EPOCH:
                if holder is not None and holder != mid:
                    replaced = g.members[holder]
            elif holder is None:
                raise errors.UnknownMemberId(f"The group {gid!r} has no member with instance id "
                                             f"{instance_id!r}; join again with epoch 0.")
            elif holder != mid:
                raise errors.FencedInstanceId(
                    f"The instance id {instance_id!r} of group {gid!r} was taken over by member "
                    f"{holder}.")
        if member is None:
            if epoch != protocol.JOIN_GROUP_MEMBER_EPOCH:
                raise errors.UnknownMemberId(f"The group {gid!r} has no member {mid} (its "
                                             f"session may have expired); join again with "
                                             f"epoch 0.")
            if g is not None and replaced is None and \
                    len(g.members) >= self.config.max_group_size:
                raise errors.GroupMaxSizeReached(
                    f"The group {gid!r} already has {len(g.members)} members, the most "
                    f"group.consumer.max.size allows.")
            return None, replaced
        if epoch == protocol.JOIN_GROUP_MEMBER_EPOCH:
            return member, None         # a member that believes it was fenced joins again
        if epoch > member.member_epoch:
            raise errors.FencedMemberEpoch(
                f"The member {mid} of group {gid!r} sent epoch {epoch}, newer than the "
                f"coordinator's {member.member_epoch}; it must give up its partitions and "
                f"rejoin.")
        if epoch < member.member_epoch and not (
                epoch == member.previous_epoch and owned is not None and
                owned <= member.assigned):
            # (the previous epoch is accepted when the answer that moved it on was lost)
            raise errors.FencedMemberEpoch(
                f"The member {mid} of group {gid!r} sent epoch {epoch}, older than the "
                f"coordinator's {member.member_epoch}; it must give up its partitions and "
                f"rejoin.")
        return member, None

    def _take_over(self, g: Group, old: Member, mid: str) -> Member:
        """A static member came back under a new member id: it takes the old member's place in
        the group (subscription and target) without a rebalance. When the old one left with
        epoch -2 its partitions move at once. Otherwise it may still be alive (restarted after
        kill -9, paused, or a second process with the same instance id): it stays, *replaced*,
        outside the group's target and holding what it owns, until its session runs out or it
        hears FENCED_INSTANCE_ID and leaves; only then does the new member get those
        partitions, so no partition has two owners even then."""
        gid = g.group_id
        target = g.target.get(old.member_id, EMPTY)
        new = dataclasses.replace(old, member_id=mid, member_epoch=0, previous_epoch=0,
                                  state=MemberState.STABLE, revoking=EMPTY, replaced=False)
        self._emit(rec.target_member(gid, old.member_id, None))
        if old.member_epoch == protocol.LEAVE_GROUP_STATIC_MEMBER_EPOCH:
            self._emit(rec.current_assignment_tombstone(gid, old.member_id))
            self._emit(rec.member_tombstone(gid, old.member_id))
        else:
            log.warning("a static member takes over an instance id still held (a restart, or "
                        "two consumers with one group_instance_id); the old member keeps its "
                        "partitions until its session ends or it hears it was replaced",
                        group=gid, instance_id=old.instance_id, old_member=old.member_id,
                        new_member=mid)
            self._emit(rec.member_metadata(gid, dataclasses.replace(old, replaced=True)))
            new = dataclasses.replace(new, assigned=EMPTY)
        self._emit(rec.member_metadata(gid, new))
        self._emit(rec.target_member(gid, mid, target))
        self._emit(rec.current_assignment(gid, new))
        return g.members[mid]

    def _leave(self, gid: str, mid: str, epoch: int, instance_id: str | None,
               now_ms: int) -> Result:
        g = self.groups.get(gid)
        member = g.members.get(mid) if g is not None else None
        if member is None:
            raise errors.UnknownMemberId(f"The group {gid!r} has no member {mid}.")
        if member.replaced:                 # it heard it was replaced: let its partitions go
            self._begin(now_ms)
            self._release(g, member)
            return self._done({"member_id": mid, "member_epoch": epoch,
                               "heartbeat_interval_ms": 0,
                               "session_timeout_ms": member.session_timeout_ms,
                               "assignment": None})
        if instance_id is not None and g.static.get(instance_id) != mid:
            raise errors.FencedInstanceId(f"The instance id {instance_id!r} of group {gid!r} "
                                          f"belongs to another member.")
        self._begin(now_ms)
        if epoch == protocol.LEAVE_GROUP_STATIC_MEMBER_EPOCH:
            # Stays in the group with its assignment until its session runs out.
            log.info("static member left for now", group=gid, member=mid,
                     instance_id=instance_id)
            self._emit(rec.current_assignment(gid, dataclasses.replace(
                member, member_epoch=epoch, previous_epoch=member.member_epoch,
                state=MemberState.STABLE, revoking=EMPTY)))
            self.rebalance_deadlines.pop((gid, mid), None)
        else:
            log.info("member left the group", group=gid, member=mid)
            self._fence(g, member)
        return self._done({"member_id": mid, "member_epoch": epoch, "heartbeat_interval_ms": 0,
                           "session_timeout_ms": member.session_timeout_ms, "assignment": None})

    def _release(self, g: Group, m: Member) -> None:
        """Remove a replaced member: its partitions go to the member that replaced it; the
        group's target does not change (no new epoch)."""
        self._emit(rec.current_assignment_tombstone(g.group_id, m.member_id))
        self._emit(rec.member_tombstone(g.group_id, m.member_id))
        if not g.members:                   # it was the last: the group is empty from now
            self._emit(rec.group_epoch(g.group_id, g.epoch, self._op_ms))

    def _fence(self, g: Group, m: Member) -> None:
        """Remove a member (it left, or its session or rebalance timeout ran out): its
        partitions are free at once, and the group moves to a new epoch."""
        gid = g.group_id
        self._emit(rec.current_assignment_tombstone(gid, m.member_id))
        if m.member_id in g.target:
            self._emit(rec.target_member(gid, m.member_id, None))
        self._emit(rec.member_tombstone(gid, m.member_id))
        self._refresh_subscription(g, bump=True)
        self._update_target(g)

    def _refresh_subscription(self, g: Group, bump: bool) -> None:
        """Bring the group's record of its subscribed topics' partition counts up to date; a
        change, or ``bump``, moves the group to a new epoch."""
        if not self._topics_known:
            current = g.subscription_metadata       # nothing to compare with yet
        else:
            current = {t: self.topics[t] for t in sorted(g.subscribed_topics())
                       if self.topics.get(t, 0) > 0}
        if current != g.subscription_metadata:
            self._emit(rec.subscription_metadata(g.group_id, current))
            bump = True
        if bump:
            self._emit(rec.group_epoch(g.group_id, g.epoch + 1,
                                       None if g.members else self._op_ms))

    def _update_target(self, g: Group) -> None:
        """A new target assignment when the group moved to a new epoch."""
        if g.epoch <= g.assignment_epoch:
            return
        name = self._assignor_of(g)
        specs = [MemberSpec(m.member_id, m.instance_id, frozenset(m.subscribed_topics),
                            g.target.get(m.member_id, EMPTY)) for m in g.active()]
        target = ASSIGNORS[name](specs, g.subscription_metadata) if specs else {}
        for mid in sorted(set(g.target) | set(target)):
            parts = target.get(mid)
            if parts is None:
                self._emit(rec.target_member(g.group_id, mid, None))
            elif parts != g.target.get(mid):
                self._emit(rec.target_member(g.group_id, mid, parts))
        self._emit(rec.target_epoch(g.group_id, g.epoch))
        log.info("new target assignment", group=g.group_id, epoch=g.epoch, assignor=name,
                 members=len(specs))

    def _assignor_of(self, g: Group) -> str:
        """The assignor most members asked for, else the broker's default."""
        asked = Counter(m.server_assignor for m in g.active()
                        if m.server_assignor in self.config.assignors)
        if asked:
            best = max(asked.values())
            return min(a for a, n in asked.items() if n == best)
        return self.config.assignors[0]

    def _track_rebalance(self, gid: str, m: Member, now: float) -> None:
        key = (gid, m.member_id)
        if m.state is MemberState.UNREVOKED_PARTITIONS:
            got = self.rebalance_deadlines.get(key)
            if got is None or got[1] != m.member_epoch:
                self.rebalance_deadlines[key] = (now + m.rebalance_timeout_ms / 1000,
                                                 m.member_epoch)
        else:
            self.rebalance_deadlines.pop(key, None)

    def would_move(self, gid: str, mid: str, owned: frozenset | None) -> bool:
        """Whether a heartbeat of this member now would change its assignment (or find it
        gone): the caller answers a heartbeat it holds when this turns true."""
        g = self.groups.get(gid)
        m = g.members.get(mid) if g is not None else None
        if m is None or m.member_epoch < 0:
            return True
        if g.epoch > g.assignment_epoch:
            return True
        return reconcile(m, g.assignment_epoch, g.target.get(mid, EMPTY),
                         EMPTY if owned is None else owned, g.owners.get) != m

    # --- timers ---------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        d = min(self.sessions.values(), default=None)
        r = min((t for t, _ in self.rebalance_deadlines.values()), default=None)
        if d is None:
            return r
        return d if r is None else min(d, r)

    def expire(self, now: float, now_ms: int = 0) -> Result:
        """Remove members whose session ran out, or that did not give up partitions within their
        rebalance timeout."""
        self._begin(now_ms)
        for (gid, mid), deadline in sorted(self.sessions.items(), key=lambda kv: kv[1]):
            if deadline > now:
                continue
            g = self.groups.get(gid)
            m = g.members.get(mid) if g is not None else None
            self._forget_timers(gid, mid)
            if m is not None:
                log.info("member removed: its session expired", group=gid, member=mid,
                         instance_id=m.instance_id)
                if m.replaced:
                    self._release(g, m)
                else:
                    self._fence(g, m)
        for (gid, mid), (deadline, epoch) in list(self.rebalance_deadlines.items()):
            if deadline > now:
                continue
            del self.rebalance_deadlines[(gid, mid)]
            g = self.groups.get(gid)
            m = g.members.get(mid) if g is not None else None
            if m is not None and m.member_epoch == epoch and \
                    m.state is MemberState.UNREVOKED_PARTITIONS:
                log.info("member removed: it did not give up its partitions within its "
                         "rebalance timeout (max_poll_interval_ms)", group=gid, member=mid)
                self.sessions.pop((gid, mid), None)
                if m.replaced:
                    self._release(g, m)
                else:
                    self._fence(g, m)
        return self._done(None)

    def expire_offsets(self, now_ms: int) -> Result:
        """Kafka's offsets.retention.minutes: the offsets of a group that lost its members go
        once it has been empty that long; those of a group that never had members (tools,
        consumers that assign partitions themselves) once their commit is that old. An empty
        group left with no offsets goes too."""
        self._begin(now_ms)
        retention = self.config.offsets_retention_ms
        # Offsets of a topic that did not exist at this check and the one before: it was
        # deleted (perhaps while no broker coordinated these groups, so nobody saw it go).
        missing = {t for g in self.groups.values() for t, _ in g.offsets
                   if t not in self.topics} if self._topics_known else set()
        gone, self._missing_topics = missing & self._missing_topics, missing
        for gid, g in sorted(self.groups.items()):
            for (t, p) in sorted(g.offsets):
                if t in gone:
                    self._emit(rec.offset_tombstone(gid, t, p))
            if g.members:
                continue
            for (t, p), o in sorted(g.offsets.items()):
                since = o.commit_timestamp_ms if g.empty_since_ms is None else \
                    max(g.empty_since_ms, o.commit_timestamp_ms)
                if retention >= 0 and since + retention < now_ms:
                    self._emit(rec.offset_tombstone(gid, t, p))
            if not g.offsets:
                self._delete_group(g)
        return self._done(None)

    # --- metadata -------------------------------------------------------------------------------
    def set_topics(self, topics: dict[str, int]) -> Result:
        """The cluster's topics and partition counts changed: groups subscribed to a topic that
        grew, shrank, appeared or went move to a new epoch; offsets of deleted topics go. (A
        topic deleted while nobody coordinated here is found by ``expire_offsets``.)"""
        previous = self.topics if self._topics_known else None
        self.topics = dict(topics)
        self._topics_known = True
        self._begin()
        for gid, g in sorted(self.groups.items()):
            if previous is not None:
                for (t, p) in sorted(g.offsets):
                    if t in previous and t not in self.topics:
                        self._emit(rec.offset_tombstone(gid, t, p))
            if g.members:
                self._refresh_subscription(g, bump=False)
                self._update_target(g)
        return self._done(None)

    # --- offsets --------------------------------------------------------------------------------
    def commit_offsets(self, req: dict, now_ms: int,
                       log_end: Callable[[str, int], int | None] = lambda t, p: None) -> Result:
        """OffsetCommit. A member's commit must carry its current epoch and name partitions it
        owns; a commit without a member (member_id "", epoch -1: tools, or consumers that
        assign partitions themselves) is only taken by a group without members.
        ``log_end(topic, partition)`` is the partition's high watermark where known."""
        gid = req["group_id"]
        protocol.check_group_id(gid)
        parts = req["parts"]
        protocol.check_entries("OffsetCommit", "parts", parts, protocol.OFFSET_COMMIT_PART)
        mid = req.get("member_id", "")
        epoch = req.get("member_epoch", protocol.NO_MEMBER_EPOCH)
        g = self.groups.get(gid)
        member = None
        if mid == "" and epoch < 0:
            if g is not None and g.members:
                raise errors.UnknownMemberId(
                    f"The group {gid!r} has active members; only they may commit (a commit "
                    f"without a member needs an empty group).")
        else:
            if g is None:
                raise errors.GroupIdNotFound(f"The group {gid!r} does not exist.")
            member = g.members.get(mid)
            if member is None:
                raise errors.UnknownMemberId(f"The group {gid!r} has no member {mid} (its "
                                             f"session may have expired).")
            if epoch > member.member_epoch:
                raise errors.FencedMemberEpoch(
                    f"The commit carries member epoch {epoch}, newer than the member's "
                    f"{member.member_epoch}.")
            if epoch < member.member_epoch:
                raise errors.StaleMemberEpoch(
                    f"The commit carries member epoch {epoch}; the member is at "
                    f"{member.member_epoch} now.")
        results, good = [], []
        for e in map(protocol.OffsetCommitPart._make, parts):
            err = self._check_commit(e, member, log_end)
            results.append([e.topic, e.partition, err.code if err else 0,
                            str(err) if err else None])
            if err is None:
                good.append(e)
        self._begin()
        if good and g is None:
            self._emit(rec.group_epoch(gid, 0))
        for e in good:
            self._emit(rec.offset_commit(gid, e.topic, e.partition, e.offset, e.leader_epoch,
                                         e.metadata, now_ms))
        return self._done({"parts": results})

    def _check_commit(self, e: protocol.OffsetCommitPart, member: Member | None,
                      log_end) -> errors.ZbError | None:
        name = f"{e.topic}-{e.partition}"
        try:
            protocol.check_topic_name(e.topic)
        except errors.InvalidTopic as err:
            return err
        if e.partition < 0 or e.partition >= self.topics.get(e.topic, 0):
            return errors.UnknownTopicOrPartition(f"The partition {name} does not exist.")
        if e.offset < 0:
            return errors.OffsetOutOfRange(f"The offset {e.offset} committed for {name} is "
                                           f"negative.")
        end = log_end(e.topic, e.partition)
        if end is not None and e.offset > end:
            return errors.OffsetOutOfRange(f"The offset {e.offset} committed for {name} is "
                                           f"beyond its end ({end}).")
        if e.metadata is not None and \
                len(e.metadata.encode("utf-8")) > self.config.offset_metadata_max_bytes:
            return errors.OffsetMetadataTooLarge(
                f"The metadata committed for {name} is longer than "
                f"{self.config.offset_metadata_max_bytes} bytes (offset.metadata.max.bytes).")
        if member is not None and (e.topic, e.partition) not in member.owned:
            return errors.UnassignedPartition(f"The partition {name} is not assigned to member "
                                              f"{member.member_id}.")
        return None

    def fetch_offsets(self, req: dict) -> Result:
        gid = req["group_id"]
        protocol.check_group_id(gid)
        wanted = req.get("parts")
        g = self.groups.get(gid)
        out = []
        if wanted is None:
            for (t, p), o in sorted(g.offsets.items()) if g is not None else ():
                out.append([t, p, o.offset, o.leader_epoch, o.metadata, 0])
        else:
            protocol.check_entries("OffsetFetch", "parts", wanted, protocol.TOPIC_PARTITION)
            for t, p in wanted:
                o = g.offsets.get((t, p)) if g is not None else None
                if o is None:
                    out.append([t, p, -1, -1, None, 0])
                else:
                    out.append([t, p, o.offset, o.leader_epoch, o.metadata, 0])
        return Result([], {"parts": out})

    def delete_offsets(self, req: dict) -> Result:
        gid = req["group_id"]
        protocol.check_group_id(gid)
        parts = req["parts"]
        protocol.check_entries("OffsetDelete", "parts", parts, protocol.TOPIC_PARTITION)
        g = self.groups.get(gid)
        if g is None:
            raise errors.GroupIdNotFound(f"The group {gid!r} does not exist.")
        subscribed = g.subscribed_topics()
        results = []
        self._begin()
        for t, p in parts:
            if t in subscribed:
                e = errors.GroupSubscribedToTopic(f"A member of group {gid!r} is subscribed to "
                                                  f"{t!r}; its offsets stay.")
                results.append([t, p, e.code, str(e)])
                continue
            if (t, p) in g.offsets:
                self._emit(rec.offset_tombstone(gid, t, p))
            results.append([t, p, 0, None])
        return self._done({"parts": results})

    # --- groups ---------------------------------------------------------------------------------
    def list_groups(self, states: list | None = None) -> list:
        wanted = {s.lower() for s in states} if states else None
        out = []
        for gid, g in sorted(self.groups.items()):
            state = g.state.value
            if wanted is None or state.lower() in wanted:
                out.append([gid, state, "consumer"])
        return out

    def describe_group(self, gid: str) -> list:
        """A ConsumerGroupDescribe entry (DescribedGroupEntry fields)."""
        g = self.groups.get(gid)
        if g is None:
            e = errors.GroupIdNotFound(f"The group {gid!r} does not exist.")
            return [gid, e.code, str(e), GroupState.DEAD.value, -1, -1, "", []]
        members = []
        for mid, m in sorted(g.members.items()):
            members.append([mid, m.instance_id, m.rack_id, m.member_epoch, m.client_id,
                            m.client_host, list(m.subscribed_topics), m.subscribed_regex,
                            rec.partitions_to_list(m.assigned),
                            rec.partitions_to_list(g.target.get(mid, EMPTY)),
                            "replaced" if m.replaced else m.state.value])
        return [gid, 0, None, g.state.value, g.epoch, g.assignment_epoch, self._assignor_of(g),
                members]

    def delete_groups(self, group_ids: list) -> Result:
        self._begin()
        out = []
        for gid in group_ids:
            g = self.groups.get(gid)
            if g is None:
                e = errors.GroupIdNotFound(f"The group {gid!r} does not exist.")
            elif g.members:
                e = errors.NonEmptyGroup(f"The group {gid!r} still has {len(g.members)} "
                                         f"member(s); it can only be deleted when empty.")
            else:
                for (t, p) in sorted(g.offsets):
                    self._emit(rec.offset_tombstone(gid, t, p))
                self._delete_group(g)
                out.append([gid, 0, None])
                continue
            out.append([gid, e.code, str(e)])
        return self._done({"groups": out})

    def _delete_group(self, g: Group) -> None:
        gid = g.group_id
        for mid in sorted(g.target):
            self._emit(rec.target_member(gid, mid, None))
        self._emit(rec.subscription_metadata(gid, None))
        self._emit(rec.target_epoch(gid, None))
        self._emit(rec.group_tombstone(gid))

    def is_member(self, gid: str, mid: str) -> bool:
        g = self.groups.get(gid)
        return g is not None and mid in g.members

    def group_state(self, gid: str) -> GroupState:
        g = self.groups.get(gid)
        return g.state if g is not None else GroupState.DEAD
