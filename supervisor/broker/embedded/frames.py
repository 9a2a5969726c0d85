"""The journal's log format: frames of pickled row snapshots, written and read here.

A log file is a sequence of frames, each ``length, crc32`` (two little-endian uint32) and a
pickled list of rows (``tasktable.snapshot`` tuples, the task id first). Files are created
zero-filled to their full size, so the end of the written part is a zero header. A frame whose
length runs past the file, or whose checksum does not match, is *torn*: the tail of a crash, or
a frame being written right now (the folder reads it again later). The writer is
:class:`~supervisor.broker.embedded.journal.Journal`; the readers are the folder
(:mod:`supervisor.broker.embedded.fold`) and the journal's start-up replay.
"""

from __future__ import annotations

import pickle
import re
import struct
import zlib
from pathlib import Path
from typing import Any

FRAME = struct.Struct("<II")  # payload length, crc32
Row = tuple[Any, ...]


def frame(rows: list[Row]) -> bytes:
    payload = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def parse(data: Any, at: int = 0) -> tuple[list[Row], int, str]:
    """Rows of the frames in ``data`` (bytes or a mapping) from offset ``at``.

    Returns (rows, the offset after the last good frame, why it stopped): ``"end"`` at the
    zero-filled rest of a file or its end, ``"torn"`` at a frame that is incomplete or does not
    match its checksum (the tail of a crash, or a frame being written right now)."""
    rows: list[Row] = []
    size_all = len(data)
    while at + FRAME.size <= size_all:
        size, crc = FRAME.unpack_from(data, at)
        if size == 0 and crc == 0:
            return rows, at, "end"
        start, end = at + FRAME.size, at + FRAME.size + size
        if end > size_all:
            return rows, at, "torn"
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            return rows, at, "torn"
        try:
            batch = pickle.loads(payload)
        except Exception:
            return rows, at, "torn"
        if isinstance(batch, list):
            rows.extend(r for r in batch if isinstance(r, tuple) and r and isinstance(r[0], str))
        at = end
    return rows, at, "end" if at == size_all else "torn"


def log_files(base: Path) -> list[tuple[int, Path]]:
    """The log files ``BASE.N``, oldest first."""
    pattern = re.compile(re.escape(base.name) + r"\.(\d+)$")
    found = [
        (int(m[1]), p) for p in base.parent.glob(base.name + ".*") if (m := pattern.match(p.name))
    ]
    return sorted(found)


def read_log(path: Path) -> tuple[list[Row], bool]:
    """Every row in the log file at ``path``, in order; and whether it ended cleanly."""
    rows, _, why = parse(path.read_bytes())
    return rows, why == "end"
