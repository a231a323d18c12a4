#!/bin/sh
# Set everything up on a fresh Debian machine and run the main job on a local lab:
# a 3-host lab fleet, the example app deployed to it, and each host answering.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
python3 playbooks/make_rootfs.py debian
mockerops lab up -n 3
mockerops ping -i inventories/lab.yaml all
mockerops run -i inventories/lab.yaml 'lab:!lab2' -- uname -r
mockerops deploy -i inventories/lab.yaml playbooks/hello/app.yaml
for addr in $(mockerops inventory -i inventories/lab.yaml --hosts all --address); do
    curl -fsS --max-time 5 "http://$addr:8080/"
done
