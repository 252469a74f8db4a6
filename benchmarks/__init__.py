"""Freshet's benchmarks: each prints and saves JSON and a PNG plot."""
