"""zb-acls: add, remove and list ACLs, as Kafka's kafka-acls.

    zb-acls --bootstrap-server B --add --allow-principal User:alice --operation Write --topic orders
    zb-acls --bootstrap-server B --add --allow-principal User:bob --consumer --topic orders --group g1
    zb-acls --bootstrap-server B --list [--topic orders]
    zb-acls --bootstrap-server B --remove --allow-principal User:alice --operation Write --topic orders

The brokers check them with ``authorizer.enable=true``. ``--producer`` stands for Write,
Describe and Create on the topics, ``--consumer`` for Read and Describe on the topics and Read on
the groups, as in Kafka. Changing ACLs needs Alter on the cluster, listing them Describe.
"""

from __future__ import annotations

from clients.admin import AdminClient
from clients.cli._common import ArgumentParser, UsageError, run
from zbroker import acl, errors
from zbroker.acl import AclBinding, AclFilter
from zbroker.security import SecurityError, command_config

PROG = "zb-acls"


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description="Add, remove and list the cluster's ACLs (checked "
                       "by brokers with authorizer.enable=true).")
    p.add_argument("--bootstrap-server", required=True, metavar="HOST:PORT[,...]",
                   help="brokers to connect to")
    p.add_argument("--command-config", metavar="FILE",
                   help="client settings (security.protocol, curve.secret.key.file, "
                        "curve.server.key.file) as in Kafka's tools")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--add", action="store_true", help="add the ACLs described")
    action.add_argument("--remove", action="store_true",
                        help="remove the ACLs that match (every one of the resource when no "
                             "principal or operation is given)")
    action.add_argument("--list", action="store_true", help="list ACLs (of the resource given)")
    p.add_argument("--allow-principal", action="append", default=[], metavar="User:NAME",
                   help="a principal to allow (repeat for more; User:* is everyone)")
    p.add_argument("--deny-principal", action="append", default=[], metavar="User:NAME",
                   help="a principal to deny (a deny beats any allow)")
    p.add_argument("--principal", metavar="User:NAME",
                   help="with --list: only this principal's ACLs")
    p.add_argument("--operation", action="append", default=[], metavar="OP",
                   help=f"an operation (repeat for more): {', '.join(acl.OPERATIONS)}")
    p.add_argument("--producer", action="store_true",
                   help="Write, Describe and Create on the topics")
    p.add_argument("--consumer", action="store_true",
                   help="Read and Describe on the topics, Read on the groups")
    p.add_argument("--topic", action="append", default=[], help="a topic (repeat for more; "
                   "'*' is every topic)")
    p.add_argument("--group", action="append", default=[], help="a consumer group (repeat for "
                   "more; '*' is every group)")
    p.add_argument("--cluster", action="store_true", help="the cluster itself")
    p.add_argument("--resource-pattern-type", choices=acl.PATTERN_TYPES, default=None,
                   help="literal (the default for --add and --remove) or prefixed: the name is "
                        "a prefix; --list shows both unless one is given")
    p.add_argument("--force", action="store_true",
                   help="accepted for Kafka's scripts: this tool never asks before removing")
    p.add_argument("--timeout-ms", type=int, default=30000,
                   help="how long to wait for the cluster (default 30000)")
    return p


def _resources(args) -> list[tuple[str, str]]:
    out = [(acl.TOPIC, t) for t in args.topic] + [(acl.GROUP, g) for g in args.group]
    if args.cluster:
        out.append((acl.CLUSTER, acl.CLUSTER_NAME))
    return out


def _operations(args, rtype: str) -> list[str]:
    ops = [acl.canonical(o, acl.OPERATIONS, "operation") for o in args.operation]
    if args.producer and rtype == acl.TOPIC:
        ops += [acl.WRITE, acl.DESCRIBE, acl.CREATE]
    if args.consumer and rtype == acl.TOPIC:
        ops += [acl.READ, acl.DESCRIBE]
    if args.consumer and rtype == acl.GROUP:
        ops += [acl.READ]
    return list(dict.fromkeys(ops))


def _principals(args) -> list[tuple[str, str]]:
    return [(acl.check_principal(p), acl.ALLOW) for p in args.allow_principal] + \
        [(acl.check_principal(p), acl.DENY) for p in args.deny_principal]


def bindings_to_add(args) -> list[AclBinding]:
    resources, principals = _resources(args), _principals(args)
    if not resources:
        raise UsageError("Name a resource: --topic, --group or --cluster.")
    if not principals:
        raise UsageError("--add needs --allow-principal or --deny-principal.")
    pattern = args.resource_pattern_type or acl.LITERAL
    out = []
    for rtype, name in resources:
        ops = _operations(args, rtype)
        if not ops:
            raise UsageError(f"Give --operation (or --producer / --consumer) for the "
                             f"{rtype.lower()} {name}.")
        for principal, permission in principals:
            for op in ops:
                out.append(AclBinding.checked([rtype, name, pattern, principal, "*", op,
                                               permission]))
    return out


def filters_to_remove(args) -> list[AclFilter]:
    resources = _resources(args)
    if not resources:
        raise UsageError("Name a resource: --topic, --group or --cluster.")
    pattern = args.resource_pattern_type or acl.LITERAL
    principals = _principals(args) or [(None, None)]
    out = []
    for rtype, name in resources:
        for principal, permission in principals:
            for op in _operations(args, rtype) or [None]:
                out.append(AclFilter(rtype, name, pattern, principal, op, permission))
    return out


def describe_resource(rtype: str, name: str, pattern: str) -> str:
    return (f"ResourcePattern(resourceType={rtype.upper()}, name={name}, "
            f"patternType={pattern.upper()})")


def describe_binding(b: AclBinding) -> str:
    op = "".join("_" + c if c.isupper() else c for c in b.operation).lstrip("_").upper()
    return (f"\t(principal={b.principal}, host={b.host}, operation={op}, "
            f"permissionType={b.permission.upper()})")


def listing(bindings: list[AclBinding]) -> list[str]:
    """Kafka's layout: a heading per resource pattern, a line per binding under it."""
    by_resource: dict[tuple, list[AclBinding]] = {}
    for b in sorted(bindings):
        by_resource.setdefault((b.resource_type, b.name, b.pattern_type), []).append(b)
    lines = []
    for (rtype, name, pattern), group in by_resource.items():
        lines.append(f"Current ACLs for resource `{describe_resource(rtype, name, pattern)}`: ")
        lines += [describe_binding(b) for b in group]
        lines.append("")
    return lines


def _body(args) -> int:
    try:
        security = command_config(args.command_config)
    except SecurityError as e:
        raise UsageError(str(e)) from None
    try:
        to_add = bindings_to_add(args) if args.add else None
        to_remove = filters_to_remove(args) if args.remove else None
        principal = acl.check_principal(args.principal) if args.principal else None
    except errors.InvalidRequest as e:
        raise UsageError(str(e)) from None
    with AdminClient(bootstrap_servers=args.bootstrap_server, **security) as admin:
        if to_add is not None:
            result = admin.create_acls(to_add, timeout_ms=args.timeout_ms)
            if result["failed"]:
                raise errors.InvalidRequest(str(result["failed"][0][1]))
            print("Adding ACLs:")
            print("\n".join(listing(result["succeeded"])))
            return 0
        if to_remove is not None:
            removed = []
            for f, matched, err in admin.delete_acls(to_remove, timeout_ms=args.timeout_ms):
                if err is not None:
                    raise err
                removed += matched
            print(f"Removed {len(removed)} ACL(s)." + (":" if removed else ""))
            if removed:
                print("\n".join(listing(removed)))
            return 0
        filters = [AclFilter(rtype, name, args.resource_pattern_type, principal)
                   for rtype, name in _resources(args)] or [AclFilter(principal=principal)]
        found: set[AclBinding] = set()
        for f in filters:
            found.update(admin.describe_acls(f, timeout_ms=args.timeout_ms))
        print("\n".join(listing(sorted(found))) if found else "No ACLs found.")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, build_parser(), _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
