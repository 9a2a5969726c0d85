"""The public key/value store: TTL against an injected clock, sweeping, key and TTL checks."""

from __future__ import annotations

import pytest

from supervisor.broker.embedded.store import MemoryStore
from supervisor.broker.validate import MAX_KEY_LEN
from supervisor.errors import StoreError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(clock) -> MemoryStore:
    return MemoryStore(clock=clock)


def test_set_get_and_overwrite(store: MemoryStore) -> None:
    assert store.get_public("k") is None
    store.set_public("k", b"v1")
    assert store.get_public("k") == b"v1"
    store.set_public("k", b"v2")
    assert store.get_public("k") == b"v2"
    assert store.get_store_size() == 1


def test_key_without_ttl_never_expires(store: MemoryStore, clock) -> None:
    store.set_public("forever", b"x")
    clock.advance(10**9)
    assert store.get_public("forever") == b"x"
    assert store.ttl_of("forever") is None
    assert store.cleanup() == 0


def test_expired_key_is_never_returned(store: MemoryStore, clock) -> None:
    store.set_public("tok", b"t", ttl=60)
    expires_at = clock.now + 60
    clock.advance(59.5)
    assert store.get_public("tok") == b"t"
    assert store.ttl_of("tok") == pytest.approx(0.5)
    clock.now = expires_at  # exactly at the expiry time: gone
    assert store.get_public("tok") is None
    assert store.ttl_of("tok") is None


def test_overwriting_resets_or_removes_the_ttl(store: MemoryStore, clock) -> None:
    store.set_public("k", b"1", ttl=10)
    clock.advance(5)
    store.set_public("k", b"2", ttl=10)  # expiry moves to now + 10
    clock.advance(9)
    assert store.get_public("k") == b"2"
    store.set_public("k", b"3")  # no ttl: permanent now
    clock.advance(1000)
    assert store.get_public("k") == b"3"


def test_cleanup_sweeps_only_expired_keys(store: MemoryStore, clock) -> None:
    store.set_public("a", b"", ttl=1)
    store.set_public("b", b"", ttl=2)
    store.set_public("c", b"", ttl=3)
    store.set_public("perm", b"")
    clock.advance(2)
    assert store.cleanup() == 2
    assert store.cleanup() == 0
    assert store._data.keys() == {"c", "perm"}  # swept from memory, not only hidden
    clock.advance(1)
    assert store.cleanup() == 1
    assert store._data.keys() == {"perm"}


def test_list_keys_and_size_exclude_expired_keys(store: MemoryStore, clock) -> None:
    store.set_public("zeta", b"", ttl=5)
    store.set_public("alpha", b"")
    store.set_public("mid", b"", ttl=50)
    assert store.list_keys() == ["alpha", "mid", "zeta"]
    assert store.get_store_size() == 3
    clock.advance(5)
    assert store.list_keys() == ["alpha", "mid"]
    assert store.get_store_size() == 2
    clock.advance(45)
    assert store.list_keys() == ["alpha"]
    assert store.get_store_size() == 1


def test_delete_returns_whether_a_live_key_existed(store: MemoryStore, clock) -> None:
    store.set_public("k", b"v")
    assert store.delete_public("k") is True
    assert store.get_public("k") is None
    assert store.delete_public("k") is False
    assert store.delete_public("never-set") is False
    store.set_public("short", b"v", ttl=1)
    clock.advance(1)
    assert store.delete_public("short") is False  # expired counts as absent
    assert store.get_store_size() == 0


def test_clear_store_removes_everything(store: MemoryStore) -> None:
    for i in range(5):
        store.set_public(f"k{i}", b"", ttl=100 if i % 2 else None)
    store.clear_store()
    assert store.get_store_size() == 0
    assert store.list_keys() == []


@pytest.mark.parametrize("key", ["", None, 42, b"bytes", ("t",)])
def test_bad_keys_raise_naming_the_key(store: MemoryStore, key: object) -> None:
    for call in (
        lambda: store.set_public(key, b"v"),  # type: ignore[arg-type]
        lambda: store.get_public(key),  # type: ignore[arg-type]
        lambda: store.delete_public(key),
    ):  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="non-empty string") as exc:
            call()
        assert repr(key) in str(exc.value)


def test_overlong_key_raises_with_its_length(store: MemoryStore) -> None:
    store.set_public("k" * MAX_KEY_LEN, b"ok")
    with pytest.raises(StoreError, match=f"{MAX_KEY_LEN + 1} characters"):
        store.set_public("k" * (MAX_KEY_LEN + 1), b"v")


@pytest.mark.parametrize("ttl", [0, -1, -0.5, "60", True, float("inf"), float("nan"), [1]])
def test_bad_ttls_raise_naming_the_value(store: MemoryStore, ttl: object) -> None:
    with pytest.raises(StoreError, match="ttl must be a positive number") as exc:
        store.set_public("k", b"v", ttl=ttl)  # type: ignore[arg-type]
    assert repr(ttl) in str(exc.value)
    assert store.get_store_size() == 0  # nothing half-written


@pytest.mark.parametrize("ttl", [1, 0.001, 86400 * 365])
def test_good_ttls_are_accepted(store: MemoryStore, clock, ttl: float) -> None:
    store.set_public("k", b"v", ttl=ttl)
    assert store.ttl_of("k") == pytest.approx(ttl, abs=1e-6)
    clock.advance(ttl)
    assert store.get_public("k") is None


def test_values_must_arrive_pickled(store: MemoryStore) -> None:
    with pytest.raises(StoreError, match="str"):
        store.set_public("k", "not bytes")  # type: ignore[arg-type]


def test_a_key_set_again_is_swept_by_its_latest_ttl_only(store: MemoryStore, clock) -> None:
    store.set_public("k", b"1", ttl=10)
    store.set_public("k", b"2", ttl=100)  # the first expiry is stale now
    store.set_public("gone", b"x", ttl=10)
    store.delete_public("gone")
    store.set_public("forever", b"x", ttl=10)
    store.set_public("forever", b"y")  # no TTL any more
    clock.advance(50)
    assert store.cleanup() == 0
    assert store.get_public("k") == b"2" and store.get_public("forever") == b"y"
    clock.advance(60)
    assert store.cleanup() == 1 and store.list_keys() == ["forever"]


def test_the_expiry_index_stays_bounded_when_keys_are_rewritten(store: MemoryStore, clock):
    for i in range(20_000):
        store.set_public("hot", str(i).encode(), ttl=60)
    assert len(store._expiry) <= 2 * len(store._data) + 1024 + 1
    clock.advance(61)
    assert store.get_store_size() == 0
