"""The HTTP endpoints: /metrics, /livez, /readyz and the JSON API (described by openapi.json).

``server`` wires the endpoints; ``httpd`` and ``handler`` are the bounded HTTP server (limits,
read deadlines, JSON errors); ``api`` the JSON API without HTTP; ``since`` the ``since=`` forms
shared with the CLI; ``schedules`` reads /api/schedules. All run as threads of the broker process.
"""
