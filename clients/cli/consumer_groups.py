"""zb-consumer-groups: list, describe and delete consumer groups, and reset or delete their
committed offsets (Kafka's kafka-consumer-groups.sh: its flags, its columns, its messages).

    zb-consumer-groups --bootstrap-server localhost:9092 --list [--state [STATES]] [--type [TYPES]]
    zb-consumer-groups --bootstrap-server localhost:9092 --describe (--group G ... | --all-groups)
                       [--offsets | --members [--verbose] | --state]
    zb-consumer-groups --bootstrap-server localhost:9092 --reset-offsets
                       (--group G ... | --all-groups) (--topic T[:P,P...] ... | --all-topics)
                       (--to-earliest | --to-latest | --to-current | --to-offset N | --shift-by N
                        | --to-datetime 2026-01-01T00:00:00.000 | --by-duration PT1H)
                       [--dry-run | --execute] [--export]
    zb-consumer-groups --bootstrap-server localhost:9092 --delete (--group G ... | --all-groups)
    zb-consumer-groups --bootstrap-server localhost:9092 --delete-offsets --group G \\
                       --topic T[:P,P...] ...

Where it differs from Kafka's tool, on purpose: errors are one sentence on stderr
("zb-consumer-groups: ...") and a non-zero exit status, where Kafka prints "Error: ..." on
stdout and often exits 0 (a group that does not exist, a reset refused while the group has
active members, a group or partition that could not be deleted); warnings go to stderr too, so
stdout holds only the tables. ``--members --verbose`` names the topic of each partition list
(``t(0,1)``, as Kafka's Scala tool did). ``--from-file`` and ``--command-config`` are not
supported.
"""

from __future__ import annotations

import datetime
import re
import sys
import time
from importlib import metadata

from clients.admin import AdminClient
from clients.cli._common import (ArgumentParser, UsageError, add_command_config,
                                  command_config_kwargs, run)
from clients.structs import ConsumerGroupDescription, TopicPartition
from zbroker import errors, protocol

PROG = "zb-consumer-groups"
MISSING = "-"               # Kafka's MISSING_COLUMN_VALUE

ACTIONS = ("list", "describe", "delete", "reset_offsets", "delete_offsets")
SCENARIOS = ("to_offset", "shift_by", "to_datetime", "by_duration", "to_earliest",
             "to_latest", "to_current")
# Kafka's ConsumerGroupState names (the classic protocol's two rebalance states included, so
# every state Kafka's tool accepts is accepted here; no zbroker group is ever in them)
STATES = ("PreparingRebalance", "CompletingRebalance", "Stable", "Dead", "Empty", "Assigning",
          "Reconciling")
TYPES = ("classic", "consumer", "share")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _given(value) -> bool:
    """Whether an option was given (``--to-offset 0`` was)."""
    return value is not None and value is not False and value != []


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="This tool helps to list all consumer groups, "
                       "describe a consumer group, delete consumer group info, or reset "
                       "consumer group offsets.")
    add_command_config(p)
    p.add_argument("--bootstrap-server", required=True, metavar="HOST:PORT[,...]",
                   help="REQUIRED: the server(s) to connect to")
    p.add_argument("--group", action="append", metavar="GROUP",
                   help="the consumer group to act on (repeatable)")
    p.add_argument("--topic", action="append", metavar="TOPIC[:P,...]",
                   help="with --delete-offsets or --reset-offsets: a topic, or some of its "
                   "partitions as topic1:0,1,2 (repeatable)")
    p.add_argument("--all-topics", action="store_true",
                   help="with --reset-offsets: every partition the group has committed "
                   "offsets for")
    p.add_argument("--list", action="store_true", help="list all consumer groups")
    p.add_argument("--describe", action="store_true",
                   help="describe consumer groups and list offset lag (number of messages not "
                   "yet processed)")
    p.add_argument("--all-groups", action="store_true", help="apply to all consumer groups")
    p.add_argument("--delete", action="store_true",
                   help="delete groups with their committed offsets and ownership information, "
                   "e.g. --group g1 --group g2")
    p.add_argument("--reset-offsets", action="store_true",
                   help="reset the committed offsets of groups without active members; a dry "
                   "run unless --execute; needs one scenario (--to-earliest, --to-latest, "
                   "--to-current, --to-offset, --shift-by, --to-datetime, --by-duration) and "
                   "a scope (--topic or --all-topics)")
    p.add_argument("--delete-offsets", action="store_true",
                   help="delete the committed offsets of one group for some topics")
    p.add_argument("--dry-run", action="store_true",
                   help="only show the results of --reset-offsets without changing anything")
    p.add_argument("--execute", action="store_true", help="with --reset-offsets: do it")
    p.add_argument("--export", action="store_true",
                   help="with --reset-offsets: print the result as CSV "
                   "(topic,partition,offset; group first with several groups)")
    p.add_argument("--to-offset", type=int, metavar="OFFSET",
                   help="reset offsets to a specific offset")
    p.add_argument("--shift-by", type=int, metavar="N",
                   help="reset offsets shifting the current offset by N (negative or positive)")
    p.add_argument("--to-datetime", metavar="DATETIME",
                   help="reset offsets to the first record at or after a time: "
                   "YYYY-MM-DDTHH:mm:SS.sss, in UTC unless a zone is given (Z, +01:00, +0100)")
    p.add_argument("--by-duration", metavar="DURATION",
                   help="reset offsets to the first record at or after now minus a duration: "
                   "PnDTnHnMnS (e.g. PT1H30M)")
    p.add_argument("--to-earliest", action="store_true",
                   help="reset offsets to the earliest offset")
    p.add_argument("--to-latest", action="store_true", help="reset offsets to the latest offset")
    p.add_argument("--to-current", action="store_true",
                   help="reset offsets to the current offset (the latest where none is "
                   "committed)")
    p.add_argument("--members", action="store_true",
                   help="with --describe: the members of the group")
    p.add_argument("--verbose", action="store_true",
                   help="with --describe --members: also each member's partitions")
    p.add_argument("--offsets", action="store_true",
                   help="with --describe: the partitions with their offsets and lag (the "
                   "default)")
    p.add_argument("--state", nargs="?", const="", metavar="STATES",
                   help="with --describe: the state of the group; with --list: a STATE column, "
                   "and with a value (e.g. stable,empty) only groups in those states")
    p.add_argument("--type", nargs="?", const="", metavar="TYPES",
                   help="with --list: a TYPE column, and with a value (e.g. consumer) only groups "
                   "of those types")
    p.add_argument("--timeout", type=int, default=5000, metavar="MS",
                   help="how long each request to the cluster may take, in ms (default 5000, "
                   "Kafka's)")
    p.add_argument("--version", action="version", version=_version(),
                   help="print the version and exit")
    return p


def _version() -> str:
    try:
        return metadata.version("zbroker")
    except metadata.PackageNotFoundError:
        return "unknown (zbroker is not installed)"


# --- checking the command line ------------------------------------------------------------------

def _check(args) -> str:
    """The one action asked for, after every check Kafka's tool makes (UsageError)."""
    actions = [a for a in ACTIONS if getattr(args, a)]
    if len(actions) != 1:
        raise UsageError("Command must include exactly one action: --list, --describe, "
                         "--delete, --reset-offsets, --delete-offsets.")
    action = actions[0]
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of milliseconds, not "
                         f"{args.timeout}.")
    if args.group and args.all_groups:
        raise UsageError("--group cannot be used with --all-groups.")
    for g in args.group or ():
        try:
            protocol.check_group_id(g)
        except errors.ZbError as e:
            raise UsageError(str(e)) from None
    allowed = {
        "group": ("describe", "delete", "reset_offsets", "delete_offsets"),
        "all_groups": ("describe", "delete", "reset_offsets"),
        "members": ("describe",), "verbose": ("describe",), "offsets": ("describe",),
        "state": ("describe", "list"), "type": ("list",),
        "all_topics": ("reset_offsets",), "dry_run": ("reset_offsets",),
        "execute": ("reset_offsets",), "export": ("reset_offsets",),
        **{s: ("reset_offsets",) for s in SCENARIOS}}
    for dest, actions_ok in allowed.items():
        if _given(getattr(args, dest)) and action not in actions_ok:
            raise UsageError(f"{_flag(dest)} cannot be used with {_flag(action)}.")
    if args.topic and action in ("list", "describe"):
        raise UsageError(f"--topic cannot be used with {_flag(action)}.")
    if action in ("describe", "delete", "reset_offsets") and not (args.group or
                                                                   args.all_groups):
        raise UsageError(f"Option {_flag(action)} takes one of these options: --group, "
                         f"--all-groups.")
    if action == "list":
        args.states = _names(args.state, STATES, "state")
        args.types = _names(args.type, TYPES, "type")
    elif action == "describe":
        if sum(1 for f in (args.members, args.offsets, args.state is not None) if f) > 1:
            raise UsageError("Option --describe takes at most one of these options: --members, "
                             "--offsets, --state.")
        if args.state:
            raise UsageError("Option --describe does not take a value for --state.")
    elif action == "delete":
        if args.topic:
            raise UsageError("The consumer does not support topic-specific offset deletion from "
                             "a consumer group; use --delete-offsets.")
    elif action == "delete_offsets":
        if not args.group or not args.topic:
            raise UsageError("Option --delete-offsets takes the following options: --group, "
                             "--topic.")
        if len(args.group) > 1:
            raise UsageError("--delete-offsets acts on one group at a time.")
        args.topic_specs = [_topic_spec(t) for t in args.topic]
    else:
        _check_reset(args)
    return action


def _check_reset(args) -> None:
    if args.dry_run and args.execute:
        raise UsageError("Option --reset-offsets only accepts one of --execute and --dry-run.")
    given = [s for s in SCENARIOS if _given(getattr(args, s))]
    if len(given) != 1:
        raise UsageError(
            f"Option --reset-offsets requires exactly one of the following scenarios: "
            f"{', '.join(map(_flag, SCENARIOS))}"
            f"{' (not ' + ' and '.join(map(_flag, given)) + ')' if given else ''}.")
    args.scenario = given[0]
    if bool(args.topic) == bool(args.all_topics):
        raise UsageError("Option --reset-offsets takes one of these reset scopes: --all-topics, "
                         "--topic.")
    args.topic_specs = [_topic_spec(t) for t in args.topic or ()]
    if args.to_datetime is not None:
        args.timestamp_ms = parse_datetime_ms(args.to_datetime)
    if args.by_duration is not None:
        args.duration_ms = parse_duration_ms(args.by_duration)
    if not args.dry_run and not args.execute:
        print("WARN: No action will be performed as the --execute option is missing; this is "
              "a dry run (add --dry-run to say so, or --execute to reset the offsets).",
              file=sys.stderr)


def _names(value: str | None, valid: tuple, what: str) -> list[str]:
    """A comma-separated list of Kafka's state (or type) names, any case -> their spelling."""
    if not value:
        return []
    by_lower = {v.lower(): v for v in valid}
    out = []
    for name in value.split(","):
        got = by_lower.get(name.strip().lower())
        if got is None:
            raise UsageError(f"Invalid {what} list '{value}'. Valid {what}s are: "
                             f"{', '.join(valid)}.")
        out.append(got)
    return out


def _topic_spec(arg: str) -> tuple[str, list[int] | None]:
    """``topic`` -> (topic, None: all its partitions); ``topic:0,1`` -> (topic, [0, 1])."""
    topic, sep, parts = arg.partition(":")
    if not topic or (sep and not parts) or ":" in parts:
        raise UsageError(f"Invalid topic arg '{arg}', expected a topic name and optionally its "
                         f"partitions (topic:0,1,2).")
    try:
        protocol.check_topic_name(topic)
    except errors.ZbError as e:
        raise UsageError(str(e)) from None
    if not sep:
        return topic, None
    out = []
    for p in parts.split(","):
        if not p.strip().isdigit():
            raise UsageError(f"Invalid partition '{p}' specified in topic arg '{arg}'.")
        out.append(int(p))
    return topic, sorted(set(out))


_DATETIME_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{3}))?"
                          r"(Z|[+-]\d{2}(?::?\d{2})?)?")
_DURATION_RE = re.compile(r"([-+]?)P(?:([-+]?\d+)D)?(?:T(?:([-+]?\d+)H)?(?:([-+]?\d+)M)?"
                          r"(?:([-+]?\d+)(?:[.,](\d{0,9}))?S)?)?", re.IGNORECASE)


def parse_datetime_ms(text: str) -> int:
    """Kafka's ``--to-datetime`` (``Utils.getDateTime``): yyyy-MM-ddTHH:mm:ss.SSS, in UTC
    unless a zone follows (Z, +01, +0100, +01:00); the milliseconds may be left out. Returns
    ms since the epoch."""
    m = _DATETIME_RE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--to-datetime expects a time such as 2026-01-01T00:00:00.000, "
                         f"optionally with a zone (Z, +01:00), not '{text}'.")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    millis = int(m[7] or 0)
    zone = m[8] or "Z"
    offset = datetime.timedelta(0)
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        if zone[0] == "-":
            offset = -offset
    try:
        when = datetime.datetime(year, month, day, hour, minute, second, millis * 1000,
                                 tzinfo=datetime.timezone(offset))
    except ValueError as e:
        raise UsageError(f"--to-datetime '{text}' is not a valid time ({e}).") from None
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (when - epoch) // datetime.timedelta(milliseconds=1)


def parse_duration_ms(text: str) -> int:
    """Kafka's ``--by-duration``, a java.time.Duration: [-]PnDTnHnMn.nS -> milliseconds."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None or not any(m.groups()[1:5]):
        raise UsageError(f"--by-duration expects a duration such as PT1H30M or P1DT12H "
                         f"(PnDTnHnMnS), not '{text}'.")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups()[1:5])
    frac = (m[6] or "").ljust(3, "0")[:3]
    ms = (((days * 24 + hours) * 60 + minutes) * 60 + seconds) * 1000
    ms += -int(frac) if (m[5] or "").startswith("-") else int(frac)
    return -ms if m[1] == "-" else ms


# --- output ---------------------------------------------------------------------------------------

def _table(rows: list[list], widths: list[int], blank_line: bool = True) -> None:
    """Kafka's tables: a blank line, then each row with its first columns left-aligned in
    ``widths`` and the rest unpadded, one space apart (no trailing spaces)."""
    if blank_line:
        print()
    for row in rows:
        cells = [f"{str(v):<{w}}" for v, w in zip(row, widths)] + \
            [str(v) for v in row[len(widths):]]
        print(" ".join(cells).rstrip())


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


def _error(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def _quoted(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


# --- --list -----------------------------------------------------------------------------------------

def _list(admin: AdminClient, args) -> int:
    if args.state is None and args.type is None:
        for g in admin.list_consumer_groups():
            print(g.group_id)
        return 0
    groups = admin.list_consumer_groups(states=args.states or None)
    if args.types:
        groups = [g for g in groups if g.group_type.lower() in args.types]
    header, columns = ["GROUP"], [lambda g: g.group_id]
    if args.type is not None:
        header.append("TYPE")
        columns.append(lambda g: g.group_type)
    if args.state is not None:
        header.append("STATE")
        columns.append(lambda g: g.state)
    width = max((max(15, len(g.group_id)) for g in groups), default=15) + 10
    rows = [header] + [[col(g) for col in columns] for g in groups]
    _table(rows, [width] + [20] * (len(header) - 2), blank_line=False)
    return 0


# --- --describe -------------------------------------------------------------------------------------

def _group_ids(admin: AdminClient, args) -> list[str]:
    if args.all_groups:
        return [g.group_id for g in admin.list_consumer_groups()]
    return list(dict.fromkeys(args.group))


def _announce(d: ConsumerGroupDescription) -> bool:
    """Kafka's notice for the group's state on stderr; False when the group does not exist."""
    if d.state == "Dead":
        _error(f"Consumer group '{d.group_id}' does not exist.")
        return False
    if d.state == "Empty":
        _warn(f"\nConsumer group '{d.group_id}' has no active members.")
    elif d.state != "Stable":
        _warn(f"\nWarning: Consumer group '{d.group_id}' is rebalancing.")
    return True


def _describe(admin: AdminClient, args) -> int:
    descriptions = admin.describe_consumer_groups(_group_ids(admin, args))
    missing = 0
    for d in sorted(descriptions, key=lambda d: d.group_id):
        if not _announce(d):
            missing += 1
        elif args.members:
            _print_members(d, args.verbose)
        elif args.state is not None:
            _print_state(d)
        else:
            _print_offsets(admin, d)
    return 1 if missing else 0


def _print_offsets(admin: AdminClient, d: ConsumerGroupDescription) -> None:
    """GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID: the
    partitions of each member that owns some (most partitions first), then the partitions with
    a commit and no owner."""
    committed = admin.list_consumer_group_offsets(d.group_id)
    owned: list[tuple] = []
    for m in sorted((m for m in d.members if m.assignment), key=lambda m: -len(m.assignment)):
        owned += [(tp, m.member_id, m.host, m.client_id) for tp in sorted(m.assignment)]
    taken = {tp for tp, *_ in owned}
    owned += [(tp, MISSING, MISSING, MISSING) for tp in sorted(set(committed) - taken)]
    if not owned:
        return
    ends = admin.list_offsets({tp: protocol.LATEST_TIMESTAMP for tp, *_ in owned})
    rows = [["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
             "CONSUMER-ID", "HOST", "CLIENT-ID"]]
    for tp, member, host, client in owned:
        om, end = committed.get(tp), ends.get(tp)
        current = om.offset if om is not None else None
        log_end = end.offset if end is not None and end.offset >= 0 else None
        lag = log_end - current if current is not None and log_end is not None else None
        rows.append([d.group_id, tp.topic, tp.partition, _or_missing(current),
                     _or_missing(log_end), _or_missing(lag), member, host, client])
    body = rows[1:]
    _table(rows, [_width(body, 0), _width(body, 1), 10, 15, 15, 15, _width(body, 6),
                  _width(body, 7)])


def _or_missing(value) -> str:
    return MISSING if value is None else str(value)


def _width(rows: list[list], col: int, least: int = 15) -> int:
    return max([least] + [len(str(r[col])) for r in rows])


def _print_members(d: ConsumerGroupDescription, verbose: bool) -> None:
    """GROUP CONSUMER-ID [GROUP-INSTANCE-ID] HOST CLIENT-ID #PARTITIONS [ASSIGNMENT]; the
    instance id column only when some member is static."""
    static = any(m.group_instance_id for m in d.members)
    header = ["GROUP", "CONSUMER-ID"] + (["GROUP-INSTANCE-ID"] if static else []) + \
        ["HOST", "CLIENT-ID", "#PARTITIONS"] + (["ASSIGNMENT"] if verbose else [])
    body = []
    for m in d.members:
        row = [d.group_id, m.member_id] + ([m.group_instance_id or ""] if static else []) + \
            [m.host, m.client_id, len(m.assignment)]
        if verbose:
            row.append(_assignment_text(m.assignment))
        body.append(row)
    # every column before #PARTITIONS as wide as its content; #PARTITIONS 15 before ASSIGNMENT
    widths = [_width(body, i, 17 if name == "GROUP-INSTANCE-ID" else 15)
              for i, name in enumerate(header[:header.index("#PARTITIONS")])]
    _table([header] + body, widths + ([15] if verbose else []))


def _assignment_text(parts) -> str:
    """``t1(0,1), t2(3)``, or "-" for none."""
    if not parts:
        return MISSING
    by_topic: dict[str, list[int]] = {}
    for tp in parts:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return ", ".join(f"{t}({','.join(map(str, sorted(ps)))})" for t, ps in sorted(by_topic.items()))


def _print_state(d: ConsumerGroupDescription) -> None:
    """GROUP COORDINATOR (ID) ASSIGNMENT-STRATEGY STATE #MEMBERS."""
    c = d.coordinator
    coordinator = f"{c.host}:{c.port} ({c.node_id})" if c is not None else MISSING
    width = max(25, len(coordinator))
    _table([["GROUP", "COORDINATOR (ID)", "ASSIGNMENT-STRATEGY", "STATE", "#MEMBERS"],
            [d.group_id, coordinator, d.partition_assignor, d.state, len(d.members)]],
           [max(width, len(d.group_id)), width, 20, 15])


# --- --reset-offsets ----------------------------------------------------------------------------

def _reset(admin: AdminClient, args) -> int:
    plan: dict[str, dict[TopicPartition, int]] = {}
    refused = 0
    for d in admin.describe_consumer_groups(_group_ids(admin, args)):
        if d.state not in ("Empty", "Dead"):
            _error(f"Assignments can only be reset if the group '{d.group_id}' is inactive, "
                   f"but the current state is {d.state}.")
            refused += 1
            continue
        offsets = _new_offsets(admin, args, d.group_id, _partitions_to_reset(admin, args,
                                                                             d.group_id))
        if args.execute:
            admin.alter_consumer_group_offsets(d.group_id, offsets)
        plan[d.group_id] = offsets
    if args.export:
        several = len(args.group or ()) != 1        # Kafka's CSV names the group then
        for gid, offsets in plan.items():
            for tp, offset in sorted(offsets.items()):
                print(f"{gid + ',' if several else ''}{tp.topic},{tp.partition},{offset}")
    elif plan:
        rows = [["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"]]
        for gid, offsets in plan.items():
            rows += [[gid, tp.topic, tp.partition, offset]
                     for tp, offset in sorted(offsets.items())]
        _table(rows, [30, 30, 10, 15])
    return 1 if refused else 0


def _partitions_to_reset(admin: AdminClient, args, gid: str) -> list[TopicPartition]:
    if args.all_topics:
        return sorted(admin.list_consumer_group_offsets(gid))
    return _spec_partitions(admin, args.topic_specs)


def _spec_partitions(admin: AdminClient, specs) -> list[TopicPartition]:
    """The partitions ``--topic`` names: those listed, or every partition of the topic."""
    out = []
    for topic, parts in specs:
        if parts is None:
            parts = [p.partition for p in admin.describe_topic(topic).partitions]
        out += [TopicPartition(topic, p) for p in parts]
    return list(dict.fromkeys(out))


def _new_offsets(admin: AdminClient, args, gid: str, tps: list) -> dict[TopicPartition, int]:
    """The offsets the scenario asks for, as Kafka's tool computes them."""
    if not tps:
        return {}
    s = args.scenario
    if s == "to_offset":
        return _clamp(admin, {tp: args.to_offset for tp in tps})
    if s in ("to_earliest", "to_latest"):
        ts = protocol.EARLIEST_TIMESTAMP if s == "to_earliest" else protocol.LATEST_TIMESTAMP
        return {tp: o.offset for tp, o in admin.list_offsets({tp: ts for tp in tps}).items()}
    committed = admin.list_consumer_group_offsets(gid, tps)
    if s == "shift_by":
        for tp in tps:
            if committed.get(tp) is None:
                raise ValueError(f"Cannot shift offset for partition {tp.topic}-{tp.partition} "
                                 f"since there is no current committed offset.")
        return _clamp(admin, {tp: committed[tp].offset + args.shift_by for tp in tps})
    if s == "to_current":
        out = {tp: committed[tp].offset for tp in tps if committed.get(tp) is not None}
        rest = [tp for tp in tps if tp not in out]
        if rest:
            ends = admin.list_offsets({tp: protocol.LATEST_TIMESTAMP for tp in rest})
            out.update((tp, o.offset) for tp, o in ends.items())
        return out
    if s == "to_datetime":
        timestamp_ms = args.timestamp_ms
    else:
        timestamp_ms = int(time.time() * 1000) - args.duration_ms
    found = admin.list_offsets({tp: timestamp_ms for tp in tps})
    out = {tp: o.offset for tp, o in found.items() if o.offset >= 0}
    empty = [tp for tp in tps if tp not in out]
    for tp in empty:
        _warn(f"Warn: Partition {tp.partition} from topic {tp.topic} is empty. Falling back to "
              f"latest known offset.")
    if empty:
        ends = admin.list_offsets({tp: protocol.LATEST_TIMESTAMP for tp in empty})
        out.update((tp, o.offset) for tp, o in ends.items())
    return out


def _clamp(admin: AdminClient, wanted: dict) -> dict[TopicPartition, int]:
    """Requested offsets moved into [earliest, latest] of their partitions, with Kafka's
    warning for each one moved."""
    starts = admin.list_offsets({tp: protocol.EARLIEST_TIMESTAMP for tp in wanted})
    ends = admin.list_offsets({tp: protocol.LATEST_TIMESTAMP for tp in wanted})
    out = {}
    for tp, offset in wanted.items():
        start, end = starts[tp].offset, ends[tp].offset
        name = f"{tp.topic}-{tp.partition}"
        if offset > end:
            _warn(f"WARN: New offset ({offset}) is higher than latest offset for topic "
                  f"partition {name}. Value will be set to {end}")
            offset = end
        elif offset < start:
            _warn(f"WARN: New offset ({offset}) is lower than earliest offset for topic "
                  f"partition {name}. Value will be set to {start}")
            offset = start
        out[tp] = offset
    return out


# --- --delete, --delete-offsets -------------------------------------------------------------------

def _delete(admin: AdminClient, args) -> int:
    results = admin.delete_consumer_groups(_group_ids(admin, args))
    deleted = [g for g, e in results.items() if e is None]
    failed = {g: e for g, e in results.items() if e is not None}
    if not failed:
        print(f"Deletion of requested consumer groups ({_quoted(deleted)}) was successful.")
        return 0
    _error("Deletion of some consumer groups failed:")
    for g, e in failed.items():
        print(f"* Group '{g}' could not be deleted due to: {e}", file=sys.stderr)
    if deleted:
        print(f"\nThese consumer groups were deleted successfully: {_quoted(deleted)}")
    return 1


def _delete_offsets(admin: AdminClient, args) -> int:
    gid = args.group[0]
    results = admin.delete_consumer_group_offsets(gid, _spec_partitions(admin,
                                                                        args.topic_specs))
    failed = sum(1 for e in results.values() if e is not None)
    if failed:
        _error(f"The offsets of {failed} partition(s) of group '{gid}' were not deleted; "
               f"see their STATUS.")
    else:
        print(f"Request succeed for deleting offsets with topic {', '.join(args.topic)} group "
              f"{gid}")
    rows = [["TOPIC", "PARTITION", "STATUS"]]
    rows += [[tp.topic, tp.partition, "Successful" if e is None else f"Error: {e}"]
             for tp, e in sorted(results.items())]
    _table(rows, [30, 15])
    return 1 if failed else 0


# --- main ---------------------------------------------------------------------------------------

def _body(args) -> int:
    action = _check(args)
    with AdminClient(args.bootstrap_server, request_timeout_ms=args.timeout,
                     **command_config_kwargs(args),
                     bootstrap_timeout_ms=args.timeout) as admin:
        return {"list": _list, "describe": _describe, "delete": _delete,
                "reset_offsets": _reset, "delete_offsets": _delete_offsets}[action](admin, args)


def main(argv=None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
