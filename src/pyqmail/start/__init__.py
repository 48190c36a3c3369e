"""start: the supervisor."""
