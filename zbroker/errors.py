"""Every error that crosses a wire, for every side: clients, brokers and the coordinator.

Each error is a class with a numeric ``code`` for the wire, a Kafka-style ``name``, and two flags:
``retriable`` (the same request may succeed later) and ``invalid_metadata`` (refresh metadata
before retrying). ``error_for_code`` turns a code from a reply back into the class, so a client
raises the same exception a server named.

Kafka's names and codes are used where the meaning is Kafka's (Kafka's codes run up to about
150); the coordinator's errors (the ZooKeeper-like ones) live in their own range from 1001 up.
"""

from __future__ import annotations


class ZbError(Exception):
    """Base of every zbroker error. ``str(e)`` is a sentence meant for a person."""

    code = -1
    name = "UNKNOWN_SERVER_ERROR"
    retriable = False
    invalid_metadata = False
    message = "The server hit an unexpected error."

    def __init__(self, detail: str | None = None):
        self.detail = detail or self.message
        super().__init__(self.detail)


_BY_CODE: dict[int, type[ZbError]] = {}


def _register(cls: type[ZbError]) -> type[ZbError]:
    if cls.code in _BY_CODE:
        raise RuntimeError(f"error code {cls.code} defined twice")
    _BY_CODE[cls.code] = cls
    return cls


def error_for_code(code: int) -> type[ZbError]:
    """The error class for a wire code; unknown codes map to UnknownServerError."""
    return _BY_CODE.get(code, UnknownServerError)


def make_error(code: int, detail: str | None = None) -> ZbError:
    return error_for_code(code)(detail)


@_register
class UnknownServerError(ZbError):
    code = -1


# --- Kafka's errors (codes as in Kafka's protocol) ---------------------------------------------

@_register
class OffsetOutOfRange(ZbError):
    code, name = 1, "OFFSET_OUT_OF_RANGE"
    message = "The requested offset is outside the range of offsets the partition holds."


@_register
class CorruptMessage(ZbError):
    code, name, retriable = 2, "CORRUPT_MESSAGE", True
    message = "The record batch is malformed or its checksum does not match."


@_register
class UnknownTopicOrPartition(ZbError):
    code, name, retriable, invalid_metadata = 3, "UNKNOWN_TOPIC_OR_PARTITION", True, True
    message = "This server does not host this topic-partition."


@_register
class LeaderNotAvailable(ZbError):
    code, name, retriable, invalid_metadata = 5, "LEADER_NOT_AVAILABLE", True, True
    message = "The partition has no leader right now (an election is in progress)."


@_register
class NotLeaderOrFollower(ZbError):
    code, name, retriable, invalid_metadata = 6, "NOT_LEADER_OR_FOLLOWER", True, True
    message = "This broker is not the leader (or a follower) of that partition."


@_register
class RequestTimedOut(ZbError):
    code, name, retriable = 7, "REQUEST_TIMED_OUT", True
    message = "The request timed out."


@_register
class MessageTooLarge(ZbError):
    code, name = 10, "MESSAGE_TOO_LARGE"
    message = "The request or record batch is larger than the server accepts."


@_register
class CoordinatorNotAvailable(ZbError):
    code, name, retriable = 15, "COORDINATOR_NOT_AVAILABLE", True
    message = "The group coordinator is not available."


@_register
class NotCoordinator(ZbError):
    code, name, retriable = 16, "NOT_COORDINATOR", True
    message = "This broker is not the coordinator for that group."


@_register
class InvalidTopic(ZbError):
    code, name = 17, "INVALID_TOPIC_EXCEPTION"
    message = "The topic name is not valid."


@_register
class BrokerNotAvailable(ZbError):
    code, name, retriable = 8, "BROKER_NOT_AVAILABLE", True
    message = "The broker is not available."


@_register
class InvalidRequiredAcks(ZbError):
    code, name = 21, "INVALID_REQUIRED_ACKS"
    message = "acks must be 0, 1 or -1 (all)."


@_register
class NotEnoughReplicasAfterAppend(ZbError):
    code, name, retriable = 20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", True
    message = "The record was written, but fewer replicas than required acknowledged it."


@_register
class InvalidConfig(ZbError):
    code, name = 40, "INVALID_CONFIG"
    message = "The configuration is not valid."


@_register
class NotController(ZbError):
    code, name, retriable, invalid_metadata = 41, "NOT_CONTROLLER", True, True
    message = "This broker is not the controller."


@_register
class TopicDeletionDisabled(ZbError):
    code, name = 73, "TOPIC_DELETION_DISABLED"
    message = "Topic deletion is disabled on this cluster (delete.topic.enable=false)."


@_register
class NotEnoughReplicas(ZbError):
    code, name, retriable = 19, "NOT_ENOUGH_REPLICAS", True
    message = "Fewer replicas are in sync than min.insync.replicas requires."


@_register
class IllegalGeneration(ZbError):
    code, name = 22, "ILLEGAL_GENERATION"
    message = "The consumer group generation is not current."


@_register
class UnknownMemberId(ZbError):
    code, name = 25, "UNKNOWN_MEMBER_ID"
    message = "The consumer group does not know this member."


@_register
class RebalanceInProgress(ZbError):
    code, name = 27, "REBALANCE_IN_PROGRESS"
    message = "The consumer group is rebalancing."


# --- consumer groups (Kafka's codes) -----------------------------------------------------------

@_register
class OffsetMetadataTooLarge(ZbError):
    code, name = 12, "OFFSET_METADATA_TOO_LARGE"
    message = "The metadata of a committed offset is larger than offset.metadata.max.bytes."


@_register
class CoordinatorLoadInProgress(ZbError):
    code, name, retriable = 14, "COORDINATOR_LOAD_IN_PROGRESS", True
    message = "The group coordinator is still loading the group's state."


@_register
class InvalidGroupId(ZbError):
    code, name = 24, "INVALID_GROUP_ID"
    message = "The group id is not valid."


@_register
class InvalidSessionTimeout(ZbError):
    code, name = 26, "INVALID_SESSION_TIMEOUT"
    message = "The session timeout is outside the range the broker allows."


@_register
class NonEmptyGroup(ZbError):
    code, name = 68, "NON_EMPTY_GROUP"
    message = "The group still has members."


@_register
class GroupIdNotFound(ZbError):
    code, name = 69, "GROUP_ID_NOT_FOUND"
    message = "The group does not exist."


@_register
class GroupMaxSizeReached(ZbError):
    code, name = 81, "GROUP_MAX_SIZE_REACHED"
    message = "The consumer group has reached its maximum number of members."


@_register
class FencedInstanceId(ZbError):
    code, name = 82, "FENCED_INSTANCE_ID"
    message = "Another member has taken over this group instance id."


@_register
class GroupSubscribedToTopic(ZbError):
    code, name = 86, "GROUP_SUBSCRIBED_TO_TOPIC"
    message = "A member of the group is subscribed to this topic."


@_register
class FencedMemberEpoch(ZbError):
    code, name = 110, "FENCED_MEMBER_EPOCH"
    message = ("The member epoch is not the one the group coordinator knows; the member must give "
               "up its partitions and rejoin.")


@_register
class UnreleasedInstanceId(ZbError):
    code, name = 111, "UNRELEASED_INSTANCE_ID"
    message = "The group instance id is still held by another member."


@_register
class UnsupportedAssignor(ZbError):
    code, name = 112, "UNSUPPORTED_ASSIGNOR"
    message = "The broker does not know the requested assignor."


@_register
class StaleMemberEpoch(ZbError):
    code, name, retriable = 113, "STALE_MEMBER_EPOCH", True
    message = "The member epoch is older than the member's current one; retry with the new epoch."


@_register
class UnassignedPartition(ZbError):
    code, name = 134, "UNASSIGNED_PARTITION"
    message = "The partition is not assigned to this member."


@_register
class UnsupportedVersion(ZbError):
    code, name = 35, "UNSUPPORTED_VERSION"
    message = "The server does not support this version of the request."


@_register
class TopicAlreadyExists(ZbError):
    code, name = 36, "TOPIC_ALREADY_EXISTS"
    message = "A topic with this name already exists."


@_register
class InvalidPartitions(ZbError):
    code, name = 37, "INVALID_PARTITIONS"
    message = "The number of partitions is not valid."


@_register
class InvalidReplicationFactor(ZbError):
    code, name = 38, "INVALID_REPLICATION_FACTOR"
    message = "The replication factor is not valid."


@_register
class InvalidRequest(ZbError):
    code, name = 42, "INVALID_REQUEST"
    message = "The request is malformed."


@_register
class FetchSessionIdNotFound(ZbError):
    code, name, retriable = 70, "FETCH_SESSION_ID_NOT_FOUND", True
    message = "The fetch session is not known to the broker."


@_register
class InvalidFetchSessionEpoch(ZbError):
    code, name, retriable = 71, "INVALID_FETCH_SESSION_EPOCH", True
    message = "The fetch session epoch is not the one the broker expects."


@_register
class FencedLeaderEpoch(ZbError):
    code, name, retriable, invalid_metadata = 74, "FENCED_LEADER_EPOCH", True, True
    message = "The leader epoch in the request is older than the broker's."


@_register
class UnknownLeaderEpoch(ZbError):
    code, name, retriable, invalid_metadata = 75, "UNKNOWN_LEADER_EPOCH", True, True
    message = "The leader epoch in the request is newer than the broker's."


@_register
class StaleBrokerEpoch(ZbError):
    code, name, retriable = 77, "STALE_BROKER_EPOCH", True
    message = "The broker epoch in the request is not the broker's registered one."


@_register
class KafkaStorageError(ZbError):
    code, name, retriable = 56, "KAFKA_STORAGE_ERROR", True
    message = "The broker could not read or write its log directory."


@_register
class OutOfOrderSequenceNumber(ZbError):
    code, name = 45, "OUT_OF_ORDER_SEQUENCE_NUMBER"
    message = ("The broker received a batch whose sequence number does not follow the "
               "producer's last one on this partition.")


@_register
class DuplicateSequenceNumber(ZbError):
    code, name = 46, "DUPLICATE_SEQUENCE_NUMBER"
    message = "The broker already has this batch but no longer knows its offset."


@_register
class InvalidProducerEpoch(ZbError):
    code, name = 47, "INVALID_PRODUCER_EPOCH"
    message = "The producer's epoch is older than the one the broker has seen for its id."


@_register
class UnknownProducerId(ZbError):
    code, name = 59, "UNKNOWN_PRODUCER_ID"
    message = ("The broker has no state for this producer id on this partition (it expired "
               "or its records were deleted) and the batch does not start a sequence.")


# --- The coordinator's errors (ZooKeeper's meanings) -------------------------------------------

@_register
class NoNode(ZbError):
    code, name = 1001, "NO_NODE"
    message = "No key exists at that path."


@_register
class NodeExists(ZbError):
    code, name = 1002, "NODE_EXISTS"
    message = "A key already exists at that path."


@_register
class BadVersion(ZbError):
    code, name = 1003, "BAD_VERSION"
    message = "The key's version is not the expected one."


@_register
class NotEmpty(ZbError):
    code, name = 1004, "NOT_EMPTY"
    message = "The key has children; delete them first."


@_register
class NoChildrenForEphemerals(ZbError):
    code, name = 1005, "NO_CHILDREN_FOR_EPHEMERALS"
    message = "An ephemeral key cannot have children."


@_register
class SessionExpired(ZbError):
    code, name = 1006, "SESSION_EXPIRED"
    message = "The coordinator session has expired; open a new client."


@_register
class ConnectionLoss(ZbError):
    code, name, retriable = 1007, "CONNECTION_LOSS", True
    message = "The connection to the coordinator was lost; the request's outcome is unknown."


@_register
class FencedEpoch(ZbError):
    code, name = 1008, "FENCED_EPOCH"
    message = "The write carries an epoch older than the current holder's; it was refused."


@_register
class BadArguments(ZbError):
    code, name = 1009, "BAD_ARGUMENTS"
    message = "The request's arguments are not valid."


@_register
class RuntimeInconsistency(ZbError):
    code, name = 1010, "RUNTIME_INCONSISTENCY"
    message = "A multi-operation failed because another of its operations failed."


@_register
class TooBusy(ZbError):
    code, name, retriable = 1011, "TOO_BUSY", True
    message = "The server's queue is full; retry shortly."


@_register
class SessionMoved(ZbError):
    code, name, retriable = 1012, "SESSION_MOVED", True
    message = ("The session is bound to another connection; reconnect with the session's "
               "secret to move it here.")


@_register
class NotQuorumLeader(ZbError):
    code, name, retriable = 1013, "NOT_QUORUM_LEADER", True
    message = ("This coordinator is not the ensemble's leader (or is still catching up); the "
               "request was not applied: send it to the leader.")


@_register
class AuthenticationFailed(ZbError):
    code, name = 1014, "AUTHENTICATION_FAILED"
    message = "The server refused our credentials during the handshake."


@_register
class TopicAuthorizationFailed(ZbError):
    code, name = 29, "TOPIC_AUTHORIZATION_FAILED"
    message = "Not authorized to access this topic (no ACL allows it)."


@_register
class GroupAuthorizationFailed(ZbError):
    code, name = 30, "GROUP_AUTHORIZATION_FAILED"
    message = "Not authorized to access this consumer group (no ACL allows it)."


@_register
class ClusterAuthorizationFailed(ZbError):
    code, name = 31, "CLUSTER_AUTHORIZATION_FAILED"
    message = "Not authorized for this cluster operation (no ACL allows it)."


@_register
class SecurityDisabled(ZbError):
    code, name = 54, "SECURITY_DISABLED"
    message = "The cluster does not authorize requests (authorizer.enable is false)."


@_register
class NoAuth(ZbError):
    code, name = 1015, "NO_AUTH"
    message = ("Only the brokers and the super users may write to this coordinator "
               "(authorizer.enable); nothing was applied.")


__all__ = [n for n, v in list(globals().items()) if isinstance(v, type) and issubclass(v, ZbError)]
__all__ += ["error_for_code", "make_error"]
