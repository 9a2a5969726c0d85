"""Observability: Prometheus metrics and the ``/metrics``, ``/livez``, ``/readyz`` endpoints.

Everything here runs in the process that serves a node's HTTP endpoints (the embedded broker's
process, or a Redis node's node process), as threads started by
:func:`supervisor.web.server.make_on_serve`: the master stays single-threaded. Metrics are
computed at scrape time from the broker's counters and stats, the master's published status
and the shared-memory scoreboard (see :mod:`supervisor.observability.collector`). The broker is
read through :class:`~supervisor.observability.view.BrokerView`, an interface, so that any
broker that can answer it in the serving process can host them.

Per-node families (:mod:`.node`, and the run-time histograms of :mod:`.collector`) carry a
``node`` label and come from every node; cluster-wide ones (:mod:`.cluster`, :mod:`.scheduler`,
:mod:`.ingest`) come from one node at a time, the exporter, so that ``sum()`` never counts them
twice.
"""
