"""``supervisor health``: ask a running master's HTTP endpoints if it is alive (or ready).

For Docker's ``HEALTHCHECK`` and scripts: exit 0 when healthy, 1 when not (or nothing answers),
2 on bad usage; one line on stdout or stderr says why. By default it reads ``RUN_DIR/http_address``
(written by the master once the endpoints listen) and asks ``/livez``; ``--ready`` asks
``/readyz``. ``--url`` names the endpoint base (or a full URL) instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from supervisor.cli.parser import positive_seconds
from supervisor.config import default_run_dir
from supervisor.errors import ExitCode

HTTP_ADDRESS_FILE = "http_address"  # in the run folder: "host:port" of the endpoints
DEFAULT_TIMEOUT_S = 3.0
# The endpoints are local: an http_proxy in the environment must not be asked for them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def endpoint_url(*, url: str | None, run_dir: str | None, ready: bool) -> str:
    """The URL to ask. Raises OSError when the run folder has no ``http_address``."""
    path = "/readyz" if ready else "/livez"
    if url:
        base = url if "://" in url else f"http://{url}"
        parts = base.split("://", 1)[1]
        return base if "/" in parts.rstrip("/") else base.rstrip("/") + path
    folder = Path(run_dir or os.environ.get("SUPERVISOR_RUN_DIR") or default_run_dir())
    address = (folder / HTTP_ADDRESS_FILE).read_text().strip()
    return f"http://{address}{path}"


def check(
    *,
    url: str | None = None,
    run_dir: str | None = None,
    ready: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> int:
    """0 when healthy (alive, or ready with ``ready``), 1 when not or unreachable."""
    return probe(url=url, run_dir=run_dir, ready=ready, timeout_s=timeout_s)[0]


def probe(
    *,
    url: str | None = None,
    run_dir: str | None = None,
    ready: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[int, str]:
    """(exit code, one-line message): 0 healthy, 1 unhealthy or unreachable."""
    try:
        target = endpoint_url(url=url, run_dir=run_dir, ready=ready)
    except OSError as exc:
        return int(ExitCode.ERROR), (
            f"no HTTP endpoint address: {exc.strerror}: "
            f"{exc.filename} (is the master running with metrics on?)"
        )
    try:
        with _OPENER.open(target, timeout=timeout_s) as resp:
            return int(ExitCode.OK), f"{target}: {_reason(resp.read())}"
    except urllib.error.HTTPError as exc:
        return int(ExitCode.ERROR), f"{target}: HTTP {exc.code}: {_reason(exc.read())}"
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        return int(ExitCode.ERROR), f"{target}: unreachable: {why}"


def _reason(body: bytes) -> str:
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200]
    return str(doc.get("reason", doc)) if isinstance(doc, dict) else str(doc)


def add_health_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "health", help="exit 0 if the master is alive (--ready: ready), else 1 (HEALTHCHECK)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="endpoint base, e.g. http://127.0.0.1:9810, or a full URL")
    where.add_argument(
        "--run-dir",
        help="run folder of the master (env SUPERVISOR_RUN_DIR); "
        "its http_address file says where the endpoints listen",
    )
    p.add_argument("--ready", action="store_true", help="ask /readyz instead of /livez")
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for an answer (default: {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    return p


def cmd_health(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        print(f"supervisor: --timeout must be > 0, got {args.timeout}", file=sys.stderr)
        return int(ExitCode.USAGE)
    code, message = probe(
        url=args.url, run_dir=args.run_dir, ready=args.ready, timeout_s=args.timeout
    )
    if not args.quiet:
        print(message, file=sys.stdout if code == 0 else sys.stderr)
    return code
