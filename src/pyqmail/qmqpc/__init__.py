"""qmqpc: qmail-qmqpc, and the mini-qmail node's QMQP forwarder."""
