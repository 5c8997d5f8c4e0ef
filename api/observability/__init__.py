"""Observability: Prometheus metrics, structured (JSON) logs and the request id that ties an
HTTP request to the worker's log lines for the erasure request it filed."""
