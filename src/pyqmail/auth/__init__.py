"""Passwords: pyqmail's hashed password file and the checkpassword program.

The checkpassword interface (what ``pyqmail-checkpassword`` speaks, and what
qmail-popup and the SMTP AUTH helper call):

    pyqmail-checkpassword PROG [ARGS...]

- fd 3 carries ``user\\0password\\0timestamp\\0``, at most 512 bytes, then EOF.
  The timestamp (the POP3 greeting's ``<pid.time@host>``) is ignored.
- On success it sets USER, HOME and SHELL, chdirs to HOME, drops to the
  user's uid/gid when root (never to uid 0) and execs PROG ARGS...
- Exit 1: wrong password or unknown user (also: input of 512 bytes or more).
  Exit 2: misuse (no PROG, input without two NUL-terminated fields).
  Exit 111: temporary trouble (fd 3 unreadable, password file broken, exec
  failed, HOME unusable).
- The home comes from QMAILHOME (default /var/qmail); there are no options.

Who can log in: virtual users with a line in HOME/users/password (set with
``pyqmail passwd USER``, password on stdin) and an ``=USER`` entry in
users/cdb or users/assign (made by ``pyqmail adduser``), whose home is
HOME/mailboxes/USER and whose uid is that entry's; and, when running as
root, system accounts from getpwnam with their /etc/shadow hash checked
through libcrypt's crypt(3) (yescrypt, SHA-crypt...). A system account with
uid 0 never logs in. Python API: ``pyqmail.auth.accounts.authenticate(home,
user, password) -> Account | None`` (TempAuthError for trouble) and
``pyqmail.auth.pwfile.{set_password, verify}``.
"""
