"""Freshet's streaming side: Kafka sources, features, trainers, publisher, replicas and the CLI."""
