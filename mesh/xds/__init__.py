"""Discovery: delta xDS (``DeltaAggregatedResources``) serving the dataplane view, and its trio client."""
