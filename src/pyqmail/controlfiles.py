"""Every control file pyqmail knows: its format, default, meaning and validator.

The one table behind ``pyqmail check`` (each problem as ``file:line: why``)
and ``qmail-showctl`` (each file's value or default, in qmail-showctl's
words). A new control file gets a row here and in the README's table.

Pure apart from ``check_controls`` and ``describe``, which read control/.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from pyqmail.config import BOUNCE_FORMATS, QMQP_PORT, Home, parse_server, read_control
from pyqmail.formats import control
from pyqmail.formats.control import ControlError
from pyqmail.formats.tcprules import parse_rules
from pyqmail.formats.tlspolicy import parse_tlsdestinations
from pyqmail.unix.durable import MODES as SYNC_MODES

LineCheck = Callable[[str], str | None]  # one line -> why it is wrong, or None


def _host(line: str) -> str | None:
    if line.startswith("[") and line.endswith("]"):
        return None
    if not line or any(c.isspace() or c in "@:/\\,;<>()\"'" or ord(c) < 32 for c in line):
        return f"{line!r} is not a host name"
    return None


def _host_or_suffix(line: str) -> str | None:
    return _host(line[1:] if line.startswith(".") else line)


def _local_part(line: str) -> str | None:
    if not line or any(c.isspace() or c == "@" or ord(c) < 32 for c in line):
        return f"{line!r} is not a local part (no '@', no blanks)"
    return None


def _no_blanks(line: str) -> str | None:
    if any(c.isspace() for c in line):
        return f"{line!r} contains a blank"
    return None


def _text(line: str) -> str | None:
    return None


def _port(text: str) -> str | None:
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        return f"{text!r} is not a port number"
    return None


def _smtproute(line: str) -> str | None:
    domain, sep, relay = line.partition(":")
    if not sep:
        return "needs 'domain:relay[:port]' (a line without ':' is ignored)"
    if domain and (why := _host_or_suffix(domain)):
        return why
    if not relay:
        return None  # "use MX as usual"
    if relay.startswith("["):
        end = relay.find("]")
        if end < 0:
            return f"{relay!r}: '[' without ']'"
        rest = relay[end + 1 :]
        if rest:
            return _port(rest[1:]) if rest.startswith(":") else f"{relay!r}: junk after ']'"
        return None
    host, colon, port = relay.partition(":")
    return _host(host) or (_port(port) if colon else None)


def _quota(line: str) -> str | None:
    _user, sep, value = line.partition(":")
    value = value.strip()
    if not sep or not (value.isascii() and value.isdigit()):
        return f"{line!r} is not user:BYTES (or :BYTES)"
    return None


def _virtualdomain(line: str) -> str | None:
    key, sep, prepend = line.partition(":")
    if not sep:
        return "needs 'domain:prepend' (a line without ':' is ignored)"
    if any(c.isspace() for c in key + prepend):
        return f"{line!r} contains a blank"
    return None


def _resolver(line: str) -> str | None:
    host, port = line, ""
    if line.startswith("["):
        host, _, port = line[1:].partition("]:")
        host = host.rstrip("]")
    elif line.count(":") == 1:
        host, _, port = line.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address"
    return _port(port) if port else None


def _qmqp_server(line: str) -> str | None:
    if parse_server(line, QMQP_PORT) is None:
        return f"{line!r} is not IP, IP:PORT or [IPv6]:PORT"
    return None


def _bounceformat(line: str) -> str | None:
    if line.lower() not in BOUNCE_FORMATS:
        return f"{line!r} is not one of {', '.join(BOUNCE_FORMATS)}"
    return None


def _syncmode(line: str) -> str | None:
    if line not in SYNC_MODES:
        return f"{line!r} is not one of {', '.join(SYNC_MODES)}"
    return None


def _network(line: str) -> str | None:
    try:
        ipaddress.ip_network(line.strip("[]"), strict=False)
    except ValueError:
        return f"{line!r} is not an IP address"
    return None


def _tlsdestination(line: str) -> str | None:
    try:
        parse_tlsdestinations(line, path="")
    except ControlError as exc:
        return exc.why
    return None


@dataclass(frozen=True, slots=True)
class ControlFile:
    """One row of the table. kind: line, list, int, rules (tcprules text) or pem."""

    name: str
    kind: str
    used_by: str
    meaning: str
    default: str  # showctl's words for the default (a value, or a sentence for lists)
    pre: str = ""  # showctl: text before the value
    post: str = ""  # showctl: text after the value
    default_me: bool = False  # a line file whose default is control/me
    lo: int = 0  # int files: the range pyqmail check accepts
    hi: int = 0
    check: LineCheck = _text


CONTROL_FILES: tuple[ControlFile, ...] = (
    ControlFile(
        "badmailfrom",
        "list",
        "smtpd",
        "refused envelope senders: user@host, or @host for a whole domain",
        "Any MAIL FROM is allowed.",
        post=" not accepted in MAIL FROM.",
        check=_no_blanks,
    ),
    ControlFile(
        "bounceformat",
        "line",
        "send",
        "qsbmf (qmail's bounces) or dsn (RFC 3464 multipart/report)",
        "qsbmf",
        pre="Bounce format is ",
        check=_bounceformat,
    ),
    ControlFile(
        "bouncemaxbytes",
        "int",
        "send",
        "bytes of the original a bounce returns, 0 = all of it (as qmail)",
        "0",
        pre="Bounces return at most ",
        post=" bytes of the original (0: all)",
        lo=0,
        hi=1 << 40,
    ),
    ControlFile(
        "bouncefrom",
        "line",
        "send",
        "local part of the bounce From:",
        "MAILER-DAEMON",
        pre="Bounce user name is ",
        check=_local_part,
    ),
    ControlFile(
        "bouncehost",
        "line",
        "send",
        "host part of the bounce From:",
        "bouncehost",
        pre="Bounce host name is ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "concurrencylocal",
        "int",
        "send",
        "parallel local deliveries (at most 120)",
        "10",
        pre="Local concurrency is ",
        lo=0,
        hi=120,
    ),
    ControlFile(
        "concurrencyremote",
        "int",
        "send",
        "parallel remote deliveries (at most 120)",
        "20",
        pre="Remote concurrency is ",
        lo=0,
        hi=120,
    ),
    ControlFile(
        "databytes",
        "int",
        "smtpd",
        "largest message accepted over SMTP, 0 = no limit ($DATABYTES overrides)",
        "0",
        pre="SMTP DATA limit is ",
        post=" bytes",
        lo=0,
        hi=1 << 40,
    ),
    ControlFile(
        "defaultdelivery",
        "list",
        "lspawn",
        "the .qmail lines for a user who has no .qmail",
        "./Maildir/ (deliver to the user's Maildir).",
        pre="Default delivery: ",
    ),
    ControlFile(
        "defaultdomain",
        "line",
        "qmail-inject",
        "appended to host names without a dot ($QMAILDEFAULTDOMAIN overrides)",
        "defaultdomain",
        pre="Default domain name is ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "defaulthost",
        "line",
        "qmail-inject",
        "added to addresses without '@' ($QMAILDEFAULTHOST overrides)",
        "defaulthost",
        pre="Default host name is ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "doublebouncehost",
        "line",
        "send",
        "host part of the double-bounce recipient",
        "doublebouncehost",
        pre="2B recipient host: ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "doublebounceto",
        "line",
        "send",
        "local part of the double-bounce recipient",
        "postmaster",
        pre="2B recipient user: ",
        check=_local_part,
    ),
    ControlFile(
        "envnoathost",
        "line",
        "send",
        "appended to envelope recipients without '@'",
        "envnoathost",
        pre="Presumed domain name is ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "helohost",
        "line",
        "remote",
        "name sent in HELO/EHLO",
        "helohost",
        pre="SMTP client HELO host name is ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "filelimit",
        "int",
        "start",
        "open files for each network-facing process",
        "4096",
        pre="Network-facing processes may open ",
        post=" files",
        lo=64,
        hi=1 << 20,
    ),
    ControlFile(
        "idhost",
        "line",
        "qmail-inject",
        "host part of generated Message-IDs ($QMAILIDHOST overrides)",
        "idhost",
        pre="Message-ID host name is ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "localiphost",
        "line",
        "smtpd",
        "box@[local IP] is rewritten to box@localiphost",
        "localiphost",
        pre="Local IP address becomes ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "locals",
        "list",
        "send",
        "domains delivered locally",
        "Messages for me are delivered locally.",
        pre="Messages for ",
        post=" are delivered locally.",
        check=_host,
    ),
    ControlFile(
        "me",
        "line",
        "all",
        "this host's name; the default for most others",
        "undefined! Uh-oh",
        pre="My name is ",
        check=_host,
    ),
    ControlFile(
        "memorylimit",
        "int",
        "start",
        "bytes of address space for each network-facing process, 0 = no limit",
        "2147483648",
        pre="Network-facing processes may use ",
        post=" bytes of address space",
        lo=0,
        hi=1 << 44,
    ),
    ControlFile(
        "moreipme",
        "list",
        "remote",
        "addresses (or addr/prefix) that are this host too, for the MX loop rule",
        "No extra addresses are mine.",
        pre="Also mine: ",
        post=".",
        check=_network,
    ),
    ControlFile(
        "notipme",
        "list",
        "remote",
        "addresses (or addr/prefix) of this host not to count as mine",
        "Every local address is mine.",
        pre="Not mine: ",
        post=".",
        check=_network,
    ),
    ControlFile(
        "outgoingip",
        "list",
        "remote",
        "source address for remote connections, one per family",
        "The kernel picks the source address.",
        pre="Remote connections from ",
        post=".",
        check=_network,
    ),
    ControlFile(
        "percenthack",
        "list",
        "send",
        "domains for which user%host@domain becomes user@host",
        "The percent hack is not allowed.",
        pre="The percent hack is allowed for user%host@",
        post=".",
        check=_host,
    ),
    ControlFile(
        "plusdomain",
        "line",
        "qmail-inject",
        "replaces a trailing '+' in host names ($QMAILPLUSDOMAIN overrides)",
        "plusdomain",
        pre="Plus domain name is ",
        default_me=True,
        check=_host,
    ),
    ControlFile(
        "qmqpservers",
        "list",
        "qmqpc",
        "QMQP servers tried in order (qmail-qmqpc, pyqmail start --mini); IP or IP:PORT",
        "No QMQP servers.",
        pre="QMQP server: ",
        post=".",
        check=_qmqp_server,
    ),
    ControlFile(
        "qmtproutes",
        "list",
        "remote",
        "domains delivered over QMTP, domain:relay[:port] (port 209)",
        "No QMTP routes.",
        pre="QMTP route: ",
        check=_smtproute,
    ),
    ControlFile(
        "queuelifetime",
        "int",
        "send",
        "seconds in the queue before deferrals become bounces",
        "604800",
        pre="Message lifetime in the queue is ",
        post=" seconds",
        lo=0,
        hi=86400 * 365,
    ),
    ControlFile(
        "quotas",
        "list",
        "local",
        "mailbox soft limits: user:BYTES, :BYTES for everyone else, 0 for none",
        "No mailbox quotas.",
        pre="Mailbox quota (user:bytes): ",
        post=".",
        check=_quota,
    ),
    ControlFile(
        "rcpthosts",
        "list",
        "smtpd",
        "recipient domains accepted from clients without RELAYCLIENT",
        "SMTP clients may send messages to any recipient.",
        pre="SMTP clients may send messages to recipients at ",
        post=".",
        check=_host_or_suffix,
    ),
    ControlFile(
        "remotebatch",
        "int",
        "send",
        "recipients at one domain sent in one SMTP transaction",
        "50",
        pre="Recipients per remote SMTP transaction: ",
        lo=1,
        hi=1000,
    ),
    ControlFile(
        "remoteidlemax",
        "int",
        "remote",
        "idle SMTP connections kept open in all",
        "40",
        pre="Idle SMTP connections kept: at most ",
        lo=0,
        hi=10000,
    ),
    ControlFile(
        "remoteidletime",
        "int",
        "remote",
        "seconds an SMTP connection waits for the next message to its host, 0 = no reuse",
        "10",
        pre="SMTP connections are reused for ",
        post=" seconds",
        lo=0,
        hi=3600,
    ),
    ControlFile(
        "resolvers",
        "list",
        "remote",
        "DNS servers, IP or IP:PORT a line",
        "The system's resolvers (/etc/resolv.conf).",
        pre="DNS server: ",
        post=".",
        check=_resolver,
    ),
    ControlFile(
        "retryunit",
        "int",
        "send",
        "milliseconds one second of qmail's retry schedule lasts (tests shrink it)",
        "1000",
        pre="One second of the retry schedule lasts ",
        post=" ms",
        lo=1,
        hi=1000,
    ),
    ControlFile(
        "syncmode",
        "line",
        "queue, send, clean, lspawn",
        "how a batch is made durable: syncfs (one syncfs(2) per filesystem) or fsync (each file)",
        "syncfs",
        pre="Batches are made durable with ",
        check=_syncmode,
    ),
    ControlFile(
        "smtpgreeting",
        "line",
        "smtpd",
        "text after 220 in the greeting; its first word should be this host's name",
        "smtpgreeting",
        pre="SMTP greeting: 220 ",
        default_me=True,
    ),
    ControlFile(
        "smtpport",
        "int",
        "remote",
        "port for SMTP to MX hosts and domain addresses (smtproutes carry their own)",
        "25",
        pre="SMTP client port is ",
        lo=1,
        hi=65535,
    ),
    ControlFile(
        "smtproutes",
        "list",
        "remote",
        "artificial routes, domain:relay[:port]; :relay for everything",
        "No artificial SMTP routes.",
        pre="SMTP route: ",
        check=_smtproute,
    ),
    ControlFile(
        "tcprules.qmqp",
        "rules",
        "qmqpd",
        "who may use QMQP, which has no relay control (tcprules text)",
        "Allow 127.0.0.1 and ::1, deny everyone else.",
        pre="QMQP access rule: ",
    ),
    ControlFile(
        "tcprules.qmtp",
        "rules",
        "qmtpd",
        "who may connect to QMTP and relay (tcprules text; first matching line wins)",
        "Allow 127.0.0.1 and ::1 to relay, and anyone else to connect.",
        pre="QMTP access rule: ",
    ),
    ControlFile(
        "tcprules.smtp",
        "rules",
        "smtpd",
        "who may connect and relay (tcprules text; first matching line wins)",
        "Allow 127.0.0.1 and ::1 to relay, and anyone else to connect.",
        pre="SMTP access rule: ",
    ),
    ControlFile(
        "timeoutconnect",
        "int",
        "remote",
        "seconds to wait for a TCP connection",
        "60",
        pre="SMTP client connection timeout is ",
        post=" seconds",
        lo=0,
        hi=86400,
    ),
    ControlFile(
        "timeoutdns",
        "int",
        "remote",
        "seconds a DNS lookup may take before the delivery is deferred",
        "30",
        pre="DNS lookups time out after ",
        post=" seconds",
        lo=1,
        hi=3600,
    ),
    ControlFile(
        "timeoutpop3d",
        "int",
        "pop3",
        "seconds a POP3 session may stay idle",
        "1200",
        pre="POP3 idle timeout is ",
        post=" seconds",
        lo=1,
        hi=86400 * 7,
    ),
    ControlFile(
        "timeoutremote",
        "int",
        "remote",
        "seconds to wait for the remote server",
        "1200",
        pre="SMTP client data timeout is ",
        post=" seconds",
        lo=0,
        hi=86400 * 7,
    ),
    ControlFile(
        "timeoutsmtpd",
        "int",
        "smtpd",
        "seconds to wait for an SMTP client",
        "1200",
        pre="SMTP server data timeout is ",
        post=" seconds",
        lo=0,
        hi=86400 * 7,
    ),
    ControlFile(
        "tlsdestinations",
        "list",
        "remote",
        "TLS per domain: domain:none|may|encrypt|verify[:cafile]",
        "STARTTLS whenever offered, certificates not checked.",
        pre="TLS policy: ",
        check=_tlsdestination,
    ),
    ControlFile(
        "virtualdomains",
        "list",
        "send",
        "user@domain:prepend, domain:prepend, .suffix:prepend, :prepend",
        "No virtual domains.",
        pre="Virtual domain: ",
        check=_virtualdomain,
    ),
    # -- smtpd's additions (issue #3) --
    ControlFile(
        "checkpassword",
        "line",
        "lookup",
        "checkpassword-interface program for SMTP AUTH (shell quoting, no shell)",
        "pyqmail-checkpassword",
        pre="SMTP AUTH passwords are checked by ",
    ),
    ControlFile(
        "maxconnections",
        "int",
        "smtpd",
        "open SMTP sessions at most, all clients together (421 beyond)",
        "500",
        pre="SMTP sessions at most: ",
        lo=1,
        hi=100_000,
    ),
    ControlFile(
        "maxconnectionsperip",
        "int",
        "smtpd",
        "open SMTP sessions at most from one IP address (421 beyond)",
        "20",
        pre="SMTP sessions per client address at most: ",
        lo=1,
        hi=100_000,
    ),
    ControlFile(
        "maxlinelength",
        "int",
        "smtpd",
        "bytes in an SMTP command line (500 beyond)",
        "2048",
        pre="SMTP command lines are at most ",
        post=" bytes",
        lo=512,
        hi=1 << 20,
    ),
    ControlFile(
        "maxrcpt",
        "int",
        "smtpd",
        "recipients per message (452 beyond)",
        "100",
        pre="Recipients per SMTP message at most: ",
        lo=1,
        hi=100_000,
    ),
    ControlFile(
        "morercpthosts",
        "list",
        "smtpd",
        "more rcpthosts entries (read as text; ignored without rcpthosts)",
        "No effect.",
        pre="SMTP clients may send messages to recipients at ",
        post=".",
        check=_host_or_suffix,
    ),
    ControlFile(
        "rcptcheck",
        "int",
        "smtpd",
        "1: refuse unknown local recipients at RCPT (550); 0: accept and bounce later",
        "1",
        pre="Local recipients checked at RCPT time (1 = yes): ",
        lo=0,
        hi=1,
    ),
    ControlFile(
        "servercert.pem",
        "pem",
        "smtpd, pop3",
        "certificate chain and private key for STARTTLS and POP3's STLS",
        "No certificate: STARTTLS is not offered.",
        pre="Certificate present: STARTTLS is offered.",
    ),
    ControlFile(
        "clientcert.pem",
        "pem",
        "remote",
        "certificate chain and private key presented to servers that ask, over STARTTLS",
        "No client certificate.",
        pre="Client certificate present.",
    ),
    ControlFile(
        "serverkey.pem",
        "pem",
        "smtpd",
        "private key for STARTTLS when servercert.pem holds only certificates",
        "The key is in servercert.pem.",
        pre="Private key present.",
    ),
    ControlFile(
        "timeoutsmtpdsession",
        "int",
        "smtpd",
        "seconds a whole SMTP session may last (421 beyond)",
        "3600",
        pre="SMTP sessions last at most ",
        post=" seconds",
        lo=1,
        hi=86400 * 7,
    ),
)
BY_NAME = {cf.name: cf for cf in CONTROL_FILES}


# -- pyqmail check ---------------------------------------------------------------


def check_text(cf: ControlFile, text: str, path: str) -> list[str]:
    """Every problem in one control file's text, each as ``path:line: why``."""
    problems: list[str] = []
    try:
        if cf.kind == "int":
            control.check_int(text, path=path, lo=cf.lo, hi=cf.hi)
        elif cf.kind == "rules":
            parse_rules(text, path=path)
    except ControlError as exc:
        problems.append(str(exc))
    if cf.kind == "line":
        first = text.split("\n", 1)[0].rstrip(" \t\r")
        if not first:
            problems.append(f"{path}:1: empty (remove the file to get the default)")
        elif why := cf.check(first):
            problems.append(f"{path}:1: {why}")
    elif cf.kind == "list":
        for number, raw in enumerate(text.split("\n"), 1):
            line = raw.rstrip(" \t\r")
            if line and not line.startswith("#") and (why := cf.check(line)):
                problems.append(f"{path}:{number}: {why}")
    return problems


def check_controls(home: Home) -> tuple[list[str], list[str]]:
    """(problems, warnings) for every file in control/; unknown files only warn."""
    problems: list[str] = []
    warnings: list[str] = []
    for cf in CONTROL_FILES:
        path = home.control(cf.name)
        try:
            text = read_control(home, cf.name)
        except OSError as exc:
            problems.append(f"{path}:0: unreadable: {exc.strerror}")
            continue
        if text is not None:
            problems += check_text(cf, text, path)
    try:
        names = sorted(os.listdir(os.path.join(home.root, "control")))
    except OSError:
        names = []
    warnings += [
        f"{home.control(name)}:0: unknown control file (ignored)"
        for name in names
        if name not in BY_NAME
    ]
    return problems, warnings


# -- qmail-showctl ---------------------------------------------------------------


def _safe(text: str) -> str:
    return "".join(c if 32 <= ord(c) <= 126 else "?" for c in text)


def describe(home: Home, cf: ControlFile, me: str | None) -> str:
    """qmail-showctl's paragraph for one file (starting with its blank line)."""
    head = f"\n{cf.name}: "
    try:
        text = read_control(home, cf.name)
    except OSError:
        return head + "Oops! Trouble reading this file.\n"
    if cf.kind == "pem":  # never shown: it may hold a private key
        return f"{head}(Default.) {cf.default}\n" if text is None else f"{head}{cf.pre}\n"
    if cf.kind == "int":
        if text is None:
            return f"{head}(Default.) {cf.pre}{cf.default}{cf.post}.\n"
        number = control.parse_int(text, int(cf.default))
        return f"{head}{cf.pre}{number}{cf.post}.\n"
    if cf.kind == "line":
        if text is None:
            value = me if cf.default_me and me is not None else cf.default
            return f"{head}(Default.) {cf.pre}{_safe(value)}.\n"
        return f"{head}{cf.pre}{_safe(control.parse_line(text, '') or '')}.\n"
    if text is None:
        return f"{head}(Default.) {cf.default}\n"
    lines = [ln for ln in control.parse_list(text) if cf.kind == "list" or ":" in ln]
    return head + "\n" + "".join(f"{cf.pre}{_safe(ln)}{cf.post}\n" for ln in lines)
