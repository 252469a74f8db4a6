"""Kafka connectivity: the embedded dev broker, topic creation, client security options."""
