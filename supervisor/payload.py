"""Pickling of task params, results and store values, done by the client.

Plain ``pickle`` (C, fast) first; ``dill`` only for what plain pickle cannot reach (lambdas,
closures, interactively defined classes). Either output loads with ``pickle.loads``. Sizes are
capped so that one oversized value cannot bloat the broker.
"""

from __future__ import annotations

import pickle
from typing import Any

import dill

from supervisor.errors import PayloadError

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj: Any, *, what: str, limit: int | None = None) -> bytes:
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        try:
            # recurse: a function from a script's __main__ carries the globals it uses, not a
            # reference to __main__.__dict__ (another process's __main__ is another module)
            data = dill.dumps(obj, protocol=PROTOCOL, recurse=True)
        except Exception as exc:
            raise PayloadError(f"{what} cannot be pickled: {type(exc).__name__}: {exc}") from None
    if limit is not None and len(data) > limit:
        raise PayloadError(
            f"{what} is {len(data)} bytes pickled; the limit is {limit} (max_payload_bytes)"
        )
    return data


def loads(data: bytes, *, what: str) -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:
        try:  # what dill wrote may name modules that only dill's unpickler maps
            return dill.loads(data)
        except Exception:
            pass
        raise PayloadError(f"{what} cannot be unpickled: {type(exc).__name__}: {exc}") from None
