"""One SMTP session: the engine, the policy and two streams, wired together.

The same loop serves the built-in listener and qmail-smtpd on fd 0/1 under
tcpserver. Replies to pipelined commands are collected as they are decided
and written together when the engine needs more input (RFC 2920). After a 220 to
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


class ClientClock:
    """The client's two time limits, kept by one timer for the whole session.

    A timer per read (asyncio.timeout) is armed, rescheduled and cancelled
    for every command; this one is re-armed only when it goes off, so a
    busy session costs two attribute writes per read. Only a wait for the
    client is ever cut short: the timer cancels the session task if, and
    only if, it is inside read().
    """

    def __init__(self, idle: float, session: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.idle = idle
        self.deadline = self.loop.time() + session
        self.reading_since: float | None = None
        self.expired: Reply | None = None
        self._timer = self.loop.call_at(self._next_check(self.loop.time()), self._check)

    def _next_check(self, now: float) -> float:
        if self.reading_since is not None:
            return min(self.reading_since + self.idle, self.deadline)
        # not reading: never sooner than the earliest a read could expire
        # (it cannot start before now), and never a busy loop
        idle = max(self.idle, 1.0)
        if self.deadline > now:
            return min(now + idle, self.deadline)
        return now + idle  # a read starting after the deadline fails at once

    def _check(self) -> None:
        now = self.loop.time()
        due = self._next_check(now)
        if self.reading_since is not None and now >= due:
            late = self.deadline <= self.reading_since + self.idle
            self.expired = SESSION_TOO_LONG if late else replies.TIMEOUT
            self.task.cancel()
            return
        self._timer = self.loop.call_at(due, self._check)

    async def read(self, reader: Reader) -> bytes | Reply:
        """The client's next bytes, or the reply that says it took too long."""
        now = self.loop.time()
        if now >= self.deadline:
            return SESSION_TOO_LONG
        self.reading_since = now
        try:
            return await reader.read(READ_BYTES)
        except asyncio.CancelledError:
            if self.expired is None or self.task.uncancel():
                raise
            return self.expired
        finally:
            self.reading_since = None

    def stop(self) -> None:
        self._timer.cancel()


async def serve_smtp(reader: Reader, writer: Writer, policy: SmtpPolicy) -> None:
    """Serve one client until QUIT, EOF, an error, or a time limit.

    control/timeoutsmtpd bounds each wait for the client (qmail's 451
    timeout); control/timeoutsmtpdsession bounds the whole session (421).
    Replies wait in `out` until the engine needs input: the replies to a
    pipelined MAIL, RCPT and DATA leave in one write.
    """
    conn = eng.SMTPServer(policy.limits())
    idle = float(policy.cfg.timeout)
    clock = ClientClock(idle, policy.cfg.timeoutsmtpdsession)
    out: list[bytes] = []
    try:
        out.append(conn.send(policy.greeting()))
        while not conn.closed:
            try:
                event = conn.next_event()
            except eng.RemoteProtocolError as exc:
                if exc.reply is not None:
                    out.append(exc.reply.to_bytes())
                break
            if event is eng.NEED_DATA:
                if out:  # nothing written, nothing to drain (body chunks come this way)
                    writer.write(out[0] if len(out) == 1 else b"".join(out))
                    out.clear()
                    await writer.drain()
                data = await clock.read(reader)
                if isinstance(data, Reply):
                    out.append(data.to_bytes())
                    break
                conn.receive_data(data)
                continue
            if isinstance(event, eng.ConnectionClosed):
                await policy.decide(event)
                break
            reply = await policy.decide(event)
            if reply is not None:
                out.append(conn.send(reply))
                if isinstance(event, eng.StartTls) and reply.code == 220:
                    assert policy.tls_context is not None  # the policy said 220
                    writer.write(b"".join(out))
                    out.clear()
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
            if out:
                writer.write(b"".join(out))
            await writer.drain()
    except (ConnectionError, OSError, TlsError):
        with contextlib.suppress(ConnectionError, OSError, TlsError):
            if out:  # what was decided before the failure, if the client can still get it
                writer.write(b"".join(out))
    finally:
        clock.stop()
        policy.reset()
        with contextlib.suppress(OSError):
            writer.close()
