#!/usr/bin/env python3
"""The floor: open one SSH connection per host at once, run commands, close.

    python3 bench/floor.py --inventory INV [--steps K] [-- COMMAND]

Nothing but asyncssh: the same key, the same known_hosts (checked), one exec
channel per command, K commands one after the other on each host. It is the
least any tool that speaks SSH must spend, so the bench measures against it.
Exits non-zero when a host fails or a command does not exit 0.
"""

import argparse
import asyncio
import sys

import asyncssh
import yaml


def load_hosts(path):
    """Return (address, user, key, known_hosts) for every host of a lab inventory."""
    with open(path) as f:
        data = yaml.safe_load(f)
    top = data["all"]
    shared = top.get("vars", {})
    merged = {}
    for group in top.get("children", {}).values():
        for name, hvars in (group.get("hosts") or {}).items():
            merged.setdefault(name, dict(shared)).update(hvars or {})
    return [(v.get("ansible_host", name), v.get("ansible_user", "root"),
             v["ansible_ssh_private_key_file"], v["mockerops_known_hosts"])
            for name, v in merged.items()]


async def one_host(address, user, key, known_hosts, command, steps):
    """Connect to one host, run the command steps times, close; return exit codes."""
    async with asyncssh.connect(address, username=user, client_keys=[key],
                                known_hosts=known_hosts, connect_timeout=10) as conn:
        codes = []
        for _ in range(steps):
            result = await conn.run(command, check=False)
            codes.append(result.exit_status)
        return codes


async def main_async(args):
    """Run on every host concurrently; return how many hosts failed."""
    hosts = load_hosts(args.inventory)
    results = await asyncio.gather(
        *(one_host(*h, args.command, args.steps) for h in hosts),
        return_exceptions=True,
    )
    failed = 0
    for host, result in zip(hosts, results):
        if isinstance(result, BaseException) or any(result):
            failed += 1
            print("%s: %r" % (host[0], result), file=sys.stderr)
    return failed


def main():
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", "-i", required=True)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("command", nargs="*", default=["true"])
    args = parser.parse_args()
    args.command = " ".join(args.command) or "true"
    sys.exit(1 if asyncio.run(main_async(args)) else 0)


if __name__ == "__main__":
    main()
