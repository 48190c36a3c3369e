"""POP3 (RFC 1939, 2449, 2595), sans-IO: the server engine and byte-stuffing."""
