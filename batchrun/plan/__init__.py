"""Planning: from input rows to keyed, rendered requests."""
