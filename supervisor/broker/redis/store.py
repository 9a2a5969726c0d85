"""The public key/value store on Redis: plain keys ``{p}:kv:<key>`` with native expiry.

Values are opaque bytes (pickled by the client). ``set`` and ``delete`` also keep an index
(``{p}:kvidx``, key -> expiry on Redis TIME) in the same script, so the store size is one
ZCOUNT (``stats`` is scraped often); ``list_keys`` and ``clear_store`` walk the real keys with
SCAN (+ UNLINK), outside Lua.
"""

from __future__ import annotations

import math

from supervisor.broker.redis import codec
from supervisor.broker.redis.core import Core
from supervisor.broker.validate import check_key, check_ttl
from supervisor.errors import StoreError

SCAN_COUNT = 1000


class StoreMixin(Core):
    def _kv(self, args: list[object], key: str | None = None) -> int:
        keys = [self._keys.kvidx] + ([self._keys.kv(key)] if key is not None else [])
        with self._guard():
            return int(self._scripts.run("kv", keys, args))

    def set_public(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds (Redis expiry, ms
        resolution) when given."""
        check_key(key)
        ttl = check_ttl(ttl)
        if not isinstance(value, bytes):
            raise StoreError(f"store values travel pickled as bytes, got {type(value).__name__}")
        ttl_ms = "" if ttl is None else str(max(1, math.ceil(ttl * 1000)))
        self._kv(["set", key, value, ttl_ms], key)

    def get_public(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""
        check_key(key)
        with self._guard():
            value = self._client.get(self._keys.kv(key))
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    def delete_public(self, key: str) -> bool:
        """Remove ``key``; True when it existed (and had not expired)."""
        check_key(key)
        return self._kv(["del", key], key) > 0

    def cleanup(self) -> int:
        """Drop the index entries of expired keys (the values expire natively); how many."""
        return self._kv(["cleanup"])

    def get_store_size(self) -> int:
        """Number of live keys (from the index: one ZCOUNT)."""
        return self._kv(["size"])

    def list_keys(self) -> list[str]:
        """Live keys, sorted (SCAN of the store's keys)."""
        cut = len(self._keys.kv_prefix)
        with self._guard():
            names = self._client.scan_iter(match=self._keys.kv_match, count=SCAN_COUNT)
            return sorted(codec.text(n)[cut:] for n in names)

    def clear_store(self) -> None:
        """Remove every key (SCAN + UNLINK in batches, then the index)."""
        with self._guard():
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=self._keys.kv_match, count=SCAN_COUNT):
                batch.append(name)
                if len(batch) >= SCAN_COUNT:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
            self._client.unlink(self._keys.kvidx)
