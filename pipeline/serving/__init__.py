"""Inference replicas: the serving model, delta following, the HTTP API and its metrics."""
