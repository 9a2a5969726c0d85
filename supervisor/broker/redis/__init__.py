"""The Redis broker (``RedisBroker``): the broker contract on a Redis server shared by nodes."""

from supervisor.broker.redis.broker import RedisBroker
from supervisor.broker.redis.core import LeaseLost

__all__ = ["LeaseLost", "RedisBroker"]
