"""The embedded Kafka-protocol broker for development and tests, and topic creation."""
