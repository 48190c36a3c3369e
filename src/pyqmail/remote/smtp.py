"""qmail-remote: one message, one domain, many recipients, over SMTP.

Runs as: qmailr (the invoking user in embedded mode), inside rspawn.
Reads:   the queued message; control/{helohost,smtproutes,timeoutconnect,
         timeoutremote,resolvers}.
Trusts:  nothing from the remote server: replies are parsed with bounded
         line length and count, and its text is cut before it reaches logs.
Standards: RFC 5321, 1870 (SIZE), 2920 (PIPELINING), 6152 (8BITMIME), 6531.

Result texts follow qmail-remote's reports (qmail-protocols §2.2), one per
recipient: K (accepted), Z (try again later) or D (give up).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import dns.asyncresolver

from pyqmail.config import RemoteConfig
from pyqmail.proto.smtp.client import (
    ReplyError,
    ReplyParser,
    ServerReply,
    dot_stuff,
    ehlo_keywords,
    path,
)
from pyqmail.remote.route import RouteError, Target, targets

SERVER_TEXT_LIMIT = 5000


@dataclass(frozen=True, slots=True)
class RemoteJob:
    message_path: str
    sender: bytes
    recipients: tuple[bytes, ...]
    domain: str


class Died(Exception):
    pass


def said(reply: ServerReply) -> bytes:
    text = reply.text[:SERVER_TEXT_LIMIT].replace(b"\r", b"").replace(b"\0", b"?")
    return b"Remote host said: " + text + b"\n"


class Session:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.parser = ReplyParser()
        self.pending: list[ServerReply] = []

    async def reply(self) -> ServerReply:
        while not self.pending:
            try:
                async with asyncio.timeout(self.timeout):
                    data = await self.reader.read(65536)
            except (TimeoutError, OSError) as exc:
                raise Died from exc
            if not data:
                raise Died
            try:
                self.pending.extend(self.parser.feed(data))
            except ReplyError as exc:
                raise Died from exc
        return self.pending.pop(0)

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except (TimeoutError, OSError) as exc:
            raise Died from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.write(b"QUIT\r\n")
        self.writer.close()


async def deliver(
    job: RemoteJob, cfg: RemoteConfig, res: dns.asyncresolver.Resolver
) -> list[bytes]:
    """Per-recipient reports, in job.recipients order."""
    n = len(job.recipients)
    try:
        with open(job.message_path, "rb") as fh:
            message = fh.read()
    except OSError:
        return [b"ZUnable to read message. (#4.3.0)"] * n
    if message and not message.endswith(b"\n"):
        return [b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)"] * n
    if not cfg.helohost:
        return [b"ZUnable to read control files. (#4.3.0)"] * n
    try:
        tlist = await targets(job.domain, cfg, res)
    except RouteError as exc:
        return [(exc.status + exc.text).encode()] * n
    for target in tlist:
        try:
            async with asyncio.timeout(cfg.timeoutconnect):
                reader, writer = await asyncio.open_connection(target.ip, target.port)
        except (OSError, TimeoutError):
            continue
        session = Session(reader, writer, cfg.timeoutremote)
        try:
            return await transaction(session, target, job, message, cfg)
        finally:
            session.close()
    return [b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)"] * n


async def transaction(
    s: Session, target: Target, job: RemoteJob, message: bytes, cfg: RemoteConfig
) -> list[bytes]:
    ip = target.ip.encode()
    n = len(job.recipients)
    after_dot = False
    try:
        greet = await s.reply()
        if greet.code != 220:
            return [b"ZConnected to " + ip + b" but greeting failed.\n" + said(greet)] * n
        await s.send(b"EHLO " + cfg.helohost.encode() + b"\r\n")
        hello = await s.reply()
        ext: dict[bytes, bytes] = {}
        if hello.code == 250:
            ext = ehlo_keywords(hello)
        else:
            await s.send(b"HELO " + cfg.helohost.encode() + b"\r\n")
            hello = await s.reply()
            if hello.code != 250:
                return [b"ZConnected to " + ip + b" but my name was rejected.\n" + said(hello)] * n
        params = b""
        if b"SIZE" in ext:
            params += b" SIZE=%d" % len(message)
        if b"8BITMIME" in ext and any(b > 127 for b in message):
            params += b" BODY=8BITMIME"
        addrs = (job.sender, *job.recipients)
        if b"SMTPUTF8" in ext and any(any(b > 127 for b in a) for a in addrs):
            params += b" SMTPUTF8"
        envelope = [b"MAIL FROM:" + path(job.sender) + params + b"\r\n"]
        envelope.extend(b"RCPT TO:" + path(r) + b"\r\n" for r in job.recipients)
        if b"PIPELINING" in ext:
            await s.send(b"".join(envelope))
            replies = [await s.reply() for _ in envelope]
        else:
            replies = []
            for cmd in envelope:
                await s.send(cmd)
                replies.append(await s.reply())
                if replies[0].code >= 300:
                    break
        mail = replies[0]
        if mail.code >= 300:
            status = b"D" if mail.kind == 5 else b"Z"
            return [
                status + b"Connected to " + ip + b" but sender was rejected.\n" + said(mail)
            ] * n
        results: list[bytes | None] = []
        for r in replies[1:]:
            if r.code < 300:
                results.append(None)
            else:
                status = b"D" if r.kind == 5 else b"Z"
                results.append(
                    status
                    + ip
                    + b" does not like recipient.\n"
                    + said(r)
                    + b"Giving up on "
                    + ip
                    + b".\n"
                )
        if all(r is not None for r in results):
            return [r for r in results if r is not None]
        await s.send(b"DATA\r\n")
        data_reply = await s.reply()
        if data_reply.code >= 400:
            status = b"D" if data_reply.kind == 5 else b"Z"
            text = status + ip + b" failed on DATA command.\n" + said(data_reply)
            return [r if r is not None else text for r in results]
        await s.send(dot_stuff(message))
        after_dot = True
        final = await s.reply()
        if final.code >= 300:
            status = b"D" if final.kind == 5 else b"Z"
            text = status + ip + b" failed after I sent the message.\n" + said(final)
        else:
            text = b"K" + ip + b" accepted message.\n" + said(final)
        return [r if r is not None else text for r in results]
    except Died:
        died = b"ZConnected to " + ip + b" but connection died."
        if after_dot:
            died += b" Possible duplicate!"
        return [died + b" (#4.4.2)\n"] * n
