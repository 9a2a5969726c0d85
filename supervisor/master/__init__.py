"""The master: forks, watches and replaces the workers and the broker and scheduler processes.

- ``arbiter``: :class:`Master`, the loop and its named steps, the signal handler table.
- ``pool``: :class:`WorkerPool`, stable slots 0..N-1: fork, kill, reap, release, scale, replace.
- ``watchdog``: hard deadlines, silent heartbeats, memory limits, cancels: who must die.
- ``exits``: what a reaped worker's wait status means (pure).
- ``shutdown``: the state machine running → draining → stopping → stopped.
- ``status``: housekeeping calls and the status document the master gives its broker.
- ``children``: the workers and the scheduler process, built from the settings (pre-fork).
- ``signals``: handlers that only record; the self-pipe the loop waits on.
- ``scoreboard``: the shared memory the workers stamp and the master reads.
- ``scheduler_handle``, ``runfiles``: the scheduler child's handle; the run folder.
"""
