"""Scheduled maintenance operators (tier migration, checkpoints, expiry, publishing)."""
