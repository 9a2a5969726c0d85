"""Task history from Redis into SQL: every record, as it changes, in the task table.

Redis holds the live state; the SQL task table (PostgreSQL for a cluster) keeps every task and
each of its attempts, queryable by status, type, node and time. The hand-over goes through
something durable in Redis, so a node that dies mid-way loses no history: every state change a
script makes is also appended to the ``{p}:events`` stream. :class:`HistoryWriter` reads it with
a consumer group, copies the *current* record of each task named in a batch into the table (one
upsert transaction), then acknowledges and deletes the entries. Entries of a batch whose upsert
failed stay pending and are read again.

One writer at a time, cluster-wide: every node runs one, and a lock in Redis (``{p}:history``,
renewed while the writer works, expiring ``lock_s`` after its node stops) elects which one
writes. With one writer the upserts happen in the order the records were read, so a row never
goes back to an older state; a writer that takes over claims the entries its predecessor left
pending (XAUTOCLAIM) first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis
from loguru import logger

from supervisor.broker.base import FINAL_STATUSES
from supervisor.broker.embedded.tasktable import TaskTable, snapshot
from supervisor.broker.records import TaskRecord
from supervisor.broker.redis import codec
from supervisor.broker.redis.keys import Keys
from supervisor.broker.redis.scripts import HOLD_LOCK
from supervisor.registry import DEFAULT_QUEUE

GROUP = "history"
_log = logger.bind(component="history")


# Bring forward the forget time of finished records (only those still finished: a live record
# has no entry in the expire set) to ARGV[1] ms, never later than it was. Returns how many.
_ARCHIVE = """
local until_ms = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if cur and tonumber(cur) > until_ms then
    redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
    n = n + 1
  end
end
return n
"""


def record_from_redis(raw: bytes, params: bytes | None, result: bytes | None) -> TaskRecord:
    """The :class:`TaskRecord` of a record as the scripts store it."""
    rec = codec.decode_raw(raw)
    return TaskRecord(
        task_id=rec["task_id"],
        type=rec["type"],
        params=params or b"",
        priority=int(rec["priority"]),
        status=rec["status"],
        pushed_at=rec["pushed_at"] or 0.0,
        eta=rec["eta"],
        attempts=int(rec.get("attempts") or 0),
        seq=int(rec.get("seq") or 0),
        ready_at=rec["ready_at"],
        started_at=rec["started_at"],
        finished_at=rec["finished_at"],
        consumer=rec.get("consumer"),
        lease_until=rec["lease_until"],
        result=codec.decode_result(result),
        errors=rec["errors"],
        schedule_id=rec.get("schedule_id"),
        scheduled_at=rec["scheduled_at"],
        unique_key=rec.get("unique_key"),
        cancel_requested_at=rec["cancel_requested_at"],
        queue=rec.get("queue") or DEFAULT_QUEUE,
    )


class HistoryWriter:
    """Copies changed records from Redis into ``table``; call :meth:`step` in a loop."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        table: TaskTable,
        *,
        node: str,
        batch: int = 500,
        lock_s: float = 15.0,
        claim_idle_s: float = 30.0,
        on_error: Callable[[BaseException], None] | None = None,
        keep_finished_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        # A finished record copied to the table leaves Redis this long after (None: at its
        # retention, as if there were no table): Redis keeps live state, the table history.
        self.keep_finished_s = keep_finished_s
        self.clock = clock
        self._archive = client.register_script(_ARCHIVE)
        self.keys = keys
        self.table = table
        self.node = node
        self.batch = batch
        self.lock_ms = round(lock_s * 1000)
        self.claim_idle_ms = round(claim_idle_s * 1000)
        self.on_error = on_error
        self.stream = keys.name("events")
        self.lock_key = f"{keys.tag}:history"
        self._lock = client.register_script(HOLD_LOCK)
        self._group_ready = False
        self._lead_until = 0.0  # time.monotonic() until which our writer's lock holds
        self._claim_due = True  # look for entries a departed writer left pending
        self._pending = True  # our own entries may be pending (a failed write, a restart)
        self.written = 0

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:  # from the stream's first entry: nothing appended before the group is skipped
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def leads(self) -> bool:
        """Take or renew the writer's lock; True while this node is the writer."""
        return bool(self._lock(keys=[self.lock_key], args=[self.node, self.lock_ms]))

    def step(self, block_ms: int = 1000) -> int:
        """One batch: claim what a departed writer left pending, else read new entries (waiting
        up to ``block_ms``); write their records; acknowledge. Returns the records written.

        A node that is not the writer returns 0 at once (the caller waits before trying again).
        Raises on a Redis or database error: the entries stay pending, read again next time."""
        now = time.monotonic()
        if now >= self._lead_until:  # the lock lasts lock_s: take or renew it every third
            if not self.leads():
                self._lead_until = 0.0
                return 0
            self._lead_until = now + self.lock_ms / 3000
            self._claim_due = True  # a new term (or a renewal): look for a departed writer's
        self._ensure_group()
        entries: list[Any] = []
        if self._claim_due:
            got_claim: Any = self.client.xautoclaim(
                self.stream, GROUP, self.node, self.claim_idle_ms, "0-0", count=self.batch
            )
            entries = list(got_claim[1])
            self._claim_due = bool(entries)
        if not entries:
            # Our own pending entries first (only after a failed write), then new ones.
            for start in ("0", ">") if self._pending else (">",):
                got: Any = self.client.xreadgroup(
                    GROUP,
                    self.node,
                    {self.stream: start},
                    count=self.batch,
                    block=None if start == "0" else block_ms,
                )
                entries = [e for _, batch in got or () for e in batch if e[1]]
                if entries:
                    break
        if not entries:
            return 0
        self._pending = True  # until the write below is acknowledged
        self.written += self._write([entry_id for entry_id, _ in entries], entries)
        self._pending = False
        return len(entries)

    def _write(self, entry_ids: list[Any], entries: list[Any]) -> int:
        ids = list(dict.fromkeys(_text(fields.get(b"id")) for _, fields in entries))
        ids = [i for i in ids if i]
        rows = []
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.keys.name("task"), ids)
            pipe.hmget(self.keys.name("params"), ids)
            pipe.hmget(self.keys.name("result"), ids)
            raws, params, results = pipe.execute()
            for task_id, raw, blob, result in zip(ids, raws, params, results, strict=True):
                if raw is None:
                    continue  # gone from Redis (purged, expired): its last row stays as it is
                try:
                    rows.append(snapshot(record_from_redis(raw, blob, result)))
                except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
                    _log.error("task record {!r} in Redis is corrupt: {}", task_id, exc)
        if rows:
            self.table.upsert(rows)
            self._shorten([row[0] for row in rows if row[4] in FINAL_STATUSES])
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, GROUP, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)
        pipe.execute()
        return len(rows)

    def _shorten(self, finished: list[str]) -> None:
        """The finished records just written leave Redis within ``keep_finished_s``."""
        if not finished or self.keep_finished_s is None:
            return
        until_ms = round((self.clock() + self.keep_finished_s) * 1000)
        self._archive(keys=[self.keys.name("expire")], args=[until_ms, *finished])

    def drain(self, max_batches: int = 1000) -> int:
        """Write everything pending now (tests, shutdown); returns the entries handled."""
        total = 0
        for _ in range(max_batches):
            n = self.step(block_ms=1)
            if not n:
                break
            total += n
        return total


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
