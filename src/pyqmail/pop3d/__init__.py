"""POP3: qmail-popup, qmail-pop3d and the built-in --pop3 listener."""
