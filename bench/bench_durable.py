"""Benchmark of issue 5, "Performance": the durable broker beside the in-memory one and Pool(2).

    python bench/bench_durable.py                 # the full run (~60-90 s on 2 cores)
    python bench/bench_durable.py --quick         # small counts: a smoke test, ratios are noise
    python bench/bench_durable.py --json out.json --batch 500
    python bench/bench_durable.py --profile /tmp/prof   # + py-spy runs after the figures

In one run, with 2 workers each, no-op throughput end to end (first push -> a ``stats()`` poll,
at most every 50 ms, that sees every task finished), each on a fresh ``supervisor run`` in a fresh
tmp folder (``--database sqlite:///<tmp>/bench.db``):

1. in-memory (``--durability none``) and durable (``--durability journal``), ``push_task`` one at
   a time, alternating, ``--pairs`` runs of each (5; the order flips every pair); each figure is
   the median run, since a single run here swings by +-20 % with other people's load;
3. ``multiprocessing.Pool(2)``, ``imap_unordered`` chunksize=1 (the baseline);
4. durable, ``push_tasks`` in batches of ``--batch``;
5. in-memory, the same;

then the producer's push round trip (one ``push_task`` call) with idle workers in both modes.
Targets: durable >= 0.8 x in-memory one at a time; durable batch >= 0.1 x Pool. It prints the
table and PASS/MISS and exits 0 either way: performance is measured here, not asserted.

``--profile DIR``: after the measured figures (so the sampler cannot disturb them), one more
durable one-at-a-time run and one durable batch run under ``py-spy record --subprocesses --gil``
on the master (broker, workers, scheduler): only samples of threads holding the GIL, since the
broker is one GIL-bound process. Raw collapsed stacks go to DIR, with a summary printed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/bench_durable.py` from anywhere

from bench import baselines, machine, ours  # noqa: E402
from bench.machine import CpuWindow  # noqa: E402
from bench.run_bench import percentile  # noqa: E402

FULL = {"noop": 10_000, "latency": 300, "pairs": 5}
QUICK = {"noop": 1_000, "latency": 50, "pairs": 1}
ONE_TARGET = 0.8  # durable / in-memory, one at a time
BATCH_TARGET = 0.1  # durable batch / Pool chunksize=1
ISSUE_BATCH_RATE = 2_500  # the issue's reading of 0.1 x Pool (Pool ~24,000-29,000/s there)
# One Pool figure lasts 0.2-0.4 s and swings +-40 % here (27,000-68,000/s in one afternoon):
# the median of a few, taken back to back, is the baseline.
POOL_REPEATS = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    p.add_argument("--count", type=int, help="no-op tasks per throughput figure")
    p.add_argument("--batch", type=int, default=500, help="tasks per push_tasks call")
    p.add_argument("--pairs", type=int, help="alternating in-memory/durable one-at-a-time runs")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--profile", metavar="DIR", help="py-spy the durable path after the figures")
    return p.parse_args(argv)


def step(label: str) -> None:
    print(f"  measuring {label} ...", file=sys.stderr, flush=True)


def measure(
    noop: int, batch: int, samples: int, pairs: int
) -> tuple[dict[str, Any], dict[str, float]]:
    figures: dict[str, Any] = {}
    others: dict[str, float] = {}

    def run(key: str, label: str, fn: Callable[[], Any]) -> None:
        step(label)
        with CpuWindow() as window:
            figures[key] = fn()
        others[key] = window.others_share

    # One at a time: the two modes alternate, ONE_PAIRS runs each (the order flips every pair),
    # and each figure is the median run: one run swings +-20 % here with the machine's mood.
    runs: dict[str, list[ours.Throughput]] = {"mem_one": [], "dur_one": []}
    shares: dict[str, list[float]] = {"mem_one": [], "dur_one": []}
    for i in range(pairs):
        order = ("mem_one", "dur_one") if i % 2 == 0 else ("dur_one", "mem_one")
        for key in order:
            mode = "none" if key == "mem_one" else "journal"
            step(f"{mode} no-op x{noop}, one at a time (pair {i + 1} of {pairs})")
            with CpuWindow() as window:
                runs[key].append(ours.throughput(noop, durability=mode))
            shares[key].append(window.others_share)
    for key, got in runs.items():
        ranked = sorted(got, key=lambda t: t.tasks_per_s)
        figures[key] = ranked[len(ranked) // 2]
        figures[f"{key}_runs"] = [t.tasks_per_s for t in got]
        others[key] = max(shares[key])
    run(
        "pool_runs",
        f"Pool(2) no-op x{noop}, chunksize=1, {POOL_REPEATS} times",
        lambda: [baselines.pool_noop(noop, chunksize=1) for _ in range(POOL_REPEATS)],
    )
    figures["pool"] = statistics.median(figures["pool_runs"])
    others["pool"] = others["pool_runs"]
    run(
        "dur_batch",
        f"durable no-op x{noop}, batches of {batch}",
        lambda: ours.throughput(noop, batch=batch, durability="journal"),
    )
    run(
        "mem_batch",
        f"in-memory no-op x{noop}, batches of {batch}",
        lambda: ours.throughput(noop, batch=batch, durability="none"),
    )
    run(
        "mem_idle",
        f"in-memory push round trip x{samples}, idle workers",
        lambda: ours.latency(samples, durability="none"),
    )
    run(
        "dur_idle",
        f"durable push round trip x{samples}, idle workers",
        lambda: ours.latency(samples, durability="journal"),
    )
    return figures, others


def pcts(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):.2f} ms  p99 {percentile(values, 99):.2f} ms"


def report(f: dict[str, Any], others: dict[str, float], noop: int, batch: int) -> dict[str, Any]:
    rows: list[tuple[str, str, str]] = []
    for key, what in (
        ("mem_one", f"in-memory, push_task one at a time x{noop}, median"),
        ("dur_one", f"durable,   push_task one at a time x{noop}, median"),
        ("pool", f"Pool(2) imap_unordered chunksize=1 x{noop}, median of {POOL_REPEATS}"),
        ("dur_batch", f"durable,   push_tasks batches of {batch} x{noop}"),
        ("mem_batch", f"in-memory, push_tasks batches of {batch} x{noop}"),
    ):
        v = f[key]
        if isinstance(v, ours.Throughput) and f"{key}_runs" in f:  # median of alternating runs
            runs = ", ".join(f"{x / 1000:.1f}k" for x in f[f"{key}_runs"])
            detail = f"{v.tasks_per_s:,.0f} tasks/s  (median of {runs})"
        elif isinstance(v, ours.Throughput):
            detail = (
                f"{v.tasks_per_s:,.0f} tasks/s  ({v.push_s:.2f} s pushing of {v.elapsed_s:.2f})"
            )
        else:
            runs = ", ".join(f"{x / 1000:.1f}k" for x in f["pool_runs"])
            detail = f"{v:,.0f} tasks/s  ({runs})"
        rows.append((key, what, detail))
    width = max(len(r[1]) for r in rows)
    print(f"\n{'figure':<{width}}  {'throughput':<44} others' CPU")
    for key, what, detail in rows:
        print(f"{what:<{width}}  {detail:<44} {100 * others[key]:>5.0f} %")

    print(
        "\nCPU in each throughput figure (psutil; the broker serves every call and, when "
        "durable, appends to the journal; one process, so its ceiling is ~1 core):"
    )
    for key in ("mem_one", "dur_one", "mem_batch", "dur_batch"):
        v = f[key]
        c = v.cpu_s
        b, w, fo = c.get("broker", 0.0), c.get("workers", 0.0), c.get("folder", 0.0)
        print(
            f"  {key:<10} broker {100 * b / v.elapsed_s:3.0f} % of a core, {1e6 * b / noop:4.0f}"
            f" us/task (sys {1e6 * c.get('broker_sys', 0.0) / noop:3.0f}), writes "
            f"{c.get('broker_wchar', 0.0) / noop / 1024:5.1f} KiB and "
            f"{c.get('broker_syscw', 0.0) / noop:4.1f} calls/task; "
            f"workers {100 * w / v.elapsed_s:3.0f} %, {1e6 * w / noop:3.0f} us/task; "
            f"folder {1e6 * fo / noop:3.0f} us/task"
        )

    print("\npush round trip in the producer (one call, perf_counter around it):")
    for key, what in (
        ("mem_one", "in-memory, during the one-at-a-time run"),
        ("dur_one", "durable,   during the one-at-a-time run"),
        ("mem_idle", "in-memory, idle workers (one task in flight)"),
        ("dur_idle", "durable,   idle workers (one task in flight)"),
    ):
        v = f[key]
        values = v.push_call_ms if isinstance(v, ours.Throughput) else v.push_ms
        print(f"  {what:<46} {pcts(values)}")
    for key, what in (("mem_batch", "in-memory"), ("dur_batch", "durable  ")):
        print(f"  {what} push_tasks({batch}) call                {pcts(f[key].push_call_ms)}")
    for key, what in (("mem_idle", "in-memory"), ("dur_idle", "durable  ")):
        print(f"  {what} push-to-start (record started_at), idle  {pcts(f[key].start_ms)}")

    mem1, dur1 = f["mem_one"].tasks_per_s, f["dur_one"].tasks_per_s
    durb, memb, pool = f["dur_batch"].tasks_per_s, f["mem_batch"].tasks_per_s, f["pool"]
    one, vs_pool = dur1 / mem1, durb / pool
    ok_one, ok_batch = one >= ONE_TARGET, vs_pool >= BATCH_TARGET
    print("\ntargets (issue 5):")
    print(
        f"  {'PASS' if ok_one else 'MISS'}  durable / in-memory, one at a time: "
        f"{dur1:,.0f} / {mem1:,.0f} = {one:.2f} (medians; target >= {ONE_TARGET})"
    )
    pair_ratios = [d / m for d, m in zip(f["dur_one_runs"], f["mem_one_runs"], strict=True)]
    print(
        "  (info) run by run (pairs taken back to back): "
        + ", ".join(f"{r:.2f}" for r in pair_ratios)
    )
    print(
        f"  {'PASS' if ok_batch else 'MISS'}  durable batch / Pool chunksize=1:   "
        f"{durb:,.0f} / {pool:,.0f} = {vs_pool:.3f} (target >= {BATCH_TARGET}, "
        f"i.e. >= {BATCH_TARGET * pool:,.0f}/s here)"
    )
    print(
        f"  (info) durable batch vs the issue's reading (~{ISSUE_BATCH_RATE:,}/s, from a Pool of "
        f"24,000-29,000/s): {'above' if durb >= ISSUE_BATCH_RATE else 'below'}; "
        f"durable batch / in-memory batch: {durb / memb:.2f}"
    )
    rows_note = ", ".join(f"{k} {f[k].journal_rows}" for k in ("dur_one", "dur_batch"))
    print(
        f"task_record rows at the end ({rows_note}; the journal folds into the table once a "
        "second, so a run that just ended may not show every row yet). Journal appends are "
        "copies into a mapped log file (no system call); the broker's writes above are its "
        "socket sends; the folds' SQLite writes are the folder's, a child of the broker"
    )
    print(
        f"A throughput run ends at the first stats() poll (<= every {ours.POLL_S * 1000:.0f} ms)"
        " that sees every task finished. \"others' CPU\": the machine's CPU used by other "
        "people's processes during that figure; above ~10 % the figure is noisy."
    )
    return {
        "durable_over_memory_one": one,
        "durable_batch_over_pool": vs_pool,
        "pass_one": ok_one,
        "pass_batch": ok_batch,
        "durable_batch_over_issue_rate": durb / ISSUE_BATCH_RATE,
    }


# -- profiling ---------------------------------------------------------------------------------
@contextlib.contextmanager
def py_spy(out: Path, master: ours.Master) -> Iterator[None]:
    """``py-spy record`` on the master and its children while the block runs."""
    assert master.proc is not None
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(master.proc.pid),
        "--subprocesses",
        "--threads",
        "--gil",
        "--nonblocking",
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # it attaches to every process first; the master is idle meanwhile
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not out.exists():
            print(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}", file=sys.stderr)


def summarize(raw: Path, roles: dict[int, str], top: int = 12) -> None:
    """Samples per process and thread, and the broker's hottest frames (inclusive and self).

    Lines of py-spy's raw format: ``process A;process B;thread (tid): name;frame;... count``
    (a child's stacks sit under its parent's ``process`` frame)."""
    if not raw.exists():
        return
    per_proc: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    broker = next((pid for pid, role in roles.items() if role == "broker"), None)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, tail = line.rpartition(" ")
        if not stack or not tail.isdigit():
            continue
        count, parts = int(tail), stack.split(";")
        i = max((k for k, p in enumerate(parts) if p.startswith("process ")), default=-1)
        pid = int(parts[i].split()[1].split(":")[0]) if i >= 0 else 0
        rest = parts[i + 1 :]
        thread = rest[0].split(": ", 1)[-1] if rest and rest[0].startswith("thread") else "?"
        body = rest[1:] if rest and rest[0].startswith("thread") else rest
        per_proc[f"{roles.get(pid, 'other')} {pid}"] += count
        if pid != broker:
            continue
        threads[thread] += count
        for name in {f.split(" (")[0] for f in body}:
            frames[name] += count
        if body:
            leaves[body[-1]] += count
    total = sum(threads.values())
    print(f"  samples (holding the GIL) by process: {dict(per_proc.most_common())}")
    if not total:
        return
    print(f"  broker {broker}: {total} samples; by thread: {dict(threads.most_common(8))}")
    print("  broker functions, inclusive share of its samples:")
    for func, n in frames.most_common(top):
        print(f"    {100 * n / total:5.1f} %  {func}")
    print("  broker leaf lines (self):")
    for where, n in leaves.most_common(top):
        print(f"    {100 * n / total:5.1f} %  {where}")


def profile(out_dir: str, noop: int, batch: int) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, size in (("durable-one", 0), ("durable-batch", batch)):
        raw = out / f"{name}.txt"
        roles: dict[int, str] = {}

        @contextlib.contextmanager
        def spy(
            master: ours.Master, raw: Path = raw, roles: dict[int, str] = roles
        ) -> Iterator[None]:
            assert master.proc is not None
            roles[master.proc.pid] = "master"
            for w in (master.call("get_status").get("master") or {}).get("workers") or []:
                roles[int(w["pid"])] = "worker"
            broker = master.broker_pid()
            if broker is not None:
                roles[broker] = "broker"
            with py_spy(raw, master):
                yield

        step(f"py-spy: {name} x{noop}")
        t = ours.throughput(noop, durability="journal", profile=spy, batch=size)
        print(
            f"\nprofile {name}: {t.tasks_per_s:,.0f} tasks/s under py-spy (not a figure); "
            f"raw stacks in {raw}"
        )
        summarize(raw, roles)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = dict(QUICK if args.quick else FULL)
    if args.count:
        counts["noop"] = args.count
    info = machine.describe()
    print(
        f"machine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable), "
        f"{info['implementation']} {info['python']}, {info['platform']}, "
        f"load average at start {info['loadavg']}"
    )
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    for d in ours.DURABILITIES:
        cmd = ours.supervisor_command(
            "<tmp>/run", durability=d, database="sqlite:///<tmp>/bench.db"
        )
        print(f"supervisor: (cd {ROOT} && {shlex.join(cmd)})")
    started = time.perf_counter()
    if args.pairs:
        counts["pairs"] = args.pairs
    figures, others = measure(counts["noop"], args.batch, counts["latency"], counts["pairs"])
    verdict = report(figures, others, counts["noop"], args.batch)
    print(
        f"\nwall time {time.perf_counter() - started:.1f} s; "
        f"load average at end {machine.describe()['loadavg']}"
    )
    if args.json:

        def plain(v: Any) -> Any:
            if isinstance(v, ours.Throughput):
                return {
                    "tasks_per_s": v.tasks_per_s,
                    "elapsed_s": v.elapsed_s,
                    "push_s": v.push_s,
                    "durability": v.durability,
                    "push_p50_ms": percentile(v.push_call_ms, 50),
                    "push_p99_ms": percentile(v.push_call_ms, 99),
                    "journal_rows": v.journal_rows,
                    "stats_polls": v.stats.calls,
                    "cpu_s": v.cpu_s,
                    "stats_mean_ms": v.stats.mean_ms,
                }
            if isinstance(v, ours.Latency):
                return {
                    "push_p50_ms": percentile(v.push_ms, 50),
                    "push_p99_ms": percentile(v.push_ms, 99),
                    "start_p50_ms": percentile(v.start_ms, 50),
                    "start_p99_ms": percentile(v.start_ms, 99),
                }
            return v

        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "argv": sys.argv,
                    "counts": counts,
                    "batch": args.batch,
                    "figures": {k: plain(v) for k, v in figures.items()},
                    "others_cpu_share": others,
                    "targets": verdict,
                },
                indent=2,
            )
            + "\n"
        )
    if args.profile:
        profile(args.profile, counts["noop"], args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
