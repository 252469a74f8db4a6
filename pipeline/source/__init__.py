"""Events in: the Kafka source, its process and wire, the record reader, consumer lag."""
