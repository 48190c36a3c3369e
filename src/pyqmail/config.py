"""control/ -> one frozen dataclass per component.

Every component reads its settings here and nowhere else. A control file
that exists but cannot be read is an error (qmail-files §2); a missing one
gives qmail's default.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from pyqmail.formats import control
from pyqmail.formats.tlspolicy import TlsPolicy, parse_tlsdestinations

SPLIT = 23  # conf-split: subdirectories of mess/, info/, local/, remote/
DEFAULT_HOME = "/var/qmail"


@dataclass(frozen=True, slots=True)
class Home:
    """Paths inside a qmail home directory."""

    root: str

    @classmethod
    def from_env(cls, home: str | None = None) -> Home:
        return cls(os.path.abspath(home or os.environ.get("QMAILHOME") or DEFAULT_HOME))

    def control(self, name: str) -> str:
        return os.path.join(self.root, "control", name)

    @property
    def queue(self) -> str:
        return os.path.join(self.root, "queue")

    # "/".join, not os.path.join: these run several times a message in
    # every queue component, the parts are our own relative names, and root
    # is absolute (from_env) with no trailing slash ("/" gives "//queue")
    def q(self, *parts: str) -> str:
        return "/".join((self.root, "queue", *parts))

    def split_path(self, kind: str, msg_id: int) -> str:
        return f"{self.root}/queue/{kind}/{msg_id % SPLIT}/{msg_id}"

    @property
    def writer_socket(self) -> str:
        return self.q("lock", "queue.sock")

    @property
    def trigger(self) -> str:
        return self.q("lock", "trigger")

    def socket(self, component: str) -> str:
        return self.q("lock", f"{component}.sock")

    @property
    def assign(self) -> str:
        return os.path.join(self.root, "users", "assign")

    @property
    def users_cdb(self) -> str:
        return os.path.join(self.root, "users", "cdb")


def read_control(home: Home, name: str) -> str | None:
    """The file's text, or None when it does not exist (any other error raises)."""
    try:
        with open(home.control(name), encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read(1 << 22)
    except FileNotFoundError:
        return None


def _me(home: Home) -> str | None:
    return control.parse_line(read_control(home, "me"), None)


def _line_or_me(home: Home, name: str, fallback: str) -> str:
    value = control.parse_line(read_control(home, name), None)
    if value:
        return value
    return _me(home) or fallback


@dataclass(frozen=True, slots=True)
class SmtpdConfig:
    me: str
    greeting: str
    rcpthosts: frozenset[str] | None  # None: no file, no relay control (qmail)
    databytes: int
    timeout: int
    localiphost: str
    badmailfrom: frozenset[str]
    # pyqmail's additions (README, control files); defaults are the safe ones.
    maxrcpt: int = 100  # RFC 5321 §4.5.3.1.8: at least 100 must be accepted
    maxlinelength: int = 2048  # bytes in a command line, CRLF included
    maxconnections: int = 500  # built-in listener, all clients together
    maxconnectionsperip: int = 20
    timeoutsmtpdsession: int = 3600  # seconds for a whole session
    rcptcheck: bool = True  # refuse unknown local recipients at RCPT
    checkpassword: tuple[str, ...] = ()  # AUTH checker command line; () = the default
    servercert: str | None = None  # path of control/servercert.pem (STARTTLS when it exists)
    serverkey: str | None = None  # control/serverkey.pem when present (else in servercert)

    @classmethod
    def load(cls, home: Home) -> SmtpdConfig:
        me = _me(home) or ""
        rcpt_text = read_control(home, "rcpthosts")
        # qmail: morercpthosts (its cdb, read here as text) only adds to an
        # existing rcpthosts; without rcpthosts there is no relay control
        more = control.parse_list(read_control(home, "morercpthosts"))
        rcpthosts = (
            None
            if rcpt_text is None
            else frozenset(h.lower() for h in [*control.parse_list(rcpt_text), *more])
        )
        return cls(
            me=me,
            greeting=control.parse_line(read_control(home, "smtpgreeting"), None) or me,
            rcpthosts=rcpthosts,
            databytes=control.parse_int(read_control(home, "databytes"), 0),
            timeout=max(1, control.parse_int(read_control(home, "timeoutsmtpd"), 1200)),
            localiphost=_line_or_me(home, "localiphost", "localiphost"),
            badmailfrom=frozenset(
                b.lower() for b in control.parse_list(read_control(home, "badmailfrom"))
            ),
            **_smtpd_additions(home),
        )


def _smtpd_additions(home: Home) -> dict[str, Any]:
    def num(name: str, default: int, lo: int) -> int:
        return max(lo, control.parse_int(read_control(home, name), default))

    checker = control.parse_line(read_control(home, "checkpassword"), None)
    try:
        command = tuple(shlex.split(checker)) if checker else ()
    except ValueError as exc:
        raise control.ControlError(home.control("checkpassword"), 1, str(exc)) from None
    cert, key = home.control("servercert.pem"), home.control("serverkey.pem")
    return {
        "maxrcpt": num("maxrcpt", 100, 1),
        "maxlinelength": num("maxlinelength", 2048, 512),  # RFC 5321 §4.5.3.1.4
        "maxconnections": num("maxconnections", 500, 1),
        "maxconnectionsperip": num("maxconnectionsperip", 20, 1),
        "timeoutsmtpdsession": num("timeoutsmtpdsession", 3600, 1),
        "rcptcheck": control.parse_int(read_control(home, "rcptcheck"), 1) != 0,
        "checkpassword": command,
        "servercert": cert,
        "serverkey": key if os.path.exists(key) else None,
    }


BOUNCE_FORMATS = ("qsbmf", "dsn")


def _bounceformat(home: Home) -> str:
    value = (control.parse_line(read_control(home, "bounceformat"), None) or "qsbmf").lower()
    if value not in BOUNCE_FORMATS:
        raise control.ControlError(
            home.control("bounceformat"), 1, f"{value!r} is not one of {', '.join(BOUNCE_FORMATS)}"
        )
    return value


def apply_syncmode(home: Home) -> None:
    """control/syncmode: how this process's group commits reach the disk."""
    from pyqmail.unix import durable

    value = control.parse_line(read_control(home, "syncmode"), None) or "syncfs"
    if value not in durable.MODES:
        raise control.ControlError(
            home.control("syncmode"), 1, f"{value!r} is not one of {', '.join(durable.MODES)}"
        )
    durable.set_mode(value)


@dataclass(frozen=True, slots=True)
class SendConfig:
    me: str
    locals: frozenset[str]
    percenthack: frozenset[str]
    virtualdomains: dict[str, str]
    envnoathost: str
    bouncefrom: str
    bouncehost: str
    doublebounceto: str
    doublebouncehost: str
    concurrencylocal: int
    concurrencyremote: int
    queuelifetime: int
    remote_batch: int = field(default=50)
    retryunit_ms: int = field(default=1000)
    bounceformat: str = field(default="qsbmf")
    bouncemaxbytes: int = field(default=0)  # 0: the whole original, as qmail

    @classmethod
    def load(cls, home: Home) -> SendConfig:
        me = _me(home)
        locals_text = read_control(home, "locals")
        if locals_text is None:
            if not me:
                raise control.ControlError(home.control("locals"), 0, "neither locals nor me")
            locals_ = frozenset([me.lower()])
        else:
            locals_ = frozenset(x.lower() for x in control.parse_list(locals_text))
        bouncefrom = control.parse_line(read_control(home, "bouncefrom"), None)
        dbto = control.parse_line(read_control(home, "doublebounceto"), None)
        return cls(
            me=me or "",
            locals=locals_,
            percenthack=frozenset(
                x.lower() for x in control.parse_list(read_control(home, "percenthack"))
            ),
            virtualdomains=control.parse_colon_map(read_control(home, "virtualdomains")),
            envnoathost=_line_or_me(home, "envnoathost", "envnoathost"),
            bouncefrom=bouncefrom or "MAILER-DAEMON",
            bouncehost=_line_or_me(home, "bouncehost", "bouncehost"),
            doublebounceto=dbto or "postmaster",
            doublebouncehost=_line_or_me(home, "doublebouncehost", "doublebouncehost"),
            concurrencylocal=min(
                120, control.parse_int(read_control(home, "concurrencylocal"), 10)
            ),
            concurrencyremote=min(
                120, control.parse_int(read_control(home, "concurrencyremote"), 20)
            ),
            queuelifetime=control.parse_int(read_control(home, "queuelifetime"), 604800),
            remote_batch=max(1, control.parse_int(read_control(home, "remotebatch"), 50)),
            retryunit_ms=max(1, control.parse_int(read_control(home, "retryunit"), 1000)),
            bounceformat=_bounceformat(home),
            bouncemaxbytes=control.parse_int(read_control(home, "bouncemaxbytes"), 0),
        )


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    helohost: str
    smtproutes: dict[str, str]
    timeoutconnect: int
    timeoutremote: int
    resolvers: tuple[str, ...]
    me: str = ""
    smtpport: int = 25
    outgoingip: tuple[control.IPNetwork, ...] = ()
    tlsdestinations: dict[str, TlsPolicy] = field(default_factory=dict)
    clientcert: str | None = None
    remoteidletime: int = 10
    remoteidlemax: int = 40
    timeoutdns: int = 30
    moreipme: tuple[control.IPNetwork, ...] = ()
    notipme: tuple[control.IPNetwork, ...] = ()

    @classmethod
    def load(cls, home: Home) -> RemoteConfig:
        clientcert = home.control("clientcert.pem")
        return cls(
            helohost=_line_or_me(home, "helohost", ""),
            smtproutes=control.parse_colon_map(read_control(home, "smtproutes")),
            timeoutconnect=control.parse_int(read_control(home, "timeoutconnect"), 60),
            timeoutremote=control.parse_int(read_control(home, "timeoutremote"), 1200),
            resolvers=tuple(control.parse_list(read_control(home, "resolvers"))),
            me=_me(home) or "",
            smtpport=control.parse_int(read_control(home, "smtpport"), 25),
            outgoingip=control.parse_networks(
                read_control(home, "outgoingip"), path=home.control("outgoingip")
            ),
            tlsdestinations=parse_tlsdestinations(
                read_control(home, "tlsdestinations"), path=home.control("tlsdestinations")
            ),
            clientcert=clientcert if os.path.exists(clientcert) else None,
            remoteidletime=control.parse_int(read_control(home, "remoteidletime"), 10),
            remoteidlemax=control.parse_int(read_control(home, "remoteidlemax"), 40),
            timeoutdns=max(1, control.parse_int(read_control(home, "timeoutdns"), 30)),
            moreipme=control.parse_networks(
                read_control(home, "moreipme"), path=home.control("moreipme")
            ),
            notipme=control.parse_networks(
                read_control(home, "notipme"), path=home.control("notipme")
            ),
        )


@dataclass(frozen=True, slots=True)
class InjectConfig:
    """qmail-inject's controls: each defaults to me, else to its own name."""

    defaultdomain: str
    defaulthost: str
    plusdomain: str
    idhost: str

    @classmethod
    def load(cls, home: Home) -> InjectConfig:
        return cls(
            defaultdomain=_line_or_me(home, "defaultdomain", "defaultdomain"),
            defaulthost=_line_or_me(home, "defaulthost", "defaulthost"),
            plusdomain=_line_or_me(home, "plusdomain", "plusdomain"),
            idhost=_line_or_me(home, "idhost", "idhost"),
        )


QMQP_PORT = 628


def parse_server(entry: str, default_port: int) -> tuple[str, int] | None:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; None when the line is not one."""
    import ipaddress

    host, port = entry, default_port
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif entry.count(":") == 1:
        host, _, p = entry.partition(":")
        if not p.isdigit():
            return None
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None


@dataclass(frozen=True, slots=True)
class QmqpcConfig:
    """qmail-qmqpc and mini mode: the QMQP servers, tried in order."""

    servers: tuple[tuple[str, int], ...]

    @classmethod
    def load(cls, home: Home) -> QmqpcConfig:
        path = home.control("qmqpservers")
        servers = []
        for number, line in enumerate((read_control(home, "qmqpservers") or "").split("\n"), 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            server = parse_server(entry, QMQP_PORT)
            if server is None:
                raise control.ControlError(path, number, f"{entry!r} is not IP or IP:PORT")
            servers.append(server)
        return cls(tuple(servers))


@dataclass(frozen=True, slots=True)
class QmtpConfig:
    """The QMTP client: control/qmtproutes (``domain:relay[:port]``, as smtproutes)."""

    qmtproutes: dict[str, str]

    @classmethod
    def load(cls, home: Home) -> QmtpConfig:
        return cls(control.parse_colon_map(read_control(home, "qmtproutes")))


@dataclass(frozen=True, slots=True)
class Pop3Config:
    me: str  # qmail-popup's HOSTNAME: the greeting's timestamp ends in it
    timeout: int  # qmail-popup and qmail-pop3d: 20 minutes
    servercert: str  # control/servercert.pem: STLS is offered when it exists
    serverkey: str  # control/serverkey.pem: the key, when not in servercert.pem

    @classmethod
    def load(cls, home: Home) -> Pop3Config:
        return cls(
            me=_me(home) or "localhost",
            timeout=max(1, control.parse_int(read_control(home, "timeoutpop3d"), 1200)),
            servercert=home.control("servercert.pem"),
            serverkey=home.control("serverkey.pem"),
        )
