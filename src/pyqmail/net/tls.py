"""TLS over any byte stream: ssl.MemoryBIO between a reader/writer pair.

One implementation for every transport: asyncio sockets of the built-in
listener, fd 0/1 of qmail-smtpd under tcpserver, where no socket object
exists to wrap, and the client side of rspawn's STARTTLS (so rspawn, like
smtpd, needs no TLS in its event loop and loads OpenSSL only when a remote
first offers STARTTLS). The ssl module does the cryptography; this only moves
bytes between the two memory BIOs and the plaintext transport.

Loading control/servercert.pem (certificate chain and key in one file, as
the qmail TLS patches have it) is here too, cached on the file's mtime so a
renewed certificate is picked up by the next connection.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pyqmail.net.streams import READ_BYTES, Reader, Writer

if TYPE_CHECKING:
    import ssl

# ssl is imported in each function that uses it (after the first, a dict
# lookup): smtpd starts without OpenSSL (unix/notls.py) and loads it at the
# first STARTTLS, or the first certificate check

MAX_TLS_WRITE = 16384  # one TLS record's worth of plaintext per write() call


class TlsError(Exception):
    """The handshake failed or the peer broke the TLS layer."""


def server_context(cert_path: str, key_path: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context; raises OSError or ssl.SSLError for a bad file."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class ContextCache:
    """server_context() for one certificate file, re-read when it changes."""

    def __init__(self, cert_path: str | None, key_path: str | None = None) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._stamp: tuple[int, int, int] | None = None
        self._ctx: ssl.SSLContext | None = None

    def get(self) -> ssl.SSLContext | None:
        """The context, or None without a certificate (STARTTLS not offered)."""
        if self.cert_path is None:
            return None
        try:
            st = os.stat(self.cert_path)
            key_mtime = os.stat(self.key_path).st_mtime_ns if self.key_path else 0
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, key_mtime)
        if stamp != self._stamp:
            self._ctx = server_context(self.cert_path, self.key_path)
            self._stamp = stamp
        return self._ctx


class TlsStream:
    """Reader and Writer in one: plaintext in and out, TLS records underneath."""

    def __init__(
        self,
        reader: Reader,
        writer: Writer,
        ctx: ssl.SSLContext,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        import ssl

        self._reader = reader
        self._writer = writer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname
        )
        self._eof = False

    @classmethod
    async def accept(cls, reader: Reader, writer: Writer, ctx: ssl.SSLContext) -> TlsStream:
        """Run the server handshake; raises TlsError (the caller then hangs up)."""
        stream = cls(reader, writer, ctx)
        await stream._handshake()
        return stream

    @classmethod
    async def connect(
        cls, reader: Reader, writer: Writer, ctx: ssl.SSLContext, server_hostname: str | None
    ) -> TlsStream:
        """Run the client handshake (the context decides what is verified);
        raises TlsError with the ssl error as its cause."""
        stream = cls(reader, writer, ctx, server_side=False, server_hostname=server_hostname)
        await stream._handshake()
        return stream

    async def _handshake(self) -> None:
        import ssl

        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise TlsError("peer closed during the TLS handshake") from None
            except ssl.SSLError as exc:
                await self._flush()  # let the peer see our alert
                raise TlsError(f"TLS handshake failed: {exc.reason or exc}") from exc
        await self._flush()

    @property
    def version(self) -> str | None:
        return self._obj.version()

    @property
    def cipher(self) -> str | None:
        got = self._obj.cipher()
        return got[0] if got else None

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _fill(self) -> bool:
        """Move one read of TLS records into the BIO; False at EOF."""
        if self._eof:
            return False
        data = await self._reader.read(READ_BYTES)
        if not data:
            self._eof = True
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def read(self, n: int) -> bytes:
        """Plaintext, b"" at EOF (close_notify or a bare close). Raises TlsError."""
        import ssl

        while True:
            try:
                return self._obj.read(n)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    # a peer that closes without close_notify: EOF all the same,
                    # SMTP's own QUIT/dot framing catches truncation
                    return b""
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLEOFError:
                return b""
            except ssl.SSLError as exc:
                raise TlsError(f"TLS error: {exc.reason or exc}") from exc

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), MAX_TLS_WRITE):
            self._obj.write(view[start : start + MAX_TLS_WRITE])
        out = self._out.read()
        if out:
            self._writer.write(out)

    async def drain(self) -> None:
        await self._flush()
        await self._writer.drain()

    def close(self) -> None:
        import ssl

        try:
            self._obj.unwrap()  # queue our close_notify
        except ssl.SSLError:
            pass
        out = self._out.read()
        if out:
            try:
                self._writer.write(out)
            except OSError:
                pass
        self._writer.close()
