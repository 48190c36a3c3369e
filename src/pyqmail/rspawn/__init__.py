"""rspawn."""
