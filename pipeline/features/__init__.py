"""From events to training batches: the feature spec, hashing, aggregates, the featurizer."""
