"""lspawn."""
