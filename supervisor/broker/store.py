"""The public key/value store with TTL (embedded implementation).

Values are opaque bytes (pickled by the client). Expiry uses the injected wall clock, so tests
move time instead of sleeping. Expired keys are never returned; ``cleanup`` sweeps them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from supervisor.errors import StoreError

MAX_KEY_LEN = 1024


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise StoreError(f"store key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LEN:
        raise StoreError(f"store key is {len(key)} characters long; at most {MAX_KEY_LEN}")
    return key


def check_ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not ttl > 0
        or ttl == float("inf")
    ):
        raise StoreError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
    return float(ttl)


class MemoryStore:
    """Thread-safe dict of ``key -> (value, expires_at)``."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._data: dict[str, tuple[bytes, float | None]] = {}
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
        with self._lock:
            now = self._clock()
            dead = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
            for k in dead:
                del self._data[k]
            return len(dead)

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
