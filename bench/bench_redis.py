"""Issue 10's performance section: supervisor on Redis against Huey 3.5 and Celery 5 on the same
Redis, in one run.

    python bench/bench_redis.py --quick          # small counts, under ~3 minutes
    python bench/bench_redis.py                  # the full run (~6-8 minutes on 2 shared cores)
    python bench/bench_redis.py --appendfsync always --json /tmp/redis.json

On a private ``redis-server`` (loopback, a free port, a temp folder, AOF with ``--appendfsync``,
``everysec`` by default), 2 workers on one node, no-op tasks pushed by this process (one
external producer), in rounds taken in turns (ours, Huey, Celery, ours, ...), medians of the
rounds, ratios of the medians (and of each round's pair):

- one at a time (one call per push, no wait in between) and batch push: ours against Huey
  (``huey_consumer -w 2 -k process``; targets >= 2x and >= 5x) and Celery (``-c 2 -P prefork
  -O fair``, default early acks unless ``--celery-acks-late``; information);
- serial (push, wait for the result, repeat): information;
- push-to-start latency with idle workers: p50 <= 1 ms, p99 <= 5 ms;
- CPU-bound ~10 ms tasks: ours >= 0.95 x ``multiprocessing.Pool(2)``, same task count;
- two nodes (4 workers) against one node (2 workers), same machine: the scaling figure;
- recovery: seconds from ``kill -9`` of a node's whole process tree to its tasks running on
  the other node, against ``--lease``.

Needs the package installed (``pip install -e .``) and, for the peers only,
``pip install 'huey==3.5.*' 'celery[redis]>=5,<6'``. Performance is printed, never asserted;
the last line of the output is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import baselines, machine  # noqa: E402
from bench import redis_figures as figs  # noqa: E402
from bench import redis_procs as procs  # noqa: E402
from bench import redis_scale as scale  # noqa: E402
from bench.machine import CpuWindow  # noqa: E402

FULL = {"one": 5000, "serial": 1000, "batch": 10000, "latency": 500, "cpu": 400,
        "rounds": 3, "scale_rounds": 3, "recovery_rounds": 3}  # fmt: skip
QUICK = {"one": 1000, "serial": 200, "batch": 2000, "latency": 200, "cpu": 100,
         "rounds": 3, "scale_rounds": 2, "recovery_rounds": 1}  # fmt: skip
CELERY_SHARE = {"one": 0.4, "batch": 0.4}  # Celery runs ~200/s here: fewer tasks (full run only)
TARGETS = {"one_vs_huey": 2.0, "batch_vs_huey": 5.0, "p50_ms": 1.0, "p99_ms": 5.0,
           "cpu_vs_pool": 0.95}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts (under ~3 minutes)")
    p.add_argument("--rounds", type=int, help="rounds taken in turns (default 3)")
    p.add_argument("--batch", type=int, default=500, help="tasks per push_tasks call")
    p.add_argument("--lease", type=float, default=3.0, help="--lease of the recovery nodes (s)")
    p.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec")
    p.add_argument("--celery-acks-late", action="store_true", help="task_acks_late=True")
    p.add_argument("--skip", default="", help="comma list of: celery,scale,recovery,cpu")
    p.add_argument("--json", metavar="PATH", help="also write the summary to PATH")
    return p.parse_args(argv)


def step(label: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {label} ...", file=sys.stderr, flush=True)


class Run:
    """Samples by figure name, one per round, and each round's others' CPU share."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = dict(QUICK if args.quick else FULL)
        if args.rounds:
            self.n["rounds"] = args.rounds
        self.skip = set(filter(None, args.skip.split(",")))
        self.s: dict[str, list[Any]] = {}
        self.others: list[float] = []

    def add(self, name: str, value: Any) -> None:
        self.s.setdefault(name, []).append(value)

    def med(self, name: str) -> float:
        return statistics.median(self.s[name]) if self.s.get(name) else float("nan")


def round_ours(run: Run, url: str, cpu_n: int) -> None:
    n, prefix = run.n, f"b{uuid.uuid4().hex[:8]}"
    with procs.supervisor_node(url, prefix, name="node-a") as node:
        q = node.queue
        step("ours: one at a time")
        run.add("ours_one", figs.ours_one(q, n["one"]))
        step("ours: batch")
        run.add("ours_batch", figs.ours_batch(q, n["batch"], run.args.batch))
        step("ours: serial")
        run.add("ours_serial", figs.ours_serial(q, n["serial"]))
        step("ours: latency")
        lat = figs.ours_latency(q, n["latency"])
        for key, label in (("handler_ms", "ours_lat"), ("started_ms", "ours_lat_started")):
            run.add(f"{label}_p50", figs.percentile(lat[key], 50))
            run.add(f"{label}_p99", figs.percentile(lat[key], 99))
        if "cpu" not in run.skip:
            step("Pool(2): cpu")
            run.add("pool_cpu", baselines.pool_cpu(n["cpu"], cpu_n))
            step("ours: cpu")
            run.add("ours_cpu", figs.ours_cpu(q, n["cpu"], cpu_n))


def round_huey(run: Run, url: str) -> None:
    n = run.n
    with procs.huey_consumer(url, notify=False) as app:
        step("huey: one at a time")
        run.add("huey_one", figs.huey_one(app, n["one"]))
        step("huey: batch (one call per task: no bulk push)")
        run.add("huey_batch", figs.huey_one(app, n["batch"]))
    with procs.huey_consumer(url, notify=True) as app:
        step("huey: serial")
        run.add("huey_serial", figs.huey_serial(app, n["serial"]))
        step("huey: latency")
        lat = figs.huey_latency(app, n["latency"])
        run.add("huey_lat_p50", figs.percentile(lat, 50))
        run.add("huey_lat_p99", figs.percentile(lat, 99))


def round_celery(run: Run, url: str) -> None:
    n = dict(run.n)
    if not run.args.quick:
        n.update({k: int(n[k] * share) for k, share in CELERY_SHARE.items()})
    queue = f"cq{uuid.uuid4().hex[:8]}"
    with procs.celery_worker(url, queue, acks_late=run.args.celery_acks_late) as app:
        step("celery: one at a time")
        run.add("celery_one", figs.celery_one(app, n["one"]))
        step("celery: batch (group)")
        run.add("celery_batch", figs.celery_batch(app, n["batch"]))
        step("celery: serial")
        run.add("celery_serial", figs.celery_serial(app, n["serial"]))
        step("celery: latency")
        lat = figs.celery_latency(app, n["latency"])
        run.add("celery_lat_p50", figs.percentile(lat, 50))
        run.add("celery_lat_p99", figs.percentile(lat, 99))


def scaling(run: Run, url: str) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    with procs.supervisor_node(url, prefix, name="node-a") as a:
        for _ in range(run.n["scale_rounds"]):
            step("scale: one node, batch")
            run.add("one_node_batch", figs.ours_batch(a.queue, run.n["batch"], run.args.batch))
            step("scale: two nodes, batch")
            two = scale.two_nodes_batch(url, prefix, a.queue, run.n["batch"], run.args.batch)
            run.add("two_nodes_batch", two)


def recovering(run: Run, url: str) -> None:
    for _ in range(run.n["recovery_rounds"]):
        step(f"recovery: kill -9 of a node, --lease {run.args.lease:g}")
        res = scale.recovery(url, run.args.lease)
        run.add("recovery", res)
        run.add("rerun_max_s", res["rerun_max_s"])


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def pair_ratios(run: Run, a: str, b: str) -> list[float]:
    return [ratio(x, y) for x, y in zip(run.s.get(a, []), run.s.get(b, []), strict=False)]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(run: Run, cpu_n: int, cpu_call_s: float, commands: list[str]) -> dict[str, Any]:
    m = run.med
    rows = []

    def line(name: str, *cells: str) -> None:  # ours, Huey, Celery, /Huey, /Celery, target
        rows.append(f"| {name} | " + " | ".join(cells) + " |")

    def rate(key: str) -> str:
        return f"{m(key):,.0f}/s" if run.s.get(key) else "-"

    def x(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.2f}x"

    one_h, batch_h = ratio(m("ours_one"), m("huey_one")), ratio(m("ours_batch"), m("huey_batch"))
    serial_h = ratio(m("ours_serial"), m("huey_serial"))
    line("one at a time", rate("ours_one"), rate("huey_one"), rate("celery_one"), x(one_h),
         x(ratio(m("ours_one"), m("celery_one"))),
         f">= 2x Huey: {verdict(one_h >= TARGETS['one_vs_huey'])}")  # fmt: skip
    line(f"batch push ({run.args.batch}/call)", rate("ours_batch"), rate("huey_batch"),
         rate("celery_batch"), x(batch_h), x(ratio(m("ours_batch"), m("celery_batch"))),
         f">= 5x Huey: {verdict(batch_h >= TARGETS['batch_vs_huey'])}")  # fmt: skip
    line("serial (push, wait, repeat)", rate("ours_serial"), rate("huey_serial"),
         rate("celery_serial"), x(serial_h), x(ratio(m("ours_serial"), m("celery_serial"))),
         "(information)")  # fmt: skip
    p50, p99 = m("ours_lat_p50"), m("ours_lat_p99")
    lat_ok = p50 <= TARGETS["p50_ms"] and p99 <= TARGETS["p99_ms"]
    line("push-to-start p50 / p99 (handler)", f"{p50:.2f} / {p99:.2f} ms",
         f"{m('huey_lat_p50'):.2f} / {m('huey_lat_p99'):.2f} ms",
         f"{m('celery_lat_p50'):.2f} / {m('celery_lat_p99'):.2f} ms", "", "",
         f"1 / 5 ms: {verdict(lat_ok)}")  # fmt: skip
    line("push-to-hand-out p50 / p99 (started_at)",
         f"{m('ours_lat_started_p50'):.2f} / {m('ours_lat_started_p99'):.2f} ms",
         "", "", "", "", "(information)")  # fmt: skip
    print("\n| figure | ours | Huey 3.5 | Celery 5 | ours/Huey | ours/Celery | target |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    cpu_r = ratio(m("ours_cpu"), m("pool_cpu"))
    if run.s.get("ours_cpu"):
        print(f"\nCPU-bound ({run.n['cpu']} tasks of ~{cpu_call_s * 1000:.1f} ms, n={cpu_n}): "
              f"ours {m('ours_cpu'):.1f}/s, Pool(2) {m('pool_cpu'):.1f}/s = {cpu_r:.3f}x "
              f"(target >= 0.95x: {verdict(cpu_r >= TARGETS['cpu_vs_pool'])})")  # fmt: skip
    scale_r = ratio(m("two_nodes_batch"), m("one_node_batch"))
    if run.s.get("two_nodes_batch"):
        print(f"two nodes (4 workers) / one node (2 workers), batch push, one machine of "
              f"{machine.describe()['cpu_count']} CPUs: {m('two_nodes_batch'):,.0f}/s / "
              f"{m('one_node_batch'):,.0f}/s = {scale_r:.2f}x (reported; per round: "
              + ", ".join(f"{v:.2f}" for v in pair_ratios(run, "two_nodes_batch", "one_node_batch"))
              + ")")  # fmt: skip
    if run.s.get("recovery"):
        lease = run.args.lease
        rec = run.s["recovery"]
        print(f"recovery after kill -9 of a node's tree, --lease {lease:g}: time-to-rerun "
              f"(slower of its 2 tasks) median {m('rerun_max_s'):.2f} s = "
              f"{m('rerun_max_s') / lease:.2f}x the lease; per round: "
              + "; ".join(
                  "rerun " + "/".join(f"{v:.2f}" for v in r["rerun_s"]) + " s, lease found expired "
                  + "/".join(f"{v:.2f}" for v in r["recovered_after_s"]) + " s ("
                  + ",".join(str(v) for v in r["reasons"]) + ")"
                  for r in rec
              ))  # fmt: skip
    print("\nper round (in turns):")
    for key, vals in run.s.items():
        if key != "recovery":
            print(f"  {key}: " + ", ".join(f"{v:,.2f}" for v in vals))
    for a, b in (("ours_one", "huey_one"), ("ours_batch", "huey_batch"), ("ours_cpu", "pool_cpu")):
        if run.s.get(a) and run.s.get(b):
            print(f"  {a}/{b} by round: " + ", ".join(f"{v:.2f}" for v in pair_ratios(run, a, b)))
    print("  others' CPU share by round: " + ", ".join(f"{v:.0%}" for v in run.others))
    print("\ncommands:")
    for c in commands:
        print(f"  {c}")
    return {
        "bench": "redis",
        "args": vars(run.args),
        "counts": run.n,
        "medians": {k: m(k) for k in run.s if k != "recovery"},
        "ratios": {"one_vs_huey": one_h, "batch_vs_huey": batch_h, "serial_vs_huey": serial_h,
                   "one_vs_celery": ratio(m("ours_one"), m("celery_one")),
                   "batch_vs_celery": ratio(m("ours_batch"), m("celery_batch")),
                   "cpu_vs_pool": cpu_r, "two_nodes_vs_one": scale_r,
                   "rerun_vs_lease": ratio(m("rerun_max_s"), run.args.lease)},
        "targets": {"one_vs_huey": one_h >= TARGETS["one_vs_huey"],
                    "batch_vs_huey": batch_h >= TARGETS["batch_vs_huey"],
                    "latency": lat_ok, "cpu_vs_pool": cpu_r >= TARGETS["cpu_vs_pool"]},
        "samples": run.s,
        "others_cpu_share": run.others,
        "machine": machine.describe(),
    }  # fmt: skip


def commands_used(run: Run, url: str) -> list[str]:
    node = ["python", "-m", "supervisor", "run", "--app", "bench.app", "--workers", "2",
            "--run-dir", "<tmp>/run", "--broker", url, "--key-prefix", "<unique>",
            "--node-name", "node-a", "--database", "sqlite:///<tmp>/bench.db",
            "--metrics-port", "0", "--log-format", "json", "--log-level", "WARNING",
            "--no-scheduler"]  # fmt: skip
    return [
        f"redis-server --port <free> --bind 127.0.0.1 --save '' --appendonly yes "
        f"--appendfsync {run.args.appendfsync} --maxmemory-policy noeviction",
        shlex.join(node) + f"   (recovery: + --lease {run.args.lease:g}; node-b the same)",
        "huey_consumer bench.huey_app.huey_plain -w 2 -k process -q   (serial/latency: "
        "bench.huey_app.huey_notify)",
        "celery -A bench.celery_app "
        + " ".join(procs.CELERY_ARGS)
        + " -Q <unique> -n <q>@%h"
        + ("   (task_acks_late=True)" if run.args.celery_acks_late else "   (default early acks)"),
        "python " + shlex.join(["bench/bench_redis.py", *sys.argv[1:]]),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    print(f"machine: {json.dumps(machine.describe())}")
    server = procs.BenchRedis(args.appendfsync)
    server.start()
    celery = "" if args.quick else f"; Celery's one/batch counts x{CELERY_SHARE['one']}"
    print(f"redis: {server.url} (appendfsync {args.appendfsync}); counts: "
          f"{json.dumps(run.n)}{celery}")  # fmt: skip
    step("calibrating the cpu task")
    cpu_n = baselines.calibrate_cpu_n(0.010, rounds=15)
    cpu_call_s = baselines.time_cpu_call(cpu_n, rounds=15)
    try:
        for r in range(run.n["rounds"]):
            step(f"round {r + 1} of {run.n['rounds']}")
            redis0 = server.cpu_s()
            with CpuWindow() as w:
                round_ours(run, server.url, cpu_n)
                round_huey(run, server.url)
                if "celery" not in run.skip:
                    round_celery(run, server.url)
            # redis-server is ours too, though not reaped (so not in the window's "ours")
            others = w.machine_s - w.ours_s - (server.cpu_s() - redis0)
            run.others.append(max(0.0, others) / (w.wall_s * (os.cpu_count() or 1)))
        if "scale" not in run.skip:
            scaling(run, server.url)
        if "recovery" not in run.skip:
            recovering(run, server.url)
    finally:
        server.stop()
    summary = report(run, cpu_n, cpu_call_s, commands_used(run, server.url))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, default=str, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
