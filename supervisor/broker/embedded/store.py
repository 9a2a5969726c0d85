"""The public key/value store with TTL (embedded implementation).

Values are opaque bytes (pickled by the client). Expiry uses the injected wall clock, so tests
move time instead of sleeping. Expired keys are never returned; ``cleanup`` sweeps them.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

from supervisor.broker.base import PublicStore
from supervisor.broker.validate import check_key, check_ttl
from supervisor.errors import StoreError


class MemoryStore(PublicStore):
    """Thread-safe dict of ``key -> (value, expires_at)``.

    Keys with a TTL are also in a heap by expiry, so a sweep costs what expired, not the whole
    store (it runs on every ``stats()``, i.e. every metrics scrape). The heap may hold stale
    entries (a key set again or deleted): they are skipped when popped, and the heap is rebuilt
    when they outnumber the live keys."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._expiry: list[tuple[float, str]] = []  # (expires_at, key), a heap
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> tuple[bytes, float | None] | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] is not None and item[1] <= now:
            del self._data[key]
            return None
        return item

    def set_public(self, key: str, value: bytes, ttl: float | None = None) -> None:
        check_key(key)
        ttl = check_ttl(ttl)
        if not isinstance(value, bytes):
            raise StoreError(f"store values travel pickled as bytes, got {type(value).__name__}")
        with self._lock:
            expires = None if ttl is None else self._clock() + ttl
            self._data[key] = (value, expires)
            if expires is not None:
                heapq.heappush(self._expiry, (expires, key))
                if len(self._expiry) > 2 * len(self._data) + 1024:
                    self._expiry = [(e, k) for k, (_, e) in self._data.items() if e is not None]
                    heapq.heapify(self._expiry)

    def get_public(self, key: str) -> bytes | None:
        check_key(key)
        with self._lock:
            item = self._live(key, self._clock())
            return None if item is None else item[0]

    def ttl_of(self, key: str) -> float | None:
        """Seconds left for ``key`` (None: no expiry or missing)."""
        with self._lock:
            item = self._live(key, now := self._clock())
            return None if item is None or item[1] is None else item[1] - now

    def delete_public(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return self._live(key, self._clock()) is not None and self._data.pop(key) is not None

    def cleanup(self) -> int:
        """Remove every expired key; return how many."""
        removed = 0
        with self._lock:
            now = self._clock()
            heap = self._expiry
            while heap and heap[0][0] <= now:
                _, key = heapq.heappop(heap)
                item = self._data.get(key)
                if item is not None and item[1] is not None and item[1] <= now:
                    del self._data[key]
                    removed += 1
            return removed

    def get_store_size(self) -> int:
        self.cleanup()
        with self._lock:
            return len(self._data)

    def list_keys(self) -> list[str]:
        self.cleanup()
        with self._lock:
            return sorted(self._data)

    def clear_store(self) -> None:
        with self._lock:
            self._data.clear()
            self._expiry.clear()
