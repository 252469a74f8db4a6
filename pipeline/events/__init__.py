"""Events: the built-in kinds, file formats, synthetic generators, replay into Kafka."""
