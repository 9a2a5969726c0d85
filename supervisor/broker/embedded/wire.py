"""A manager serializer that speaks C pickle on the hot path.

``multiprocess`` pickles every manager message with dill, in pure Python: about half the call
rate of the standard library. Our messages are plain data (task params and store values are
pickled client-side, with dill only where plain pickle cannot reach), so the connection can use
the C pickler. The serializer is registered under the name ``"supervisor"`` in
``multiprocess.managers.listener_client`` on import.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any

from multiprocess import connection, managers

SERIALIZER = "supervisor"
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class FastConnection(connection.Connection):
    # Reads are buffered: one read() usually brings a message's header and body together,
    # where the stock connection makes two, each a GIL release and re-acquire in the broker.
    _rbuf: bytearray | None = None

    def _fill(self, want: int) -> None:
        chunk = os.read(self._handle, max(65536, want))
        if not chunk:
            raise EOFError
        assert self._rbuf is not None
        self._rbuf += chunk

    def _recv_bytes(self, maxsize: int | None = None) -> io.BytesIO | None:
        if self._rbuf is None:
            self._rbuf = bytearray()
        buf = self._rbuf
        while len(buf) < 4:
            self._fill(4 - len(buf))
        (size,) = struct.unpack_from("!i", buf)
        head = 4
        if size == -1:  # a large message: an 8-byte size follows
            while len(buf) < 12:
                self._fill(12 - len(buf))
            (size,) = struct.unpack_from("!Q", buf, 4)
            head = 12
        if maxsize is not None and size > maxsize:
            return None
        while len(buf) < head + size:
            self._fill(head + size - len(buf))
        data = bytes(buf[head : head + size])
        del buf[: head + size]
        return io.BytesIO(data)

    def _poll(self, timeout: float) -> bool:
        if self._rbuf:
            return True
        return bool(super()._poll(timeout))

    def send(self, obj: Any) -> None:
        self._check_closed()
        self._check_writable()
        self._send_bytes(pickle.dumps(obj, protocol=_PROTOCOL))

    def recv(self) -> Any:
        self._check_closed()
        self._check_readable()
        buf = self._recv_bytes()
        assert buf is not None  # only a maxsize can make it None
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
