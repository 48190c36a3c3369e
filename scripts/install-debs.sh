#!/bin/sh
# Install the Debian packages the tests and the benchmark use as real peers.
# Only as root (CI runs as root); otherwise say what is missing and let those
# tests skip. The daemons are only ever started by the tests themselves, on
# loopback ports with private configs, so package scripts must not start them.
set -e
PKGS="swaks ucspi-tcp dovecot-imapd dovecot-pop3d dnsmasq-base fetchmail postfix strace"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    # Keep postinst scripts from starting system daemons on ports 25/110/143.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
    [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
    exit 0
else
    echo "install-debs: not root; missing:$missing (tests that need them will skip)"
fi
