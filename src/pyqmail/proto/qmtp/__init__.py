"""QMTP and QMQP: netstring protocols, sans-IO (qmail-protocols §7)."""
