"""Model versions out: deltas, their Kafka chunks, snapshots, the publisher and its operator."""
