"""The JSON HTTP API served beside /metrics (see :mod:`supervisor.api.routes`)."""
