"""A manager serializer that speaks C pickle on the hot path.

``multiprocess`` pickles every manager message with dill, in pure Python: about half the call
rate of the standard library. Our messages are plain data (task params and store values are
pickled client-side, with dill only where plain pickle cannot reach), so the connection can use
the C pickler. The serializer is registered under the name ``"supervisor"`` in
``multiprocess.managers.listener_client`` on import.
"""

from __future__ import annotations

import pickle
from typing import Any

from multiprocess import connection, managers

SERIALIZER = "supervisor"
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class FastConnection(connection.Connection):
    def send(self, obj: Any) -> None:
        self._check_closed()
        self._check_writable()
        self._send_bytes(pickle.dumps(obj, protocol=_PROTOCOL))

    def recv(self) -> Any:
        self._check_closed()
        self._check_readable()
        buf = self._recv_bytes()
        return pickle.loads(buf.getbuffer())


class FastListener(connection.Listener):
    def accept(self) -> FastConnection:
        conn = super().accept()
        conn.__class__ = FastConnection
        return conn


def FastClient(address: Any, family: str | None = None, authkey: bytes | None = None) -> Any:
    conn = connection.Client(address, family, authkey)
    conn.__class__ = FastConnection
    return conn


managers.listener_client[SERIALIZER] = (FastListener, FastClient)
