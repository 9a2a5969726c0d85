"""Resident memory and CPU time of the worker processes, read with psutil at scrape time.

``psutil.Process`` objects are cached by pid (making one reads /proc once more to pin the
process's identity); the cache keeps only the pids seen in the last scrape, so it stays as large
as the pool, whatever the number of restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class ProcSample:
    rss_bytes: int
    cpu_s: float  # user + system of the process itself


class ProcSampler:
    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pids: list[int]) -> dict[int, ProcSample]:
        """A sample per live pid of ``pids``; pids that are gone are left out."""
        out: dict[int, ProcSample] = {}
        keep: dict[int, psutil.Process] = {}
        for pid in pids:
            try:
                proc = self._procs.get(pid) or psutil.Process(pid)
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_times()
            except psutil.Error:
                continue
            keep[pid] = proc
            out[pid] = ProcSample(int(rss), float(cpu.user + cpu.system))
        self._procs = keep
        return out
