"""The Lua scripts, loaded from ``lua/`` and registered with redis-py.

Every task script is ``lua/common.lua`` followed by its own file, so the shared functions
(enqueue, finish, fail, promote, fencing) are one code path. ``register_script`` runs a script
by EVALSHA and, on NOSCRIPT (a Redis restart or SCRIPT FLUSH), loads it again and retries.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis

TASK_SCRIPTS = (
    "push",
    "exchange",
    "fail",
    "expired",
    "renew",
    "cancel",
    "retry",
    "maintain",
    "purge",
    "stats",
    "dispatch",
)


# Take or keep a lock held under a key (the history writer's, the metrics exporter's role):
# SET NX PX, or PEXPIRE when ARGV[1] holds it already. Returns 1 when held.
HOLD_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def _source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def sources() -> dict[str, str]:
    """Name -> full Lua source of every script."""
    common = _source("common")
    out = {name: common + "\n" + _source(name) for name in TASK_SCRIPTS}
    out["kv"] = _source("kv")
    return out


class Scripts:
    """The registered scripts of one client: ``scripts.run(name, keys, args)``."""

    def __init__(self, client: redis.Redis) -> None:
        self._scripts: dict[str, Any] = {
            name: client.register_script(src) for name, src in sources().items()
        }

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA script ``name`` (loading it again after NOSCRIPT)."""
        return self._scripts[name](keys=keys, args=args)
