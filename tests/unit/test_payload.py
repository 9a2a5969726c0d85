"""Client-side pickling: C pickle first, dill for what it cannot reach, size caps, clear errors."""

from __future__ import annotations

import pickle
import sys
import types

import pytest

from supervisor import payload
from supervisor.errors import PayloadError, TaskError

pytestmark = pytest.mark.timeout(30)


def test_plain_data_uses_plain_pickle() -> None:
    value = {"url": "https://example.com/a.mp3", "n": [1, 2.5, None], "b": b"\x00"}
    data = payload.dumps(value, what="params")
    assert data == pickle.dumps(value, protocol=payload.PROTOCOL)
    assert payload.loads(data, what="params") == value


def test_lambdas_and_closures_round_trip_through_dill() -> None:
    offset = 7
    fn = lambda x: x * 2  # noqa: E731 - a lambda is the point
    closure = lambda x: x + offset  # noqa: E731
    for obj in (fn, closure):
        with pytest.raises(Exception):  # noqa: B017 - plain pickle refuses; any error
            pickle.dumps(obj)
    assert payload.loads(payload.dumps(fn, what="v"), what="v")(21) == 42
    assert payload.loads(payload.dumps(closure, what="v"), what="v")(1) == 8
    back = payload.loads(payload.dumps({"handlers": [fn, closure]}, what="v"), what="v")
    assert [h(1) for h in back["handlers"]] == [2, 8]


def test_lambda_from_a_script_loads_where_that_script_is_not_main(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer script's lambda must work in a worker, whose ``__main__`` is another module."""
    script = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", script)
    exec("factor = 3\nfn = lambda x: x * factor", script.__dict__)
    data = payload.dumps(script.fn, what="value of store key 'fn'")
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # the worker's
    assert payload.loads(data, what="store key 'fn'")(5) == 15


def test_unpicklable_value_raises_payload_error_naming_what() -> None:
    gen = (i for i in range(3))
    with pytest.raises(PayloadError, match=r"value of store key 'g' cannot be pickled") as exc:
        payload.dumps(gen, what="value of store key 'g'")
    assert "generator" in str(exc.value)
    assert isinstance(exc.value, TaskError)


def test_size_limit() -> None:
    data = payload.dumps(b"x" * 100, what="params", limit=10_000)
    with pytest.raises(
        PayloadError,
        match=rf"params is {len(data)} bytes pickled; the limit is "
        rf"{len(data) - 1} \(max_payload_bytes\)",
    ):
        payload.dumps(b"x" * 100, what="params", limit=len(data) - 1)
    assert payload.dumps(b"x" * 100, what="params", limit=len(data)) == data


def test_garbage_raises_payload_error_naming_what() -> None:
    with pytest.raises(PayloadError, match="store key 'k' cannot be unpickled"):
        payload.loads(b"definitely not a pickle", what="store key 'k'")
