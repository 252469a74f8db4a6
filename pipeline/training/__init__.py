"""Training: models, the online trainer, the one job loop for 1..N ranks, launch, metrics."""
