"""Observability: /healthz /readyz /metrics, the control socket, live trace, status text."""
