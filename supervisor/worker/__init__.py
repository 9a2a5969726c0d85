"""The worker: the forked child loop that takes a task, runs its handler and reports."""
