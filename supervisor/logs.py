"""Logging with loguru: a human format on a terminal, JSON lines in containers.

Every line carries the bound fields that apply (component, worker slot, pid, task id). Library
code logs through ``logger.bind(component=...)``; nothing here prints. ``emit_raw`` writes a line
in the same format with a bare ``os.write``, for the one place that must log from a signal
handler (a worker's stack dump), where taking loguru's lock could deadlock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from typing import Any, TextIO

from loguru import logger

_FIELDS = ("component", "worker", "pid", "task_id", "type")
_state: dict[str, Any] = {"format": "text", "level": "INFO", "file": None, "file_id": None}


def _resolve_format(fmt: str, stream: TextIO) -> str:
    if fmt == "auto":
        try:
            return "text" if stream.isatty() else "json"
        except (AttributeError, ValueError):
            return "json"
    return fmt


def _json_line(
    level: str, message: str, when: dt.datetime, extra: dict[str, Any], exception: str | None = None
) -> str:
    doc: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds"),
        "level": level,
        "message": message,
    }
    for key, value in extra.items():
        doc[key] = (
            value if isinstance(value, str | int | float | bool) or value is None else str(value)
        )
    if exception:
        doc["exception"] = exception
    return json.dumps(doc, ensure_ascii=False, default=str) + "\n"


def _text_line(level: str, message: str, when: dt.datetime, extra: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={extra[k]}" for k in _FIELDS if k in extra and extra[k] is not None)
    others = " ".join(f"{k}={v}" for k, v in extra.items() if k not in _FIELDS)
    tail = " ".join(x for x in (fields, others) if x)
    return (
        f"{when:%Y-%m-%d %H:%M:%S.%f}"[:-3]
        + f" | {level:<8} | {message}"
        + (f" | {tail}" if tail else "")
        + "\n"
    )


def _make_sink(fmt: str, stream: TextIO) -> Any:
    def sink(message: Any) -> None:
        record = message.record
        exc = record["exception"]
        exc_text = None
        if exc is not None and exc.type is not None:
            import traceback

            exc_text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
        if fmt == "json":
            line = _json_line(
                record["level"].name, record["message"], record["time"], record["extra"], exc_text
            )
        else:
            line = _text_line(
                record["level"].name, record["message"], record["time"], record["extra"]
            ) + (exc_text or "")
        stream.write(line)
        stream.flush()

    return sink


def setup_logging(
    fmt: str = "auto", level: str = "INFO", file: str | None = None, stream: TextIO | None = None
) -> None:
    """Replace loguru's handlers with ours (no enqueue thread: the master forks), and enable
    the package's log, which ``import supervisor`` disables (a library is silent until the
    application configures logging). Forked children inherit the enabled state."""
    stream = stream or sys.stderr
    resolved = _resolve_format(fmt, stream)
    logger.enable("supervisor")
    logger.remove()
    logger.add(
        _make_sink(resolved, stream), level=level, enqueue=False, backtrace=False, diagnose=False
    )
    _state.update(format=resolved, level=level, file=file, file_id=None)
    if file:
        _open_file()


def _open_file() -> None:
    fh = open(_state["file"], "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - a sink
    _state["file_id"] = logger.add(
        _make_sink(_state["format"], fh), level=_state["level"], enqueue=False, diagnose=False
    )
    _state["file_handle"] = fh


def reopen() -> None:
    """Reopen the log file (USR1), e.g. after logrotate moved it."""
    if not _state.get("file"):
        return
    if _state.get("file_id") is not None:
        logger.remove(_state["file_id"])
        _state["file_handle"].close()
    _open_file()


def emit_raw(level: str, message: str, **extra: Any) -> None:
    """Write one log line to stderr without locks (safe inside a signal handler)."""
    when = dt.datetime.now().astimezone()
    if _state["format"] == "json":
        line = _json_line(level, message, when, extra)
    else:
        line = _text_line(level, message, when, extra)
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass
