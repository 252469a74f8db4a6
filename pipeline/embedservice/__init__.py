"""An embedding service shared across jobs and replicas: sharded lookups over Arrow Flight."""
