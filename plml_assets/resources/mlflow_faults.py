"""Which MLflow failures mean "the store did not answer" (worth waiting for) rather than a bad
request (not): a tracking server refusing connections, timing out or answering 502/503/504, or a SQL
store that cannot be connected to. The registry steps retry the first kind with backoff
(defs/shared.retry_when_store_unreachable); anything else fails at once."""

from __future__ import annotations

import re

_UNREACHABLE = re.compile(
    r"Max retries exceeded|Connection (?:refused|aborted|reset)|RemoteDisconnected|NewConnectionError|timed out|"
    r"Read timed out|error code 50[234]|too many 50[234] error responses|could not connect to server|"
    r"connection to server .* failed|server closed the connection unexpectedly|Temporary failure in name resolution",
    re.I,
)


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the MLflow store could not be reached."""
    for link in _chain(exc):
        kind = type(link)
        names = {c.__name__ for c in kind.__mro__}
        if names & {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "MaxRetryError", "NewConnectionError",
                    "ProtocolError", "RemoteDisconnected", "ConnectionRefusedError", "ConnectionResetError"}:
            return True
        if "OperationalError" in names and kind.__module__.startswith("sqlalchemy"):
            return True
        if _UNREACHABLE.search(str(link)):
            return True
    return False
