"""supervisor: a multiprocess worker supervisor.

The public API; importing it starts nothing. Like any library, it logs nothing until the
application asks: a user's script that pushes a task or adds a schedule gets no log lines on its
stderr. ``supervisor run`` enables the log in :func:`supervisor.logs.setup_logging`; a script
that wants it calls ``loguru.logger.enable("supervisor")``.
"""

from loguru import logger as _logger

from supervisor.client.queue import MemoryQueue, Queue
from supervisor.client.seed import (
    cleanup,
    clear_store,
    connect,
    delete_public,
    get_public,
    get_queue,
    get_queue_size,
    get_scheduler,
    get_store_size,
    is_empty,
    list_keys,
    pop_task,
    push_task,
    set_public,
    task_done,
)
from supervisor.config import Settings, load_settings
from supervisor.errors import (
    Cancelled,
    ExitCode,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    SupervisorError,
)
from supervisor.queuemanager import QueueBackend, QueueManager, TaskWorker
from supervisor.registry import TaskOptions, TaskRegistry
from supervisor.worker.context import TaskContext, cancel_requested, current_task

__version__ = "0.1.0"

_logger.disable("supervisor")

__all__ = [
    "Cancelled",
    "ExitCode",
    "MemoryQueue",
    "Queue",
    "QueueBackend",
    "QueueManager",
    "Reject",
    "Retry",
    "Settings",
    "SoftTimeLimitExceeded",
    "SupervisorError",
    "TaskContext",
    "TaskOptions",
    "TaskRegistry",
    "TaskWorker",
    "__version__",
    "cancel_requested",
    "cleanup",
    "clear_store",
    "connect",
    "current_task",
    "delete_public",
    "get_public",
    "get_queue",
    "get_queue_size",
    "get_scheduler",
    "get_store_size",
    "is_empty",
    "list_keys",
    "load_settings",
    "pop_task",
    "push_task",
    "set_public",
    "task_done",
]
