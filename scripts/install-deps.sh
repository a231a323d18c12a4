#!/bin/sh
# Install what mockerops, its lab and its tests need on a Debian machine (as root).
set -eu
packages="openssh-server openssh-client iptables iproute2 procps psmisc curl \
busybox-static debootstrap python3 sudo util-linux"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
# Bytecode for the project's own modules: an editable install has none, and
# with PYTHONDONTWRITEBYTECODE set every command would compile them again.
python3 -m compileall -q mockerops remote_agent >/dev/null
