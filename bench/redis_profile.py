"""Where a task's time goes on the Redis broker: round trips, script cost, CPU by process.

    python bench/redis_profile.py                 # one-at-a-time, serial and latency loads
    python bench/redis_profile.py --tasks 1000 --cprofile 25

For each load against one node (2 workers) on a private ``redis-server``:

* CPU seconds per task of every process: redis-server, the node's master, its workers, its
  other child (the history writer and HTTP endpoints), this producer;
* every top-level command Redis ran, from ``SLOWLOG`` with a threshold of 0 (each entry names
  its client, so its process): round trips per task by process and command, and the server
  time of each script (an EVALSHA is matched to its script by SHA1);
* the commands run inside the scripts (``INFO commandstats`` delta minus the top-level ones),
  per task, and the Lua interpreter's own share (script time minus its commands' time);
* ``redis-cli --latency`` idle and during the load, and a cProfile of this producer.

Then, away from the node, micro costs inside Lua (``cjson`` decode+encode of a real record,
XADD to a stream, RPUSH, HINCRBY, ZADD) and an in-process consumer that exchanges pre-pushed
tasks with the real scripts and with copies of them edited in memory (no XADD events, no
observations, neither): server and client microseconds per exchange. Nothing under
``supervisor/`` is changed. Prints a report; always exits 0.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pstats
import random
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import redis_figures as figs  # noqa: E402
from bench import redis_procs as procs  # noqa: E402
from supervisor import Queue  # noqa: E402
from supervisor.broker.redis import RedisBroker  # noqa: E402
from supervisor.broker.redis.scripts import sources  # noqa: E402
from supervisor.registry import TaskOptions  # noqa: E402


def roles(
    server: procs.BenchRedis, root_pid: int, kind: str, node: procs.Node | None = None
) -> dict[int, str]:
    """pid -> role of every process of one system under test (``kind``: ours, huey, celery)."""
    out = {server.proc.pid: "redis-server", psutil.Process().pid: "producer (this)"}  # type: ignore[union-attr]
    out[root_pid] = {"ours": "master", "huey": "huey consumer", "celery": "celery main"}[kind]
    children = sorted(psutil.Process(root_pid).children(recursive=True), key=lambda p: p.pid)
    workers = {}
    if node is not None:
        status = node.queue.broker.node_statuses().get(node.name) or {}
        workers = {w.get("pid"): w.get("slot") for w in status.get("workers") or []}
    for i, child in enumerate(children):
        if kind == "ours":
            slot = workers.get(child.pid)
            out[child.pid] = f"worker-{slot}" if slot is not None else "node child (history, HTTP)"
        else:
            out[child.pid] = f"{kind} worker-{i}"
    return out


def client_roles(port: int, pids: dict[int, str]) -> dict[str, str]:
    """Redis client address "ip:port" -> role, from the processes' sockets."""
    out = {}
    for pid, role in pids.items():
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.raddr and c.raddr.port == port:
                out[f"{c.laddr.ip}:{c.laddr.port}"] = role
    return out


def cpu_s(pids: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for pid, role in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        out[role] += t.user + t.system
    return out


def script_names() -> dict[str, str]:
    names = {hashlib.sha1(src.encode()).hexdigest(): name for name, src in sources().items()}
    from supervisor.broker.redis.scripts import HOLD_LOCK

    names[hashlib.sha1(HOLD_LOCK.encode()).hexdigest()] = "lock (history writer, exporter)"
    return names


def latency_probe(port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["redis-cli", "-p", str(port), "--latency", "-i", f"{seconds:g}", "--raw"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def measure(
    label: str,
    server: procs.BenchRedis,
    pids: dict[int, str],
    load: Callable[[], Any],
    tasks: int,
) -> None:
    """Run ``load`` (``tasks`` tasks) once and print where its time went."""
    r = server.client()
    names = script_names()
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", 1_000_000)
    r.slowlog_reset()
    r.config_resetstat()
    probe = latency_probe(server.port, 1.0)
    c0, t0 = cpu_s(pids), time.perf_counter()
    load()
    wall = time.perf_counter() - t0
    c1 = cpu_s(pids)
    addr_role = client_roles(server.port, pids)  # after the load: its connections are open
    r.config_set("slowlog-log-slower-than", 1_000_000)
    stats = r.info("commandstats")
    log = r.slowlog_get(1_000_000)
    lat_during = probe.communicate(timeout=30)[0].strip()
    print(f"\n=== {label}: {tasks} tasks in {wall:.2f} s = {tasks / wall:,.0f}/s; "
          f"redis-cli --latency (min max avg samples) during: {lat_during} ms")  # fmt: skip
    total = sum(c1[k] - c0.get(k, 0) for k in c1)
    print(
        f"CPU us per task by process (total {total / tasks * 1e6:.0f}): "
        + ", ".join(
            f"{role} {(c1[role] - c0.get(role, 0)) / tasks * 1e6:.0f}" for role in sorted(c1)
        )
    )
    by_role: dict[str, Counter[str]] = defaultdict(Counter)
    script_us: dict[str, list[int]] = defaultdict(list)
    inner: Counter[str] = Counter()
    inner_us: Counter[str] = Counter()
    for e in log:
        args = bytes(e["command"]).split(b" ", 2)
        cmd = args[0].decode(errors="replace").lower()
        sha = args[1].decode(errors="replace") if len(args) > 1 else ""
        if cmd in ("slowlog", "config", "info", "ping"):
            continue
        addr = e.get("client_address") or b""
        addr = addr.decode() if isinstance(addr, bytes) else str(addr)
        if not addr or addr == "?:0":  # a command run by a script (the Lua client)
            inner[cmd] += 1
            inner_us[cmd] += int(e["duration"])
            continue
        role = addr_role.get(addr, "other")
        if cmd == "evalsha" and sha:
            cmd = "script:" + names.get(sha, sha[:8])
            script_us[cmd].append(int(e["duration"]))
        by_role[role][cmd] += 1
    print("round trips (top-level commands; a pipeline counts each) per task, by process:")
    for role in sorted(by_role):
        total = sum(by_role[role].values())
        detail = ", ".join(f"{c} {n / tasks:.2f}" for c, n in by_role[role].most_common(8))
        print(f"  {role}: {total / tasks:.2f}  ({detail})")
    print("script server time (us, SLOWLOG; each inner command's log entry adds ~0.2 us): "
          "calls/task, mean, p50, p99")  # fmt: skip
    for name, us in sorted(script_us.items(), key=lambda kv: -sum(kv[1])):
        us.sort()
        print(f"  {name}: {len(us) / tasks:.2f}, {statistics.mean(us):.1f}, "
              f"{us[len(us) // 2]}, {us[min(len(us) - 1, int(len(us) * 0.99))]}")  # fmt: skip
    ev = stats.get("cmdstat_evalsha") or {}
    print(f"EVALSHA from commandstats: {int(ev.get('calls', 0)) / tasks:.2f} per task, "
          f"{float(ev.get('usec_per_call', 0)):.1f} us per call")  # fmt: skip
    print(
        f"inside scripts, per task: {sum(inner.values()) / tasks:.1f} commands: "
        + ", ".join(
            f"{c} {n / tasks:.1f} x {inner_us[c] / n:.2f} us" for c, n in inner.most_common()
        )
    )
    script_total = sum(sum(v) for v in script_us.values())
    if script_total:
        own = sum(inner_us.values())
        print(f"script time per task {script_total / tasks:.1f} us: its commands "
              f"{own / tasks:.1f} us, the Lua interpreter (cjson, string.format, argument "
              f"handling, glue) {(script_total - own) / tasks:.1f} us")  # fmt: skip


def cprofile(label: str, load: Callable[[], Any], top: int) -> None:
    """The producer's functions under ``load`` (a second, separate pass: cProfile slows every
    Python call, so the figures above are taken without it)."""
    prof = cProfile.Profile()
    prof.enable()
    load()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    print(f"producer cProfile, {label} (by tottime, top {top}):")
    print("\n".join("  " + ln for ln in out.getvalue().splitlines()[6 : 8 + top] if ln.strip()))


# -- micro costs, away from the node --------------------------------------------------------
MICRO = {
    "cjson decode+encode of a record": "local s = ARGV[1] for i = 1, 1000 do "
    "local r = cjson.decode(s) s = cjson.encode(r) end return #s",
    "XADD (MAXLEN ~ 100000) of 4 fields": "for i = 1, 1000 do redis.call('XADD', KEYS[1], "
    "'MAXLEN', '~', 100000, '*', 'id', ARGV[1], 'status', 'running', 'attempt', 1, 'at', "
    "'1.5') end return 1",
    "RPUSH of an observation": "for i = 1, 1000 do redis.call('RPUSH', KEYS[2], "
    "'started\\31noop\\31\\31 0.000100') end return 1",
    "HINCRBY of a counter": "for i = 1, 1000 do redis.call('HINCRBY', KEYS[3], "
    "'finished\\31noop\\31succeeded', 1) end return 1",
    "HSET of the record": "for i = 1, 1000 do redis.call('HSET', KEYS[3], 'rec', ARGV[1]) end "
    "return 1",
    "ZADD + ZPOPMIN": "for i = 1, 1000 do redis.call('ZADD', KEYS[4], i, 'id' .. i) "
    "redis.call('ZPOPMIN', KEYS[4]) end return 1",
}


def micro(server: procs.BenchRedis, record_blob: bytes) -> None:
    r = server.client()
    keys = [f"{{m}}:{k}" for k in ("s", "l", "h", "z")]
    print("\n=== Lua micro costs (us per operation, 1000 in one script, median of 5):")
    for label, src in MICRO.items():
        script = r.register_script(src)
        times = []
        for _ in range(5):
            r.delete(*keys)
            t0 = time.perf_counter()
            script(keys=keys, args=[record_blob])
            times.append((time.perf_counter() - t0) * 1000)  # ms per 1000 = us per op
        print(f"  {label}: {statistics.median(times):.2f}")
    r.delete(*keys)
    prelude(server)


def prelude(server: procs.BenchRedis) -> None:
    """What every task script call pays before its own work: the common part of the scripts
    (keys, header, its local functions) against ``return 1`` with the same keys and header."""
    r = server.client()
    b = RedisBroker(url=server.url, prefix="pre", node="prof")
    common = (ROOT / "supervisor" / "broker" / "redis" / "lua" / "common.lua").read_text()
    header = [str(time.time()), "prof", 10000, 3600000, 3600000, 30000]
    keys = b._task_keys

    def per_call(label: str, call: Callable[[], Any], command: str) -> str:
        r.config_resetstat()
        for _ in range(3000):
            call()
        stat = r.info("commandstats").get(f"cmdstat_{command}", {})
        return f"{label} {float(stat.get('usec_per_call', 0)):.1f} us"

    one, pre = r.register_script("return 1"), r.register_script(common + "\nreturn 1")
    out = [
        per_call("return 1", lambda: one(keys=keys, args=header), "evalsha"),
        per_call("the common prelude", lambda: pre(keys=keys, args=header), "evalsha"),
    ]
    try:  # the same as a Redis Function library (Redis 7): its functions are made once
        r.function_load(function_library(common), replace=True)
        out.append(
            per_call(
                "as a function library (FCALL, per-call set-up only)",
                lambda: r.fcall("sv_probe", len(keys), *keys, *header),
                "fcall",
            )
        )
    except redis.ResponseError as exc:
        out.append(f"no Redis Functions here ({exc})")
    print(f"  per script call with {len(keys)} KEYS and the header: " + ", ".join(out))
    b.close()


def function_library(common: str) -> str:
    """common.lua as a Redis Function library: its top-level values that depend on the call
    (KEYS, ARGV, and what is computed from them, cjson) become upvalues set by ``begin``."""
    decl, setters, body = [], [], []
    per_call = re.compile(r"^local ([A-Za-z_0-9, ]+) = (.*(?:KEYS|ARGV|NOW_N|K_TASK|cjson).*)$")
    for line in common.splitlines():
        m = per_call.match(line)
        if m and not line.startswith("local function"):
            decl.append(f"local {m.group(1)}")
            setters.append(f"  {m.group(1)} = {m.group(2)}")
        else:
            body.append(line)
    return "\n".join(
        ["#!lua name=sv_probe", *decl, *body, "local function begin(KEYS, ARGV)", *setters,
         "  PENDING_WAKES = {}", "  KNOWN_QUEUES = {}", "end",
         "redis.register_function('sv_probe', function(KEYS, ARGV) begin(KEYS, ARGV) return 1 end)"]
    )  # fmt: skip


def edit(src: str, edits: tuple[tuple[str, str], ...]) -> str:
    for old, new in edits:
        if old not in src:
            raise ValueError(f"{old.strip()!r} is not in the scripts any more")
        src = src.replace(old, new)
    return src


NO_EVENTS = (("local function event(rec)\n", "local function event(rec) do return end\n"),)
NO_OBS = (
    ("local function observe(ev, ttype, st, seconds)\n",
     "local function observe(ev, ttype, st, seconds) do return end\n"),
)  # fmt: skip
NO_COUNTS = (
    ("local function counter(ev, ttype, st)\n",
     "local function counter(ev, ttype, st) do return end\n"),
    ("  if not isnull(rec.status) then redis.call('HINCRBY', K_NSTATUS, rec.status, -1) end\n",
     ""),
    ("  rec.status = status\n  redis.call('HINCRBY', K_NSTATUS, status, 1)\n",
     "  rec.status = status\n"),
)  # fmt: skip
VARIANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "as shipped": (),
    "no XADD events": NO_EVENTS,
    "no RPUSH observations": NO_OBS,
    "no HINCRBY counters": NO_COUNTS,
    "none of the three": NO_EVENTS + NO_OBS + NO_COUNTS,
}


def _exchange_run(
    server: procs.BenchRedis, src: str, n: int, history_too: bool
) -> dict[str, float]:
    """Push ``n`` no-ops, then report + take them one by one from this process with exchange
    script ``src``: wall and client CPU per exchange, and the server's (``commandstats``)."""
    r = server.client()
    prefix = f"p{uuid.uuid4().hex[:6]}"
    opts = TaskOptions(timeout_s=60.0, max_retries=0)
    b = RedisBroker(url=server.url, prefix=prefix, node="prof", task_types={"noop": opts})
    b.configure({"noop": opts})
    b._scripts._scripts["exchange"] = b._client.register_script(src)
    producer = Queue(b)
    for i in range(0, n, 500):
        producer.push_tasks([{"type": "noop", "params": {}} for _ in range(min(500, n - i))])
    consumer, report = "worker:0:1", None
    r.config_resetstat()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        msg = b.exchange(consumer, report, 0)
        report = (msg["task_id"], "succeeded", None) if msg else None
    wall = (time.perf_counter() - t0) / n * 1e6
    cpu = (time.process_time() - c0) / n * 1e6
    stats = r.info("commandstats")
    b.exchange(consumer, report, 0)
    script = float(stats["cmdstat_evalsha"]["usec"]) / n
    own = {k: v for k, v in stats.items()
           if k not in ("cmdstat_evalsha", "cmdstat_config", "cmdstat_info")}  # fmt: skip
    inner = {k.removeprefix("cmdstat_"): int(v["calls"]) / n for k, v in own.items()}
    inner_us = sum(float(v["usec"]) for v in own.values()) / n
    blob = r.hget(f"{{{prefix}}}:task", r.hkeys(f"{{{prefix}}}:task")[0]) or b""
    if history_too:
        history(server, prefix, n)
    b.close()
    return {
        "wall": wall,
        "cpu": cpu,
        "server": script,
        "inner_us": inner_us,
        "inner_n": sum(inner.values()),
        "blob": blob,
        "cmds": inner,
    }  # type: ignore[dict-item]


def consumer_emulation(server: procs.BenchRedis, n: int, repeats: int = 3) -> bytes:
    """Exchange ``n`` pre-pushed no-ops in this process with each script variant, ``repeats``
    times in turns; print medians. Returns a record blob for the micro costs."""
    print(f"\n=== in-process consumer: {n} exchanges (report + take) of pre-pushed no-ops per "
          f"run, {repeats} runs per variant in turns, medians; server us from commandstats "
          "(its commands' own time, and the rest: the Lua interpreter):")  # fmt: skip
    base = sources()["exchange"]
    srcs = {}
    for label, edits in VARIANTS.items():
        try:
            srcs[label] = edit(base, edits)
        except ValueError as exc:
            print(f"  {label}: skipped ({exc})")
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rep in range(repeats):
        for label, src in srcs.items():
            runs[label].append(
                _exchange_run(server, src, n, history_too=rep == 0 and label == "as shipped")
            )
    for label, rs in runs.items():
        med = {k: statistics.median(float(x[k]) for x in rs)
               for k in ("wall", "cpu", "server", "inner_n", "inner_us")}  # fmt: skip
        cmds = sorted(rs[0]["cmds"].items(), key=lambda kv: -kv[1])
        detail = "  [" + ", ".join(f"{c} {k:.1f}" for c, k in cmds) + "]"
        print(f"  {label}: wall {med['wall']:.0f} us/exchange, client CPU {med['cpu']:.0f} us; "
              f"server {med['server']:.1f} us = {med['inner_n']:.1f} commands "
              f"{med['inner_us']:.1f} us + Lua {med['server'] - med['inner_us']:.1f} us"
              + (detail if label == "as shipped" else ""))  # fmt: skip
    return runs["as shipped"][0]["blob"]


def client_costs(server: procs.BenchRedis, blob: bytes) -> None:
    """A round trip from Python, and the client-side pieces of an exchange and a task."""
    import os
    import resource
    import socket
    import timeit

    from loguru import logger

    from bench.app import app
    from supervisor.broker.redis import codec
    from supervisor.master import scoreboard as sb
    from supervisor.worker.loop import Worker

    r = server.client()
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def raw_ping() -> None:
        raw.sendall(b"PING\r\n")
        raw.recv(64)

    pusher = Queue(
        RedisBroker(url=server.url, prefix="cp", node="prof", task_types={"noop": TaskOptions()})
    )

    def lpush() -> None:
        r.lpush("{cp}:lpush", b"0123456789" * 10)

    def push_task() -> None:
        pusher.push_task({"type": "noop", "params": {}})

    print("\n=== client side (this process, alone):")
    for label, fn in (
        ("redis-py PING", r.ping),
        ("raw socket PING", raw_ping),
        ("redis-py LPUSH of 100 bytes (Huey's push)", lpush),
        ("our push_task, nobody waiting (its script included)", push_task),
    ):
        fn()
        n = 3000
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        wall = (time.perf_counter() - t0) / n * 1e6
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        print(f"  {label}: wall {wall:.0f} us, user {(u1.ru_utime - u0.ru_utime) / n * 1e6:.0f} "
              f"us, sys {(u1.ru_stime - u0.ru_stime) / n * 1e6:.0f} us, voluntary context "
              f"switches {(u1.ru_nvcsw - u0.ru_nvcsw) / n:.2f} per call")  # fmt: skip
    raw.close()
    pusher.broker.close()
    b = RedisBroker(url=server.url, prefix="c", node="prof")
    conn = b._client.connection_pool.get_connection()
    args = ["EVALSHA", "x" * 40, len(b._task_keys), *b._task_keys,
            "1.0", "prof", 10000, 1, 1, 30000, *["a"] * 17]  # fmt: skip
    n = 20000
    per = timeit.timeit(lambda: conn.pack_command(*args), number=n) / n * 1e6
    print(f"  redis-py pack_command of an exchange call ({len(args)} arguments, "
          f"{len(b._task_keys)} of them KEYS): {per:.1f} us")  # fmt: skip
    b._client.connection_pool.release(conn)
    per = timeit.timeit(lambda: codec.decode_raw(blob), number=n) / n * 1e6
    print(f"  codec.decode_raw of a record ({len(blob)} bytes of JSON): {per:.1f} us")
    opts = {name: app.options(name) for name in app.names()}
    board = sb.Scoreboard(1)
    w = Worker(slot=0, registry=app, options=opts, scoreboard=board, connect=lambda: b,
               master_pid=os.getppid())  # fmt: skip
    logger.remove()
    w.pid, w.consumer, w.max_tasks = os.getpid(), "worker:0:1", 0
    w.log = logger.bind(component="worker", worker=0, pid=w.pid)
    msg = {"task_id": "t", "type": "noop", "params": b"\x80\x05}\x94.", "attempt": 1,
           "priority": 5}  # fmt: skip

    def turn() -> None:
        board.heartbeat(0, time.monotonic())
        w.execute(msg)
        w.tasks_done += 1
        board.end_task(0, time.monotonic(), w.tasks_done)
        w.recycle_reason()

    per = timeit.timeit(turn, number=n) / n * 1e6
    print(f"  a worker's own work per no-op task (Worker.execute, scoreboard, recycle check; "
          f"no broker): {per:.1f} us")  # fmt: skip
    b.close()


def history(server: procs.BenchRedis, prefix: str, n: int) -> None:
    """The node's history writer, in this process, over the events ``n`` tasks left: first in
    batches of 3 entries for 200 tasks (one task at a time: its push, hand-out and finish
    arrive one by one), then the rest in batches of 500 (a busy node)."""
    import tempfile

    from supervisor.broker.embedded.tasktable import TaskTable
    from supervisor.broker.redis.history import HistoryWriter
    from supervisor.broker.redis.keys import Keys
    from supervisor.db import make_engine

    r = server.client()
    stream = f"{{{prefix}}}:events"
    entries = r.xlen(stream)
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (3, 500):
            table = TaskTable(make_engine(f"sqlite:///{tmp}/h{batch}.db"))
            table.migrate()
            w = HistoryWriter(r, Keys(prefix), table, node="prof-history")
            w.batch = batch
            w._ensure_group()
            r.xgroup_setid(stream, "history", "0")
            r.config_set("slowlog-max-len", 1_000_000)
            r.config_set("slowlog-log-slower-than", 0)
            r.slowlog_reset()
            c0, t0 = time.process_time(), time.perf_counter()
            done = 0
            while done < entries:
                got = w.step(block_ms=1)
                if not got:
                    break
                done += got
                if batch == 3 and done >= 600:
                    break
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            r.config_set("slowlog-log-slower-than", 1_000_000)
            log = [e for e in r.slowlog_get(1_000_000) if e.get("client_address") not in (b"?:0",)]
            cmds = Counter(bytes(e["command"]).split(b" ", 1)[0].decode().lower() for e in log)
            cmds.pop("config", None)
            tasks = done / 3
            print(f"  history writer, batches of {batch}: {done} entries ({tasks:.0f} tasks) "
                  f"in {wall:.2f} s; writer CPU {cpu / tasks * 1e6:.0f} us per task; "
                  f"Redis server {sum(int(e['duration']) for e in log) / tasks:.0f} us per task; "
                  f"{sum(cmds.values()) / tasks:.2f} commands per task: "
                  + ", ".join(f"{c} {k / tasks:.2f}" for c, k in cmds.most_common()))  # fmt: skip
            table.close()
            entries -= done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=2000, help="tasks per load")
    p.add_argument("--latency", type=int, default=500, help="latency samples")
    p.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec")
    p.add_argument("--cprofile", type=int, default=15, help="producer functions shown (0: none)")
    p.add_argument("--no-peers", action="store_true", help="skip the Huey and Celery loads")
    args = p.parse_args(argv)
    server = procs.BenchRedis(args.appendfsync)
    server.start()
    try:
        idle = latency_probe(server.port, 1.0).communicate(timeout=30)[0].strip()
        print(f"redis-cli --latency idle (min max avg samples): {idle} ms; appendfsync "
              f"{args.appendfsync}")  # fmt: skip
        n, lat = args.tasks, args.latency
        with procs.supervisor_node(server.url, f"p{uuid.uuid4().hex[:8]}", name="node-a") as node:
            q = node.queue
            figs.ours_one(q, 200)  # warm up
            pids = roles(server, node.pid, "ours", node)

            def latency() -> None:
                res = figs.ours_latency(q, lat)
                print(f"latency: handler p50 {figs.percentile(res['handler_ms'], 50):.2f} ms, "
                      f"p99 {figs.percentile(res['handler_ms'], 99):.2f} ms; started_at p50 "
                      f"{figs.percentile(res['started_ms'], 50):.2f} ms, p99 "
                      f"{figs.percentile(res['started_ms'], 99):.2f} ms")  # fmt: skip

            measure("ours, one at a time", server, pids, lambda: figs.ours_one(q, n), n)
            measure("ours, batch", server, pids, lambda: figs.ours_batch(q, n, 500), n)
            measure("ours, serial", server, pids, lambda: figs.ours_serial(q, n // 4), n // 4)
            measure("ours, latency (idle workers)", server, pids, latency, lat)
            if args.cprofile:
                cprofile("one at a time", lambda: figs.ours_one(q, n // 2), args.cprofile)
                cprofile("serial", lambda: figs.ours_serial(q, n // 8), args.cprofile)
        if not args.no_peers:
            with procs.huey_consumer(server.url, notify=False) as app:
                pids = roles(server, app.pid, "huey")
                measure("Huey, one at a time", server, pids, lambda: figs.huey_one(app, n), n)
            with procs.huey_consumer(server.url, notify=True) as app:
                pids = roles(server, app.pid, "huey")
                measure("Huey (notify_result), serial", server, pids,
                        lambda: figs.huey_serial(app, n // 4), n // 4)  # fmt: skip
            with procs.celery_worker(server.url, f"cq{uuid.uuid4().hex[:6]}") as app:
                pids = roles(server, app.pid, "celery")
                measure("Celery, one at a time", server, pids, lambda: figs.celery_one(app, n), n)
        random.seed(1)
        blob = consumer_emulation(server, args.tasks)
        micro(server, blob)
        client_costs(server, blob)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
