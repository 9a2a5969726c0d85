"""Strict JSON for every ``--json`` output of the command line.

Python's ``json`` writes ``Infinity`` and ``NaN`` by default, which no other JSON parser reads.
:func:`to_json` writes them as ``null`` (a non-finite number means "none" or "unbounded" in
what the CLI prints: an age, a deadline), and keys that are tuples as ``a:b``.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (in dicts, lists and tuples)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_key(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _key(key: Any) -> Any:
    if isinstance(key, tuple):
        return ":".join(str(k) for k in key)
    if isinstance(key, float) and not math.isfinite(key):
        return str(key)
    return key


def to_json(value: Any, *, default: Any = repr, indent: int | None = 2, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (``allow_nan=False``; see the module docstring)."""
    return json.dumps(
        finite(value), indent=indent, default=default, allow_nan=False, ensure_ascii=False, **kwargs
    )
