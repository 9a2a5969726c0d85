"""The user's document's queue module: ``QueueManager`` (Redis or RabbitMQ) and ``TaskWorker``.

Importing this package imports neither pika nor redis-py; building a QueueManager imports the
backend it needs (pika is the ``[rabbitmq]`` extra, redis-py the ``[redis]`` extra).
"""

from supervisor.queuemanager.manager import QueueBackend, QueueManager
from supervisor.queuemanager.validate import Message
from supervisor.queuemanager.worker import TaskWorker

__all__ = ["Message", "QueueBackend", "QueueManager", "TaskWorker"]
