"""The broker process: a ``multiprocess`` manager server hosting one :class:`MemoryBroker`.

Why a process of its own: the broker serves every client in a thread, and threads must not live
in the master, which forks workers (see ARCHITECTURE "Fork safety"). The master forks it first,
before it starts anything else; it dies with the master (``PR_SET_PDEATHSIG``).

Why it registers the broker under a fixed id instead of ``BaseManager.register``: a client then
needs one connection and one round trip per call, with no proxy refcounting that would be
confused by ``os.fork``.

Security: a Unix socket is created with mode 0600 inside a 0700 folder; every connection must
pass the HMAC challenge with the auth key, whatever the address family.
"""

from __future__ import annotations

import json
import os
import threading
import traceback
from collections.abc import Callable
from typing import Any

from multiprocess import managers

from supervisor import osutil
from supervisor.broker.base import CONTRACT_METHODS
from supervisor.broker.embedded.dispatcher import HOT_METHODS, PARKED
from supervisor.broker.embedded.memory import MemoryBroker
from supervisor.broker.embedded.wire import SERIALIZER
from supervisor.errors import BrokerError

BROKER_IDENT = "broker"


class BrokerServer(managers.Server):
    """The manager server, with a serving loop of our own for the broker's hot calls.

    The protocol, the auth handshake and the thread per connection are the manager's; what
    changes is that ``push``, ``push_many``, ``exchange`` and ``report`` go through the broker's
    dispatcher (:mod:`supervisor.broker.embedded.dispatcher`), which can park a worker's exchange
    (the answer comes later, from whichever thread makes a task ready) and returns hand-overs
    for this thread to send to parked workers. Everything else is served as the manager serves
    it, and only the contract's methods are exposed."""

    def serve_client(self, conn: Any) -> None:
        broker = self.id_to_obj[BROKER_IDENT][0]
        dispatcher = broker.dispatcher
        send_lock = threading.Lock()
        closed = False

        def sink(answer: Any) -> None:
            # Another thread answers this connection's parked call: never after it closed (its
            # descriptor may belong to a new connection by then).
            with send_lock:
                if closed:
                    raise OSError("the consumer's connection is closed")
                conn.send(("#RETURN", answer))

        parked_as: str | None = None
        try:
            while not self.stop_event.is_set():
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    ident, method, args, kwds = request
                except (TypeError, ValueError):
                    conn.send(("#TRACEBACK", f"malformed request {request!r:.200}"))
                    continue
                if ident == BROKER_IDENT and method in HOT_METHODS and not kwds:
                    result, error, handoffs = dispatcher.serve(method, args, sink)
                    dispatcher.deliver(handoffs)
                    if result is PARKED:
                        parked_as = args[0]
                        continue
                    msg = ("#ERROR", error) if error is not None else ("#RETURN", result)
                else:
                    msg = self._generic(conn, ident, method, args, kwds)
                try:
                    conn.send(msg)
                except Exception:
                    if msg[0] == "#RETURN":  # an answer that cannot be pickled
                        conn.send(("#UNSERIALIZABLE", traceback.format_exc()))
                    else:
                        raise
        except (OSError, EOFError):
            return
        finally:
            with send_lock:
                closed = True
                if parked_as is not None:
                    dispatcher.withdraw(parked_as, sink)
                conn.close()

    def _generic(self, conn: Any, ident: Any, method: str, args: Any, kwds: Any) -> tuple[str, Any]:
        """One call the way ``multiprocess.managers.Server.serve_client`` makes it."""
        try:
            try:
                obj, exposed, _ = self.id_to_obj[ident]
            except KeyError:
                obj, exposed, _ = self.id_to_local_proxy_obj[ident]
            if method not in exposed:
                fallback = self.fallback_mapping.get(method)
                if fallback is None:
                    raise AttributeError(
                        f"method {method!r} of {type(obj)!r} object is not in exposed={exposed!r}"
                    )
                return ("#RETURN", fallback(self, conn, ident, obj, *args, **kwds))
            try:
                return ("#RETURN", getattr(obj, method)(*args, **kwds))
            except Exception as exc:
                return ("#ERROR", exc)
        except Exception:
            return ("#TRACEBACK", traceback.format_exc())


def _exit_on_term(signum: int, frame: Any) -> None:
    # The one handler that acts: it unwinds serve_forever so that the journal is flushed.
    raise SystemExit(0)


def serve(
    broker: MemoryBroker,
    address: Any,
    authkey: bytes,
    ready: Callable[[str], None] | None = None,
    on_serve: Callable[[MemoryBroker], None] | None = None,
) -> None:
    """Bind ``address`` and serve ``broker`` forever (call in the broker process).

    ``on_serve(broker)`` runs once the listener is bound, before serving: it may start threads
    of its own here (the HTTP endpoints do), since this process never forks."""
    old_umask = os.umask(0o077)  # the Unix socket is born 0600: no window where others connect
    try:
        server = BrokerServer({}, address, authkey, SERIALIZER)
    finally:
        os.umask(old_umask)
    if isinstance(server.address, str):
        os.chmod(server.address, 0o600)
    server.id_to_obj[BROKER_IDENT] = (broker, set(CONTRACT_METHODS), None)  # nothing else
    server.id_to_refcount[BROKER_IDENT] = 1
    if on_serve is not None:
        on_serve(broker)
    if ready is not None:  # tell the master where we listen (port 0 means "pick one")
        ready(json.dumps(server.address))
    try:
        server.serve_forever()
    finally:
        broker.close()  # parked workers are answered None; the journal commits what it holds


def start_broker_process(
    *,
    address: Any,
    authkey: bytes,
    make_broker: Callable[[], MemoryBroker],
    on_serve: Callable[[MemoryBroker], None] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, Any]:
    """Fork the broker process; once it listens return (pid, address). Raises BrokerError."""

    def broker_process(ready: Callable[[str], None]) -> None:
        osutil.service_child(_exit_on_term)
        serve(make_broker(), address, authkey, ready=ready, on_serve=on_serve)

    try:
        pid, answer = osutil.fork_service(broker_process, timeout_s=timeout_s)
    except osutil.ServiceStartError as exc:
        raise BrokerError(f"the broker could not listen at {address!r}: {exc}") from None
    bound = json.loads(answer)
    return pid, tuple(bound) if isinstance(bound, list) else bound
