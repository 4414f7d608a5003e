"""Champion-move notices for the prediction engine: a transactional outbox and its deliverer.

Every move of the ``champion`` alias (promotion, rollback, a manual move) becomes one event in a
SQLite outbox, written while the registry lock is held, so the outbox order is the order of the
alias moves. The deliverer POSTs the oldest pending event first (a later one never overtakes it),
as JSON with the keys of :data:`PAYLOAD_KEYS`, and the event's id as ``Idempotency-Key`` header:
delivery is at least once (a process killed between the server's 2xx and the outbox update sends
the event again after a restart), so the receiver dedups on that key.

A 2xx answer delivers the event; anything else (another status, a refused connection, a timeout)
is retried with exponential backoff within :class:`RetryPolicy`, then left pending with its attempt
count and last error, for the next flush (the Dagster sensor, ``plml notify --flush``, the next
promotion) to retry, in a later process too: the outbox is a file.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from plml_assets.lib.registry.locks import file_lock

#: The JSON body of every notice, exactly these keys.
PAYLOAD_KEYS = ("model_name", "version", "alias", "previous_version", "reasons", "event", "event_id", "occurred_at")
EVENTS = ("promotion", "rollback")
IDEMPOTENCY_HEADER = "Idempotency-Key"
KEEP_DELIVERED = 1000  # delivered events kept for inspection (`plml notify --json`), newest first

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_attempt_at TEXT,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS events_pending ON events (delivered_at, seq);
"""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def champion_event(event: str, model_name: str, version: str, previous_version: str | None, reasons: list[str],
                   alias: str = "champion") -> dict:
    """The payload of one champion move, with a fresh ``event_id`` and the time of the move."""
    if event not in EVENTS:
        raise ValueError(f"event {event!r}: expected one of {EVENTS}")
    return {"model_name": model_name, "version": str(version), "alias": alias,
            "previous_version": None if previous_version is None else str(previous_version),
            "reasons": [str(r) for r in reasons], "event": event, "event_id": str(uuid.uuid4()), "occurred_at": utc_now()}


@dataclass(frozen=True)
class RetryPolicy:
    """``tries`` POSTs of one event per flush, ``backoff_s`` doubling between them (capped at
    ``max_backoff_s``), each POST bounded by ``timeout_s``: by default 4 tries within 3.5 s of waits."""

    tries: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 4.0
    timeout_s: float = 3.0

    def __post_init__(self) -> None:
        if self.tries < 1 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"retry policy {self}: tries >= 1, backoff_s >= 0 and timeout_s > 0 expected")

    def delays(self) -> list[float]:
        """Seconds to wait before tries 2..N."""
        return [min(self.backoff_s * 2 ** k, self.max_backoff_s) for k in range(self.tries - 1)]

    def worst_case_s(self) -> float:
        return self.tries * self.timeout_s + sum(self.delays())


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    event_id: str
    payload: dict
    created_at: str
    attempts: int
    last_error: str | None
    last_attempt_at: str | None
    delivered_at: str | None

    def to_json(self) -> dict:
        return {"seq": self.seq, "event_id": self.event_id, "event": self.payload.get("event"), "model_name": self.payload.get("model_name"),
                "version": self.payload.get("version"), "previous_version": self.payload.get("previous_version"),
                "occurred_at": self.payload.get("occurred_at"), "attempts": self.attempts, "last_error": self.last_error,
                "last_attempt_at": self.last_attempt_at, "delivered_at": self.delivered_at, "payload": self.payload}


class Outbox:
    """Events in a SQLite file, safe for several processes: each call opens its own connection,
    writes take SQLite's write lock (``BEGIN IMMEDIATE``, waiting up to ``busy_timeout_s``), and
    :meth:`delivery_lock` (a file lock beside the database) lets one process at a time deliver."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def enqueue(self, payload: dict) -> str:
        missing = [k for k in PAYLOAD_KEYS if k not in payload]
        if missing:
            raise ValueError(f"event payload lacks {missing}")
        with self._write() as conn:
            conn.execute("INSERT INTO events (event_id, payload, created_at) VALUES (?, ?, ?)",
                         (payload["event_id"], json.dumps(payload, sort_keys=True), utc_now()))
        return payload["event_id"]

    def _select(self, where: str, order: str, limit: int | None) -> list[OutboxEvent]:
        if not self.path.exists():  # reading must not create the file: no URL, no outbox
            return []
        sql = f"SELECT seq, event_id, payload, created_at, attempts, last_error, last_attempt_at, delivered_at FROM events WHERE {where} ORDER BY {order}"
        with self._connect() as conn:
            rows = conn.execute(sql + (" LIMIT ?" if limit is not None else ""), (limit,) if limit is not None else ()).fetchall()
        return [OutboxEvent(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    def pending(self, limit: int | None = None) -> list[OutboxEvent]:
        """Undelivered events, oldest (first enqueued) first."""
        return self._select("delivered_at IS NULL", "seq", limit)

    def delivered(self, limit: int | None = None) -> list[OutboxEvent]:
        """Delivered events, most recently enqueued first."""
        return self._select("delivered_at IS NOT NULL", "seq DESC", limit)

    def record_attempt(self, event_id: str, error: str | None) -> None:
        """One POST of ``event_id``: delivered when ``error`` is None, else its error kept."""
        now = utc_now()
        with self._write() as conn:
            conn.execute("UPDATE events SET attempts = attempts + 1, last_attempt_at = ?, last_error = COALESCE(?, last_error), "
                         "delivered_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END WHERE event_id = ?",
                         (now, error, error, now, event_id))
            if error is None:
                conn.execute("DELETE FROM events WHERE delivered_at IS NOT NULL AND seq NOT IN "
                             "(SELECT seq FROM events WHERE delivered_at IS NOT NULL ORDER BY seq DESC LIMIT ?)", (KEEP_DELIVERED,))

    def delivery_lock(self, timeout_s: float):
        """Yields True while this process alone delivers; False when another held it ``timeout_s``."""
        return file_lock(self.path.with_name(self.path.name + ".deliver.lock"), timeout_s)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be re-sent as a GET without its body: take a 3xx as a failure instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post_event(url: str, payload: dict, timeout_s: float, token: str | None = None) -> int:
    """POST one event; returns the HTTP status of a 2xx answer, raises for anything else (OSError:
    HTTPError, URLError, a timeout; http.client.HTTPException: a broken answer)."""
    headers = {"Content-Type": "application/json", "User-Agent": "plml-promotion-webhook", IDEMPOTENCY_HEADER: payload["event_id"]}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers, method="POST")
    with _OPENER.open(request, timeout=timeout_s) as response:
        response.read(65536)
        status = int(response.status)
    if not 200 <= status < 300:
        raise urllib.error.HTTPError(url, status, f"status {status}", None, None)
    return status


def describe_error(exc: BaseException) -> str:
    """A short reason without the URL (urllib's messages may quote it)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return f"{type(reason).__name__}: {getattr(reason, 'strerror', None) or reason}" if isinstance(reason, BaseException) else str(reason)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class FlushResult:
    delivered: list[str] = field(default_factory=list)  # event ids delivered by this flush, in order
    pending: list[OutboxEvent] = field(default_factory=list)  # what is still pending afterwards
    error: str | None = None  # why the oldest pending event was not delivered
    busy: bool = False  # another process held the delivery lock

    @property
    def ok(self) -> bool:
        return not self.pending and not self.busy


def flush(outbox: Outbox, url: str, policy: RetryPolicy = RetryPolicy(), token: str | None = None,
          mask: Callable[[str], str] = str, sleep: Callable[[float], None] = time.sleep,
          max_seconds: float | None = None, lock_timeout_s: float | None = None) -> FlushResult:
    """Deliver pending events oldest first until none is left or one fails all its tries (the later
    ones then wait: never out of order). ``mask`` cleans every error text that is stored or returned;
    ``max_seconds`` stops starting another event after that long (a sensor tick's budget)."""
    result = FlushResult()
    started = time.monotonic()
    with outbox.delivery_lock(policy.worst_case_s() + 5.0 if lock_timeout_s is None else lock_timeout_s) as held:
        if not held:
            result.busy = True
            result.pending = outbox.pending()
            return result
        while max_seconds is None or time.monotonic() - started < max_seconds:
            oldest = outbox.pending(limit=1)
            if not oldest:
                break
            event = oldest[0]
            error = None
            for wait in [0.0, *policy.delays()]:
                if wait:
                    sleep(wait)
                try:
                    post_event(url, event.payload, policy.timeout_s, token)
                except (OSError, http.client.HTTPException, ValueError) as exc:  # HTTP errors, refused, timeouts, a malformed URL
                    error = mask(describe_error(exc))
                    outbox.record_attempt(event.event_id, error)
                    continue
                error = None
                outbox.record_attempt(event.event_id, None)
                result.delivered.append(event.event_id)
                break
            if error is not None:
                result.error = f"event {event.event_id} ({event.payload.get('event')} of {event.payload.get('model_name')} " \
                               f"v{event.payload.get('version')}): {policy.tries} tries failed, last: {error}"
                break
        result.pending = outbox.pending()
    return result
