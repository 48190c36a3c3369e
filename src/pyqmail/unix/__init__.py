"""unix."""
