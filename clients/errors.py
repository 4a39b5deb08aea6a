"""The errors a client user may see: every wire error of ``zbroker.errors`` (re-exported here),
plus the few that only a client raises and that never cross a wire."""

from __future__ import annotations

from zbroker.errors import *  # noqa: F401,F403  (the public error table, re-exported)
from zbroker.errors import ZbError
from zbroker.errors import __all__ as _wire_errors


class NoBrokersAvailable(ZbError):
    """No broker answered at the bootstrap addresses within the bounded wait."""
    name = "NO_BROKERS_AVAILABLE"
    retriable = True
    message = "No broker could be reached."


class IllegalStateError(ZbError):
    """The client was used in a way its state does not allow (e.g. after ``close()``)."""
    name = "ILLEGAL_STATE"
    message = "The client is closed."


__all__ = list(_wire_errors) + ["NoBrokersAvailable", "IllegalStateError"]


class BrokerConnectionError(ZbError):
    """The connection to a broker dropped (or the broker stopped answering) with requests in
    flight; their outcome is unknown. Retriable, and a reason to refresh metadata."""
    name = "BROKER_CONNECTION_ERROR"
    retriable = True
    invalid_metadata = True
    message = "The connection to the broker was lost."


__all__ += ["BrokerConnectionError"]


class CommitFailedError(ZbError):
    """A commit that can no longer succeed: this consumer left the group or was removed from it
    (its session expired, it was too slow between polls, or it was fenced), or the partition
    moved to another member. Its sentence says which."""
    name = "COMMIT_FAILED"
    message = ("The commit cannot be completed: this consumer is no longer the owner of the "
               "partitions in the group.")


__all__ += ["CommitFailedError"]
