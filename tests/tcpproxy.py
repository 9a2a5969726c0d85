"""A TCP forwarder for tests: ``start()`` listens on a fixed local port and relays to a target;
``stop()`` closes the listener and cuts every relayed connection (as a server going down
would); ``start()`` again listens on the same port (as the server coming back). ``pause()``
holds the bytes without closing anything (a network cut: the peers see silence, not an
error) until ``resume()``."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tests.redisserver import free_port


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self._listener: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._flowing = threading.Event()
        self._flowing.set()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        t = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stop() came meanwhile: cut this one too
                    for s in (client, upstream):
                        s.close()
                    return
                self._socks += [client, upstream]
            t = threading.Thread(target=self._relay, args=(client, upstream), daemon=True)
            t.start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(a, selectors.EVENT_READ, b)  # raises if stop() closed them already
            sel.register(b, selectors.EVENT_READ, a)
            while True:
                for key, _ in sel.select(timeout=1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    while not self._flowing.wait(0.1):  # paused: hold the bytes
                        if src.fileno() < 0:  # stop() closed it meanwhile
                            return
                    key.data.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def pause(self) -> None:
        """Stop forwarding, keeping every connection open (as a dead link would)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            socks, self._socks = self._socks, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]
