"""Clients of a broker: the typed proxy, run-folder discovery, the seed's Queue API."""
