"""Checkpoints: chains of full and incremental checkpoints, their format, restore, N ranks."""
