#!/bin/sh
# Install the Debian packages the tests use as real peers. Only as root (CI
# runs as root); otherwise say what is missing and let those tests skip.
set -e
PKGS="swaks ucspi-tcp"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
else
    echo "install-debs: not root; missing:$missing (tests that need them will skip)"
fi
