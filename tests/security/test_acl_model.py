"""The authorization decision and the stored form of ACLs, without processes (zbroker/acl.py)."""

import msgpack
import pytest

from zbroker import acl, errors
from zbroker.acl import AclBinding, AclCache, AclFilter

pytestmark = pytest.mark.timeout(10)


def b(rtype, name, principal, op, perm="Allow", pattern="literal"):
    return AclBinding.checked([rtype, name, pattern, principal, "*", op, perm])


def test_allow_deny_implied_and_wildcards():
    cache = AclCache([
        b("Topic", "orders", "User:alice", "Write"),
        b("Topic", "orders", "User:bob", "Read"),
        b("Topic", "pay-", "User:carol", "All", pattern="prefixed"),
        b("Topic", "pay-secret", "User:carol", "Read", perm="Deny"),
        b("Topic", "*", "User:*", "Describe"),
        b("Group", "g1", "User:bob", "Read"),
    ])
    assert cache.authorize("User:alice", "Write", "Topic", "orders")
    assert not cache.authorize("User:alice", "Read", "Topic", "orders")
    assert not cache.authorize("User:bob", "Write", "Topic", "orders")
    assert cache.authorize("User:bob", "Describe", "Topic", "orders")     # by the wildcard too
    assert cache.authorize("User:carol", "Write", "Topic", "pay-in")      # All, by prefix
    assert not cache.authorize("User:carol", "Read", "Topic", "pay-secret")   # deny beats All
    assert cache.authorize("User:carol", "Write", "Topic", "pay-secret")
    assert not cache.authorize("User:carol", "Write", "Topic", "payments")
    assert cache.authorize("User:bob", "Describe", "Group", "g1")         # implied by Read
    assert not cache.authorize("User:bob", "Read", "Group", "g2")         # no ACL: denied
    assert not cache.authorize(acl.ANONYMOUS, "Write", "Topic", "orders")
    assert cache.allowed_on_any("User:alice", "Write", "Topic")
    assert not cache.allowed_on_any("User:bob", "Write", "Topic")


def test_no_acl_found_and_super_users():
    bindings = [b("Topic", "orders", "User:alice", "Write")]
    strict = AclCache(bindings)
    lax = AclCache(bindings, allow_if_no_acl=True, super_users={"User:admin"})
    assert not strict.authorize("User:bob", "Read", "Topic", "other")
    assert lax.authorize("User:bob", "Read", "Topic", "other")            # nothing matches it
    assert not lax.authorize("User:bob", "Read", "Topic", "orders")       # something does
    assert lax.authorize("User:admin", "Delete", "Cluster", acl.CLUSTER_NAME)


def test_until_the_acls_are_read_only_super_users_pass():
    # allow.everyone.if.no.acl.found must not open, before the bindings are read, what a
    # stored deny closes
    empty = AclCache((), allow_if_no_acl=True, super_users={"User:admin"}, loaded=False)
    assert not empty.authorize("User:bob", "Read", "Topic", "orders")
    assert not empty.allowed_on_any("User:bob", "Write", "Topic")
    assert empty.authorize("User:admin", "Write", "Topic", "orders")
    assert empty.allowed_on_any("User:admin", "Write", "Topic")


def test_write_on_any_topic_with_no_acl_found_and_wildcard_denies():
    lax_open = AclCache([b("Topic", "orders", "User:alice", "Read")], allow_if_no_acl=True)
    assert lax_open.allowed_on_any("User:bob", "Write", "Topic")    # a topic no ACL names
    denied = AclCache([b("Topic", "*", "User:bob", "Write", perm="Deny"),
                       b("Topic", "orders", "User:bob", "Write")], allow_if_no_acl=True)
    assert not denied.allowed_on_any("User:bob", "Write", "Topic")  # denied on every name
    # bob's deny on "*" is an ACL found for every name, so carol, with no allow, writes nowhere
    assert not denied.allowed_on_any("User:carol", "Write", "Topic")
    assert not denied.authorize("User:carol", "Write", "Topic", "elsewhere")
    everyone_denied = AclCache([b("Topic", "*", "User:*", "All", perm="Deny")])
    assert not everyone_denied.allowed_on_any("User:bob", "Write", "Topic")
    covered = AclCache([b("Topic", "*", "User:carol", "Read")], allow_if_no_acl=True)
    assert not covered.allowed_on_any("User:bob", "Write", "Topic")  # every name has an ACL


def test_names_too_long_for_a_resource_are_decided_but_not_remembered():
    cache = AclCache([b("Topic", "*", "User:*", "Describe")])
    long_name = "t" * (acl.NAME_CHARS_MAX + 1)
    for i in range(50):
        assert cache.authorize("User:bob", "Describe", "Topic", long_name + str(i))
    assert not cache._memo
    assert cache.authorize("User:bob", "Describe", "Topic", "orders")
    assert len(cache._memo) == 1


def test_bindings_are_checked_and_names_are_canonical():
    assert b("TOPIC", "t", "User:a", "describe_configs", "ALLOW", "PREFIXED") == \
        AclBinding("Topic", "t", "prefixed", "User:a", "*", "DescribeConfigs", "Allow")
    for bad in (["Topic", "t", "literal", "alice", "*", "Read", "Allow"],       # no User:
                ["Queue", "t", "literal", "User:a", "*", "Read", "Allow"],
                ["Topic", "", "literal", "User:a", "*", "Read", "Allow"],
                ["Topic", "t", "literal", "User:a", "*", "Fly", "Allow"],
                ["Topic", "t", "literal", "User:a", "10.0.0.1", "Read", "Allow"],
                ["Cluster", "other", "literal", "User:a", "*", "Alter", "Allow"],
                ["Topic", "*", "prefixed", "User:a", "*", "Read", "Allow"],
                ["Topic", 3, "literal", "User:a", "*", "Read", "Allow"],
                ["Topic", "t"], "Topic", None):
        with pytest.raises(errors.InvalidRequest):
            AclBinding.checked(bad)
    with pytest.raises(errors.InvalidRequest):
        AclFilter.checked({"operation": "Fly"})
    with pytest.raises(errors.InvalidRequest):
        AclFilter.checked({"colour": "red"})
    f = AclFilter.checked({"principal": "User:a", "operation": "READ"})
    assert f.matches(b("Topic", "x", "User:a", "Read"))
    assert not f.matches(b("Topic", "x", "User:a", "Write"))
    assert AclFilter.checked(f.wire()) == f


def test_stored_form_round_trips_and_garbage_never_raises():
    bindings = [b("Topic", "orders", "User:alice", "Write"), b("Group", "g", "User:bob", "Read")]
    assert sorted(acl.decode(acl.encode(bindings))[0]) == sorted(bindings)
    assert acl.decode(acl.encode(bindings + bindings))[0] == sorted(bindings)
    assert acl.decode(None) == ([], 0)
    for garbage in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"acls": 7}),
                    msgpack.packb({"acls": [["Topic"], None, list(bindings[0])]})):
        got, bad = acl.decode(garbage)
        assert bad >= 1
        assert got in ([], [bindings[0]])


def test_super_users_setting():
    assert acl.parse_super_users("User:broker-1; User:admin;") == {"User:broker-1", "User:admin"}
    assert acl.parse_super_users("") == frozenset()
    with pytest.raises(ValueError, match="super.users"):
        acl.parse_super_users("admin")


def test_zb_acls_says_what_is_missing_before_it_connects(capsys):
    from clients.cli import acls
    for argv, said in ((["--add", "--topic", "t"], "--allow-principal"),
                       (["--add", "--allow-principal", "User:a", "--topic", "t"], "--operation"),
                       (["--add", "--allow-principal", "alice", "--operation", "Read",
                         "--topic", "t"], "User:NAME"),
                       (["--add", "--allow-principal", "User:a", "--operation", "Fly",
                         "--topic", "t"], "not an operation"),
                       (["--remove", "--allow-principal", "User:a"], "Name a resource")):
        assert acls.main(["--bootstrap-server", "127.0.0.1:1", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("zb-acls: ") and said in err, err
