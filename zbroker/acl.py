"""Kafka's authorization model: ACL bindings, how they are stored in the coordinator, and the
decision a broker takes for one request. No I/O here.

A binding allows or denies one principal (``User:alice``, or ``User:*`` for everyone) one
operation on a resource: a Topic, a Group or the Cluster (named ``kafka-cluster``), matched by a
literal name (``*`` matches every name) or by a name prefix. As in Kafka's AclAuthorizer:

- a deny beats any allow;
- ``All`` stands for every operation;
- Describe is allowed by an allow of Read, Write, Delete or Alter, and DescribeConfigs by an
  allow of AlterConfigs;
- a resource no binding matches at all is allowed only when ``allow.everyone.if.no.acl.found``
  is true (false by default);
- ``super.users`` are allowed everything, bindings or not.

Every binding of the cluster is one value, at ``/acls`` in the coordinator (msgpack
``{"version": 1, "acls": [entry, ...]}``), changed by the controller with a compare-and-set and
watched by every broker; see DESIGN-NOTES.md.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import msgpack

from zbroker import errors

ACL_PATH = "/acls"
FORMAT_VERSION = 1
CLUSTER_NAME = "kafka-cluster"
WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"
ANONYMOUS = "User:ANONYMOUS"            # a connection without a CURVE key (Kafka's name)
BINDINGS_MAX = 100_000                  # in the whole cluster
NAME_CHARS_MAX = 255                    # a resource name or a principal

TOPIC, GROUP, CLUSTER = "Topic", "Group", "Cluster"
RESOURCE_TYPES = (TOPIC, GROUP, CLUSTER)
LITERAL, PREFIXED = "literal", "prefixed"
PATTERN_TYPES = (LITERAL, PREFIXED)
ALLOW, DENY = "Allow", "Deny"
PERMISSIONS = (ALLOW, DENY)
ALL = "All"
READ, WRITE, CREATE, DELETE, ALTER = "Read", "Write", "Create", "Delete", "Alter"
DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS = "Describe", "DescribeConfigs", "AlterConfigs"
CLUSTER_ACTION, IDEMPOTENT_WRITE = "ClusterAction", "IdempotentWrite"
OPERATIONS = (ALL, READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS,
              CLUSTER_ACTION, IDEMPOTENT_WRITE)
IMPLIED_BY = {DESCRIBE: (READ, WRITE, DELETE, ALTER), DESCRIBE_CONFIGS: (ALTER_CONFIGS,)}

_CANONICAL = {v.lower(): v for v in (*RESOURCE_TYPES, *PATTERN_TYPES, *PERMISSIONS, *OPERATIONS)}
_CANONICAL.update({"describe_configs": DESCRIBE_CONFIGS, "alter_configs": ALTER_CONFIGS,
                   "cluster_action": CLUSTER_ACTION, "idempotent_write": IDEMPOTENT_WRITE})


def canonical(value, choices: tuple, what: str) -> str:
    """``value`` spelled as ours (any case, Kafka's UPPER_SNAKE too), or InvalidRequest."""
    if isinstance(value, str):
        found = _CANONICAL.get(value.lower())
        if found in choices:
            return found
    article = "an" if what[0] in "aeiou" else "a"
    raise errors.InvalidRequest(f"{value!r} is not {article} {what} (one of "
                                f"{', '.join(choices)}).")


def check_principal(principal) -> str:
    if not isinstance(principal, str) or not principal.startswith("User:") or \
            len(principal) <= len("User:") or len(principal) > NAME_CHARS_MAX:
        raise errors.InvalidRequest(f"A principal is User:NAME (User:* for everyone), not "
                                    f"{principal!r}.")
    return principal


class AclBinding(NamedTuple):
    """One rule; sent as a msgpack array in this order."""
    resource_type: str
    name: str
    pattern_type: str
    principal: str
    host: str
    operation: str
    permission: str

    @classmethod
    def checked(cls, entry) -> "AclBinding":
        """A binding from a wire or stored entry, every field checked (InvalidRequest)."""
        if not isinstance(entry, (list, tuple)) or len(entry) != len(cls._fields):
            raise errors.InvalidRequest(f"An ACL binding is a list of {len(cls._fields)} fields: "
                                        f"{', '.join(cls._fields)}.")
        rtype, name, pattern, principal, host, op, perm = entry
        rtype = canonical(rtype, RESOURCE_TYPES, "resource type")
        if not isinstance(name, str) or not name or len(name) > NAME_CHARS_MAX:
            raise errors.InvalidRequest(f"A resource name is a string of 1 to {NAME_CHARS_MAX} "
                                        f"characters.")
        pattern = canonical(pattern, PATTERN_TYPES, "resource pattern type")
        if rtype == CLUSTER and (name != CLUSTER_NAME or pattern != LITERAL):
            raise errors.InvalidRequest(f"The cluster resource is the literal name "
                                        f"{CLUSTER_NAME}.")
        if pattern == PREFIXED and name == WILDCARD:
            raise errors.InvalidRequest("A prefixed pattern cannot be '*'; use the literal '*'.")
        if host != WILDCARD:
            raise errors.InvalidRequest("Only the host '*' is supported (every host).")
        return cls(rtype, name, pattern, check_principal(principal), host,
                   canonical(op, OPERATIONS, "operation"),
                   canonical(perm, PERMISSIONS, "permission type"))

    def matches_resource(self, rtype: str, name: str) -> bool:
        if self.resource_type != rtype:
            return False
        if self.pattern_type == LITERAL:
            return self.name == name or self.name == WILDCARD
        return name.startswith(self.name)


class AclFilter(NamedTuple):
    """Which bindings a describe or delete is about; None in a field matches anything. Sent as a
    msgpack map of the fields that are set."""
    resource_type: str | None = None
    name: str | None = None
    pattern_type: str | None = None
    principal: str | None = None
    operation: str | None = None
    permission: str | None = None

    @classmethod
    def checked(cls, entry) -> "AclFilter":
        if not isinstance(entry, dict) or not set(entry) <= set(cls._fields) or \
                not all(isinstance(k, str) for k in entry):
            raise errors.InvalidRequest(f"An ACL filter is a map of some of "
                                        f"{', '.join(cls._fields)}.")
        f = {k: v for k, v in entry.items() if v is not None}
        for key, choices, what in (("resource_type", RESOURCE_TYPES, "resource type"),
                                   ("pattern_type", PATTERN_TYPES, "resource pattern type"),
                                   ("operation", OPERATIONS, "operation"),
                                   ("permission", PERMISSIONS, "permission type")):
            if key in f:
                f[key] = canonical(f[key], choices, what)
        if "principal" in f:
            check_principal(f["principal"])
        if "name" in f and (not isinstance(f["name"], str) or len(f["name"]) > NAME_CHARS_MAX):
            raise errors.InvalidRequest("A resource name in a filter is a string.")
        return cls(**f)

    def wire(self) -> dict:
        return {k: v for k, v in self._asdict().items() if v is not None}

    def matches(self, b: AclBinding) -> bool:
        return all(want is None or want == getattr(b, field)
                   for field, want in self._asdict().items())


def encode(bindings: Iterable[AclBinding]) -> bytes:
    return msgpack.packb({"version": FORMAT_VERSION,
                          "acls": [list(b) for b in sorted(set(bindings))]})


def decode(raw: bytes | None) -> tuple[list[AclBinding], int]:
    """The stored bindings, and how many stored entries were not usable (skipped, never raised:
    a garbage value in the coordinator must not stop a broker)."""
    if not raw:
        return [], 0
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        entries = doc["acls"] if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            return [], 1
    except Exception:
        return [], 1
    out, bad = [], 0
    for e in entries[:BINDINGS_MAX]:
        try:
            out.append(AclBinding.checked(e))
        except errors.ZbError:
            bad += 1
    return out, bad


class AclCache:
    """The bindings, indexed by resource type, and the decision."""

    def __init__(self, bindings: Iterable[AclBinding] = (), allow_if_no_acl: bool = False,
                 super_users: Iterable[str] = (), loaded: bool = True):
        self.bindings = sorted(set(bindings))
        self.allow_if_no_acl = allow_if_no_acl
        # False until the bindings were read: nothing but super users is allowed then, so
        # allow.everyone.if.no.acl.found cannot open what a stored deny closes
        self.loaded = loaded
        self.super_users = frozenset(super_users)
        self._by_type: dict[str, list[AclBinding]] = {t: [] for t in RESOURCE_TYPES}
        for b in self.bindings:
            self._by_type[b.resource_type].append(b)
        self._memo: dict[tuple, bool] = {}

    def authorize(self, principal: str, operation: str, rtype: str, name: str) -> bool:
        if principal in self.super_users:
            return True
        if not self.loaded:
            return False
        if len(name) > NAME_CHARS_MAX:      # no valid resource: not worth remembering
            return self._decide(principal, operation, rtype, name)
        key = (principal, operation, rtype, name)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        if len(self._memo) > 100_000:
            self._memo.clear()
        self._memo[key] = verdict = self._decide(principal, operation, rtype, name)
        return verdict

    def _decide(self, principal, operation, rtype, name) -> bool:
        matching = [b for b in self._by_type[rtype] if b.matches_resource(rtype, name)]
        if not matching:
            return self.allow_if_no_acl
        who = (principal, WILDCARD_PRINCIPAL)
        mine = [b for b in matching if b.principal in who]
        if any(b.permission == DENY and b.operation in (operation, ALL) for b in mine):
            return False
        allowed_by = (operation, ALL, *IMPLIED_BY.get(operation, ()))
        return any(b.permission == ALLOW and b.operation in allowed_by for b in mine)

    def allowed_on_any(self, principal: str, operation: str, rtype: str) -> bool:
        """Some resource of ``rtype`` allows ``operation`` (Kafka's check for InitProducerId
        without IdempotentWrite: Write on any topic). With ``allow.everyone.if.no.acl.found``,
        a name no binding matches is such a resource, and there is one unless a literal ``*``
        binding matches every name."""
        if principal in self.super_users:
            return True
        if not self.loaded:
            return False
        who = (principal, WILDCARD_PRINCIPAL)
        ops = (operation, ALL)
        every = [b for b in self._by_type[rtype] if b.pattern_type == LITERAL and
                 b.name == WILDCARD]
        if any(b.permission == DENY and b.principal in who and b.operation in ops
               for b in every):
            return False            # denied on every name
        if self.allow_if_no_acl and not every:
            return True
        return any(b.permission == ALLOW and b.principal in who and b.operation in ops
                   for b in self._by_type[rtype])


def parse_super_users(value: str) -> frozenset[str]:
    """``super.users``: principals separated by ';' (Kafka's format)."""
    out = set()
    for item in (value or "").split(";"):
        item = item.strip()
        if item:
            try:
                check_principal(item)
            except errors.InvalidRequest as e:
                raise ValueError(f"super.users: {e}") from None
            out.add(item)
    return frozenset(out)


def principal_of(frame) -> str:
    """The principal of the connection a request frame came on: ``User:`` + the User-Id the ZAP
    handler gave it (its key file's name), or User:ANONYMOUS without CURVE."""
    try:
        user = frame.get("User-Id")
    except Exception:
        return ANONYMOUS
    if not user or user == "anonymous":
        return ANONYMOUS
    return f"User:{user}"
