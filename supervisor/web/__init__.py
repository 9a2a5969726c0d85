"""The HTTP endpoints: /metrics, /livez, /readyz and the JSON API (described by openapi.json)."""
