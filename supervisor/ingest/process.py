"""The ingest process: a child of the master that consumes one RabbitMQ queue into the broker.

Why a process per queue: pika's connection is blocking and single-threaded, and the master runs
no thread and holds no socket but its broker's; a process of its own per ``--ingest`` URL keeps
a slow or unreachable RabbitMQ (or one queue's flood) from delaying the master's loop or the
other queues, and lets the master restart just that one when it dies. It costs one Python
process (~40 MB) per queue: a node ingests a handful of queues, not hundreds.

Pre-fork and post-fork work apart: :class:`IngestProcess` stores its arguments; :meth:`start`
forks with the master's signals blocked, and the child sets itself up in :meth:`init_process`
(its own process group, death with the master, handlers that only record) before it makes its
broker client (never inherited) and runs the :class:`~supervisor.ingest.consumer.Ingestor`.

Exit codes: 0 after SIGTERM/SIGQUIT (it finishes the batch in hand, then closes its connection:
what it holds unacked goes back to RabbitMQ); 1 for an unexpected error (the master restarts it
with backoff).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from loguru import logger

from supervisor import logs, osutil
from supervisor.broker.base import Broker
from supervisor.errors import ExitCode
from supervisor.ingest.consumer import Ingestor
from supervisor.ingest.url import IngestSpec
from supervisor.master.signals import fork_blocked

_IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2)


class IngestProcess:
    """One ingest child. Construct in the master (touches nothing), then :meth:`start`.

    * ``spec``: the parsed ``--ingest`` URL.
    * ``connect``: makes the child's broker client after the fork (the backend's connector).
    * ``node``: this node's name, in the status document (and its board name).
    * ``close_fds``: descriptors the child must close (the master's signal pipe).
    * ``options``: keyword arguments for the Ingestor (prefetch, max_payload_bytes, ...).
    """

    def __init__(
        self,
        *,
        spec: IngestSpec,
        connect: Callable[[], Broker],
        node: str,
        close_fds: Sequence[int] = (),
        options: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.connect = connect
        self.node = node
        self.close_fds = tuple(close_fds)
        self.options = dict(options or {})
        self.pid = 0
        self.stop = False
        self._reopen_logs = False
        self._parent: int | None = None

    # -- in the master -------------------------------------------------------------------------
    def start(self) -> int:
        """Fork the ingest process; return its pid (in the master). OSError if fork fails."""
        self._parent = os.getpid()
        self.pid = fork_blocked(self.run)  # run() never returns
        return self.pid

    # -- in the child --------------------------------------------------------------------------
    def run(self) -> NoReturn:
        code = int(ExitCode.ERROR)
        try:
            self.init_process()
            code = self.serve()
        except BaseException as exc:
            logger.bind(component="ingest", queue=self.spec.queue).opt(exception=exc).critical(
                "ingest process of queue {!r} failed: {}", self.spec.queue, exc
            )
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def init_process(self) -> None:
        """Group, death signal, handlers that only record, then the master's mask lifted."""
        os.setpgid(0, 0)  # a ^C to the master's group is the master's to relay
        osutil.die_with_parent()
        if self._parent is not None and os.getppid() != self._parent:
            os._exit(0)  # the master died before the death signal was set
        signal.set_wakeup_fd(-1)
        for fd in self.close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for sig in _IGNORED:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGQUIT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop = True  # the loop finishes its batch (push, ack) and closes

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self._reopen_logs = True

    def should_stop(self) -> bool:
        if self._reopen_logs:  # in the loop, not in the handler
            self._reopen_logs = False
            logs.reopen()
        return self.stop

    def serve(self) -> int:
        log = logger.bind(component="ingest", queue=self.spec.queue, pid=os.getpid())
        client = self.connect()
        log.info("ingest process started for queue {!r} at {}", self.spec.queue, self.spec.masked)
        try:
            Ingestor(
                spec=self.spec,
                broker=client,
                node=self.node,
                should_stop=self.should_stop,
                **self.options,
            ).run()
        finally:
            close = getattr(client, "close", None)  # a connection of ours: not in the contract
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        return int(ExitCode.OK)
