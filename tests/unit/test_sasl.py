"""SASL PLAIN and LOGIN exchanges (RFC 4616, RFC 4954) and RFC 2034 status codes."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.proto.smtp import auth as sasl
from pyqmail.proto.smtp.replies import Reply, with_status_code
from tests.strategies import some_bytes


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_with_initial_response() -> None:
    ex = sasl.SaslExchange(b"plain", b64(b"\0alice\0s3cret"))
    assert ex.start() == sasl.Credentials(b"alice", b"s3cret")


def test_plain_without_initial_response_gets_an_empty_challenge() -> None:
    ex = sasl.SaslExchange(b"PLAIN", None)
    assert ex.start() == sasl.Challenge("")
    assert ex.step(b64(b"alice\0alice\0pw")) == sasl.Credentials(b"alice", b"pw")


def test_plain_refuses_to_act_for_someone_else() -> None:
    ex = sasl.SaslExchange(b"PLAIN", b64(b"root\0alice\0pw"))
    assert ex.start() == sasl.Failed(sasl.REFUSED)


def test_login_asks_username_then_password() -> None:
    ex = sasl.SaslExchange(b"LOGIN", None)
    assert ex.start() == sasl.Challenge(b64(b"Username:").decode())
    assert ex.step(b64(b"alice")) == sasl.Challenge(b64(b"Password:").decode())
    assert ex.step(b64(b"s3cret")) == sasl.Credentials(b"alice", b"s3cret")


def test_login_with_initial_username() -> None:
    ex = sasl.SaslExchange(b"LOGIN", b64(b"alice"))
    assert ex.start() == sasl.Challenge(b64(b"Password:").decode())


def test_cancel_bad_base64_and_unknown_mechanism() -> None:
    assert sasl.SaslExchange(b"PLAIN", None).step(b"*") == sasl.Failed(sasl.CANCELLED)
    assert sasl.SaslExchange(b"PLAIN", b"!!!").start() == sasl.Failed(sasl.CANNOT_DECODE)
    cram = sasl.SaslExchange(b"CRAM-MD5", None).start()
    assert cram == sasl.Failed(sasl.UNKNOWN_MECHANISM)


def test_nul_inside_a_field_never_reaches_checkpassword() -> None:
    # fd 3 separates fields with NUL: "alice\0x" as a user would forge a password
    ex = sasl.SaslExchange(b"LOGIN", b64(b"alice\0x"))
    ex.start()
    assert ex.step(b64(b"pw")) == sasl.Failed(sasl.REFUSED)
    empty = sasl.SaslExchange(b"PLAIN", b64(b"\0\0pw"))
    assert empty.start() == sasl.Failed(sasl.REFUSED)


@given(st.sampled_from([b"PLAIN", b"LOGIN", b"X"]), some_bytes(300), some_bytes(500))
@settings(max_examples=300, deadline=None)
def test_any_input_gives_a_step_never_an_exception(mech: bytes, first: bytes, line: bytes) -> None:
    ex = sasl.SaslExchange(mech, first or None)
    steps = [ex.start(), ex.step(line), ex.step(b64(line))]
    for step in steps:
        assert isinstance(step, sasl.Challenge | sasl.Credentials | sasl.Failed)
        if isinstance(step, sasl.Credentials):
            assert b"\0" not in step.user + step.password
            assert 0 < len(step.user) <= sasl.MAX_USER_BYTES


def test_status_code_from_qmail_suffix_or_default() -> None:
    qmail = Reply(553, "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
    assert with_status_code(qmail).text == (
        "5.7.1 sorry, that domain isn't in my list of allowed rcpthosts"
    )
    assert with_status_code(Reply(250, "ok"), "2.1.5").text == "2.1.5 ok"
    assert with_status_code(Reply(250, "ok")).text == "2.0.0 ok"
    # a default of the wrong class is not believed
    assert with_status_code(Reply(451, "later"), "2.0.0").text == "4.0.0 later"


def test_status_code_on_every_line_and_never_on_3xx() -> None:
    multi = with_status_code(Reply(250, "one\ntwo (#2.0.0)"))
    assert multi.to_bytes() == b"250-2.0.0 one\r\n250 2.0.0 two\r\n"
    assert with_status_code(Reply(354, "go ahead")) == Reply(354, "go ahead")
    assert with_status_code(Reply(334, "")) == Reply(334, "")
