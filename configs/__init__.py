"""Pydantic models of Freshet's YAML configuration (the edge; the core gets dataclasses)."""
