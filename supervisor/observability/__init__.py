"""Observability: Prometheus metrics and the ``/metrics``, ``/livez``, ``/readyz`` endpoints.

Everything here runs in the broker process (which never forks), as a thread started by
:func:`supervisor.web.server.make_on_serve`: the master stays single-threaded. Metrics are
computed at scrape time from the broker's counters and stats, the master's published status and
the shared-memory scoreboard (see :mod:`supervisor.observability.collector`). The broker is read
through :class:`~supervisor.observability.view.BrokerView`, an interface, so that any broker
that can answer it in the serving process can host them.
"""
