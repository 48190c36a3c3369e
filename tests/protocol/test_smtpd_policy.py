"""qmail-smtpd's policy and session loop without sockets: an in-memory queue,
streams made of lists. Pins AUTH exposure, submission, SMTPUTF8 and the
rule that no byte sequence from a client crashes a session."""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.config import SmtpdConfig
from pyqmail.ipc.queue_proto import QueueResult
from pyqmail.net.peer import Client
from pyqmail.net.tls import ContextCache
from pyqmail.proto.smtp import server as eng
from pyqmail.proto.smtp.replies import Reply
from pyqmail.smtpd.policy import Service, SmtpPolicy
from pyqmail.smtpd.session import serve_smtp
from tests.strategies import some_bytes

CFG = SmtpdConfig(
    me="mx.example",
    greeting="mx.example",
    rcpthosts=frozenset({"mx.example"}),
    databytes=10_000,
    timeout=5,
    localiphost="mx.example",
    badmailfrom=frozenset(),
    maxrcpt=5,
    maxlinelength=512,
)


@dataclass
class MemorySubmission:
    queue: MemoryQueue
    data: bytearray = field(default_factory=bytearray)

    async def write(self, data: bytes) -> None:
        self.data += data

    async def finish(self, envelope_wire: bytes) -> QueueResult:
        self.queue.messages.append((bytes(self.data), envelope_wire))
        return QueueResult("K", "ok", len(self.queue.messages))

    def abort(self) -> None:
        pass


@dataclass
class MemoryQueue:
    messages: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def open(self) -> MemorySubmission:
        return MemorySubmission(self)


def policy(ip: str = "192.0.2.1", *, submission: bool = False) -> SmtpPolicy:
    return SmtpPolicy(CFG, Client(remote_ip=ip), MemoryQueue(), Service(submission=submission))


def decide(p: SmtpPolicy, event: object) -> Reply:
    reply = asyncio.run(p.decide(event))
    assert reply is not None
    return reply


def test_auth_is_never_offered_in_clear_text_to_remote_clients() -> None:
    remote = policy(submission=True)
    decide(remote, eng.Helo(b"c.example", True))
    assert not any(line.startswith("AUTH") for line in remote.ehlo_lines())
    assert decide(remote, eng.Auth(b"PLAIN", b"AGEAYg==")).code == 538  # RFC 4954 §4
    remote.tls_active = True  # as after a STARTTLS handshake
    assert "AUTH PLAIN LOGIN" in remote.ehlo_lines()
    local = policy("127.0.0.1", submission=True)
    assert "AUTH PLAIN LOGIN" in local.ehlo_lines()  # loopback: nobody on the wire


def test_auth_is_not_on_the_smtp_port_and_submission_needs_it() -> None:
    smtp = policy("127.0.0.1")
    assert decide(smtp, eng.Auth(b"PLAIN", None)).code == 502  # qmail-smtpd's answer
    sub = policy("127.0.0.1", submission=True)
    assert decide(sub, eng.Mail(b"a@b.example", ())).code == 530


def test_smtputf8_needed_for_non_ascii_addresses() -> None:
    p = policy()
    decide(p, eng.Helo(b"c.example", True))
    utf8 = "jöran@mx.example".encode()
    refused = decide(p, eng.Mail(utf8, ()))
    assert (refused.code, refused.text[:5]) == (553, "5.6.7")
    assert decide(p, eng.Mail(utf8, ((b"SMTPUTF8", None),))).code == 250
    assert decide(p, eng.Rcpt(utf8, ())).code == 250
    assert decide(p, eng.Mail(b"a@b.example", ())).code == 250
    assert decide(p, eng.Rcpt(utf8, ())).code == 553  # this transaction has no SMTPUTF8


def test_mail_and_rcpt_parameters() -> None:
    p = policy()
    assert decide(p, eng.Mail(b"a@b.example", ((b"BODY", b"BINARYMIME"),))).code == 501
    assert decide(p, eng.Mail(b"a@b.example", ((b"SIZE", b"20000"),))).code == 552
    assert decide(p, eng.Mail(b"a@b.example", ((b"AUTH", b"<>"),))).code == 250
    assert decide(p, eng.Rcpt(b"x@mx.example", ((b"NOTIFY", b"NEVER"),))).code == 555


def test_replies_after_helo_stay_qmails_words() -> None:
    p = policy()
    decide(p, eng.Helo(b"c.example", False))
    assert decide(p, eng.Rcpt(b"x@elsewhere.example", ())).text == (
        "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
    )


class ListReader:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def read(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class ListWriter:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None


REPLY_LINE = re.compile(rb"\A[2-5][0-9][0-9][ -][^\r\n]*\Z")
TOKENS = [
    b"EHLO x\r\n",
    b"HELO y\r\n",
    b"MAIL FROM:<a@b.example> SIZE=10\r\n",
    b"MAIL FROM:<j\xc3\xb6@b.example> SMTPUTF8\r\n",
    b"RCPT TO:<x@mx.example>\r\n",
    b"RCPT TO:<x@elsewhere.example>\r\n",
    b"DATA\r\n",
    b"BDAT 3 LAST\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"AUTH LOGIN\r\n",
    b"*\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b".\r\n",
    b"\r\n",
    b"\n",
    b"x" * 600,
    b"\x00\xff\r\n",
]


@given(
    st.lists(st.one_of(st.sampled_from(TOKENS), some_bytes(40)), max_size=30),
    st.integers(1, 64),
)
@settings(max_examples=150, deadline=None)
def test_no_input_crashes_a_session(tokens: list[bytes], size: int) -> None:
    wire = b"".join(tokens)
    chunks = [wire[i : i + size] for i in range(0, len(wire), size)]
    writer = ListWriter()
    p = SmtpPolicy(CFG, Client(remote_ip="192.0.2.1"), MemoryQueue(), Service(submission=True))
    asyncio.run(asyncio.wait_for(serve_smtp(ListReader(chunks), writer, p), 30))
    lines = bytes(writer.out).split(b"\r\n")
    assert lines[-1] == b""  # every reply is whole
    assert all(REPLY_LINE.match(line) for line in lines[:-1]), writer.out


_CERT_DIR = tempfile.mkdtemp(prefix="pyqmail-fuzz-")
atexit.register(shutil.rmtree, _CERT_DIR, True)
_CERT = os.path.join(_CERT_DIR, "servercert.pem")
trustme.CA().issue_cert("mx.example").private_key_and_cert_chain_pem.write_to_path(_CERT)
TLS_SERVICE = Service(submission=True, tls=ContextCache(_CERT))


@given(
    st.lists(st.one_of(st.sampled_from(TOKENS), some_bytes(40)), max_size=12),
    some_bytes(300),
    st.integers(1, 64),
)
@settings(max_examples=100, deadline=None)
def test_garbage_after_starttls_ends_the_session_cleanly(
    before: list[bytes], handshake: bytes, size: int
) -> None:
    # whatever follows "220 ready to start TLS" is fed to the TLS layer: a
    # broken handshake ends the session, it never raises out of it
    wire = b"".join(before) + b"STARTTLS\r\n" + handshake
    chunks = [wire[i : i + size] for i in range(0, len(wire), size)]
    writer = ListWriter()
    p = SmtpPolicy(CFG, Client(remote_ip="192.0.2.1"), MemoryQueue(), TLS_SERVICE)
    asyncio.run(asyncio.wait_for(serve_smtp(ListReader(chunks), writer, p), 30))
    plain, ready, _tls = bytes(writer.out).partition(b"220 ready to start TLS\r\n")
    lines = (plain + ready).split(b"\r\n")
    assert lines[-1] == b""
    assert all(REPLY_LINE.match(line) for line in lines[:-1]), writer.out


def test_morercpthosts_adds_to_rcpthosts(tmp_path: Path) -> None:
    from pyqmail.config import Home

    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_text("mx.example\n")
    (tmp_path / "control" / "morercpthosts").write_text("more.example\n")
    assert SmtpdConfig.load(Home(str(tmp_path))).rcpthosts is None  # qmail: needs rcpthosts
    (tmp_path / "control" / "rcpthosts").write_text("mx.example\n")
    p = SmtpPolicy(
        SmtpdConfig.load(Home(str(tmp_path))), Client(remote_ip="192.0.2.1"), MemoryQueue()
    )
    decide(p, eng.Mail(b"a@b.example", ()))
    assert decide(p, eng.Rcpt(b"x@more.example", ())).code == 250
    assert decide(p, eng.Rcpt(b"x@mx.example", ())).code == 250
    assert decide(p, eng.Rcpt(b"x@other.example", ())).code == 553


def test_starttls_forgets_helo_and_authentication(tmp_path: Path) -> None:
    import trustme

    pem = tmp_path / "servercert.pem"
    trustme.CA().issue_cert("mx.example").private_key_and_cert_chain_pem.write_to_path(str(pem))
    p = SmtpPolicy(
        CFG,
        Client(remote_ip="127.0.0.1"),
        MemoryQueue(),
        Service(submission=True, tls=ContextCache(str(pem))),
    )
    decide(p, eng.Helo(b"c.example", True))
    assert "STARTTLS" in p.ehlo_lines()
    p.auth_user = cast("bytes | None", b"alice")  # as after a 235
    assert decide(p, eng.StartTls()).code == 220
    assert (p.helo, p.esmtp, p.auth_user, p.tls_active) == (None, False, None, True)
    assert "STARTTLS" not in p.ehlo_lines()  # RFC 3207 §4.2


EHLO_WITHOUT_OPENSSL = """
import asyncio, sys
sys.modules["ssl"] = None  # as unix/notls.py starts smtpd: any import of ssl fails
from pyqmail.net.peer import Client
from pyqmail.net.tls import ContextCache
from pyqmail.proto.smtp import server as eng
from pyqmail.smtpd.policy import Service, SmtpPolicy
from pyqmail.config import SmtpdConfig

class NoQueue:
    async def open(self):
        raise OSError

cfg = SmtpdConfig(me="mx.example", greeting="mx.example", rcpthosts=None, databytes=0,
                  timeout=5, localiphost="mx.example", badmailfrom=frozenset())
service = Service(tls=ContextCache(sys.argv[1]))
p = SmtpPolicy(cfg, Client(remote_ip="192.0.2.1"), NoQueue(), service)
reply = asyncio.run(p.decide(eng.Helo(b"c.example", True)))
print(reply.code, "STARTTLS" in reply.text)
"""


def test_ehlo_without_a_certificate_never_loads_openssl(tmp_path: Path) -> None:
    # smtpd loads OpenSSL (~4.5 MB) at its first certificate, not at its first EHLO
    import subprocess
    import sys

    missing = str(tmp_path / "servercert.pem")
    res = subprocess.run(
        [sys.executable, "-c", EHLO_WITHOUT_OPENSSL, missing],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["250", "False"]
