#!/bin/sh
# Run every test: unit tests on data, then end-to-end tests on a real lab (root).
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
python3 playbooks/make_rootfs.py busybox
python3 playbooks/make_rootfs.py debian
exec python3 -m pytest -q -ra tests
