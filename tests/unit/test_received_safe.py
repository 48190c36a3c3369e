"""The Received line's field cleaning (net/peer.py safe): qmail's safe set, else '?'."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.net.peer import RECEIVED_OK, Client, received_line, safe


@given(st.text(max_size=40))
@settings(max_examples=300)
def test_each_character_outside_the_safe_set_becomes_one_question_mark(text: str) -> None:
    assert safe(text) == "".join(
        ch if ch.isascii() and ord(ch) in RECEIVED_OK else "?" for ch in text
    )


def test_received_line_cleans_helo_and_host() -> None:
    client = Client(remote_ip="192.0.2.1", remote_host="h\u00f6st.example", local_ip="127.0.0.1")
    line = received_line(client, b"evil (x)\nInjected: yes", 0.0)
    assert line.startswith(
        b"Received: from h?st.example (HELO evil??x??Injected:?yes) (192.0.2.1)\n"
        b"  by 127.0.0.1 with SMTP; "
    )
