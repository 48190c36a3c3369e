"""qmail-inject and sendmail: local mail submission."""
