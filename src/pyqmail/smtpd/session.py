"""One SMTP session: the engine, the policy and two streams, wired together.

The same loop serves the built-in listener and qmail-smtpd on fd 0/1 under
tcpserver. Replies to pipelined commands are written as they are decided
and flushed when the engine needs more input (RFC 2920). After a 220 to
STARTTLS the two streams are swapped for a TLS layer over them; the engine
has already dropped whatever plaintext was pipelined behind STARTTLS, and
plaintext still in flight is fed to the TLS layer, where it can only break
the handshake, never be read as a command.
"""

from __future__ import annotations

import asyncio
import contextlib

from pyqmail.net.streams import READ_BYTES, Reader, Writer
from pyqmail.net.tls import TlsError, TlsStream
from pyqmail.proto.smtp import replies
from pyqmail.proto.smtp import server as eng
from pyqmail.proto.smtp.replies import Reply
from pyqmail.smtpd.policy import SmtpPolicy
from pyqmail.unix.logfmt import clean, log

SESSION_TOO_LONG = Reply(421, "session time limit exceeded, closing connection (#4.4.2)")


async def serve_smtp(reader: Reader, writer: Writer, policy: SmtpPolicy) -> None:
    """Serve one client until QUIT, EOF, an error, or a time limit.

    control/timeoutsmtpd bounds each wait for the client (qmail's 451
    timeout); control/timeoutsmtpdsession bounds the whole session (421).
    """
    conn = eng.SMTPServer(policy.limits())
    loop = asyncio.get_running_loop()
    idle = float(policy.cfg.timeout)
    deadline = loop.time() + policy.cfg.timeoutsmtpdsession
    try:
        writer.write(conn.send(policy.greeting()))
        while not conn.closed:
            try:
                event = conn.next_event()
            except eng.RemoteProtocolError as exc:
                if exc.reply is not None:
                    writer.write(exc.reply.to_bytes())
                break
            if event is eng.NEED_DATA:
                await writer.drain()
                left = deadline - loop.time()
                try:
                    async with asyncio.timeout(min(idle, left)):
                        data = await reader.read(READ_BYTES)
                except TimeoutError:
                    late = left <= idle
                    writer.write((SESSION_TOO_LONG if late else replies.TIMEOUT).to_bytes())
                    break
                conn.receive_data(data)
                continue
            if isinstance(event, eng.ConnectionClosed):
                await policy.decide(event)
                break
            reply = await policy.decide(event)
            if reply is not None:
                writer.write(conn.send(reply))
                if isinstance(event, eng.StartTls) and reply.code == 220:
                    assert policy.tls_context is not None  # the policy said 220
                    await writer.drain()
                    try:
                        async with asyncio.timeout(idle):
                            tls = await TlsStream.accept(reader, writer, policy.tls_context)
                    except (TlsError, TimeoutError) as exc:
                        why = clean(str(exc)) or "TLS handshake timed out"
                        log(f"warning: smtpd {policy.client.remote_ip}: {why}")
                        break
                    reader = writer = tls
        with contextlib.suppress(OSError):
            await writer.drain()
    except (ConnectionError, OSError, TlsError):
        pass
    finally:
        policy.reset()
        with contextlib.suppress(OSError):
            writer.close()
