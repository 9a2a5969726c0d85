"""Key names of one Redis broker: everything under ``{<prefix>}:`` (one Cluster hash slot).

Fixed names only, no key per task (the public store's values aside). The task scripts get the
keys listed here in KEYS; the keys per named queue, its ready set ``{p}:ready:<queue>`` and its
parked consumers ``{p}:parkq:<queue>`` (``{p}:parkq:*``: those of every queue), and each
consumer's mailbox ``{p}:box:<node>/<consumer>``, are named inside the scripts from the same
``{p}`` hash tag (so they sit in the same Cluster slot).
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.registry import DEFAULT_QUEUE

# The order of the task scripts' KEYS (lua/common.lua reads them by position).
TASK_KEY_NAMES = (
    "task",  # HASH id -> record JSON
    "params",  # HASH id -> pickled params (bytes)
    "result",  # HASH id -> result JSON
    "queues",  # SET of named queues that ever had a task ({p}:ready:<q> ZSET id -> score:
    # (10 - priority) * 2**40 + seq; {p}:parkq:<q> ZSET consumer -> parked until ms)
    "delayed",  # ZSET id -> eta ms (scheduled and retrying tasks)
    "uniq",  # HASH unique key -> id of the live task holding it
    "counts",  # HASH "event\x1ftype\x1fstatus" -> cumulative count
    "nstatus",  # HASH status -> records in that status
    "done",  # ZSET id -> finished ms (the cap, purge)
    "expire",  # ZSET id -> ms when a finished record is forgotten (retention)
    "lease",  # ZSET id -> lease deadline ms (Redis TIME)
    "owner",  # HASH id -> "<node>/<consumer>|<attempt>" (the fencing token)
    "held",  # HASH "<node>/<consumer>" -> id
    "seq",  # STRING counter
    "parked",  # HASH "<node>/<consumer>" -> JSON of a parked consumer's take (queues, lease)
    "events",  # STREAM: the history outbox
    "cancel",  # HASH id -> cancel requested at (running tasks only)
    "dispatch",  # HASH node -> "1" / "0"
    "kvidx",  # ZSET store key -> expiry ms (+inf: none), for a cheap store size
    "routes",  # HASH task type -> its registered queue (written by every node's configure)
)


@dataclass(frozen=True)
class Keys:
    """The key names for ``prefix``."""

    prefix: str = "sv"

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise ValueError(f"key prefix must be non-empty, without braces: {self.prefix!r}")

    @property
    def tag(self) -> str:
        """``{prefix}``: the hash tag that puts every key in one Cluster slot."""
        return "{" + self.prefix + "}"

    def name(self, name: str) -> str:
        """The key of ``name`` (one of :data:`TASK_KEY_NAMES`)."""
        return f"{self.tag}:{name}"

    def ready(self, queue: str = DEFAULT_QUEUE) -> str:
        """The ready set of a named queue."""
        return f"{self.tag}:ready:{queue}"

    def box(self, qc: str) -> str:
        """The mailbox (LIST) of a parked consumer ``<node>/<consumer>``: a task taken for it,
        or an empty wake-up."""
        return f"{self.tag}:box:{qc}"

    def task_keys(self, node: str) -> list[str]:
        """KEYS of every task script, in the order of :data:`TASK_KEY_NAMES`, then ``node``'s
        observations list (see :meth:`obs`)."""
        return [*(self.name(n) for n in TASK_KEY_NAMES), self.obs(node)]

    def obs(self, node: str) -> str:
        """LIST of "event\x1ftype\x1fstatus\x1fseconds" observed by ``node`` (for metrics:
        queue wait at hand-out, run time at finish), drained by its collector, bounded."""
        return f"{self.tag}:obs:{node}"

    def kv(self, key: str) -> str:
        """The key holding the public store's ``key``."""
        return f"{self.tag}:kv:{key}"

    @property
    def kv_prefix(self) -> str:
        """What every public store key starts with."""
        return f"{self.tag}:kv:"

    @property
    def kv_match(self) -> str:
        """A SCAN pattern for every store key (glob characters of the prefix escaped)."""
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in self.kv_prefix)
        return escaped + "*"

    @property
    def status(self) -> str:
        """HASH node -> master status JSON, plus the scheduler's document."""
        return f"{self.tag}:status"

    def __getattr__(self, name: str) -> str:
        if name in TASK_KEY_NAMES:
            return self.name(name)
        raise AttributeError(name)
