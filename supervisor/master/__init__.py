"""The master: forks, watches and replaces the workers and the broker and scheduler processes."""
