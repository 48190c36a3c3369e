"""qmtpd: qmail-qmtpd and qmail-qmqpd."""
