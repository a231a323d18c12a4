"""Helpers for tests on the local lab: unique names, free subnets and leak checks.

The leak check looks at the kernel directly (``ip -j``, /proc, /sys/fs/cgroup)
instead of reusing mockerops.lab, so a bug in the lab code cannot hide its own
leaks.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mockerops.lab import LabInfo, lab_down, lab_up

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def require_root() -> None:
    """Skip the calling test unless we are root (namespaces and sshd need it)."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root for network namespaces and sshd (CI runs as "
                    "root)")


def unique_name(prefix: str = "t", suffix: str = "") -> str:
    """Return a lab name no other running test session uses: prefix + pid in base 36."""
    pid, tag = os.getpid(), ""
    while pid:
        pid, digit = divmod(pid, 36)
        tag = _DIGITS[digit] + tag
    return f"{prefix}{tag}{suffix}"


def _ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    return json.loads(out) if out else []


def free_subnet(second_octet: int = 201) -> str:
    """Return a /24 in 10.<second_octet>.0.0/16 that no address or route touches,
    starting from one derived from our pid so parallel sessions rarely race."""
    taken = []
    for link in _ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            iface = f"{addr['local']}/{addr['prefixlen']}"
            taken.append(ipaddress.IPv4Interface(iface).network)
    for route in _ip_json("-4", "route", "show"):
        if route.get("dst") not in (None, "default"):
            taken.append(ipaddress.IPv4Network(route["dst"], strict=False))
    start = os.getpid() % 256
    for step in range(256):
        net = ipaddress.IPv4Network(f"10.{second_octet}.{(start + step) % 256}.0/24")
        if not any(net.overlaps(other) for other in taken):
            return str(net)
    raise RuntimeError(f"no free /24 left in 10.{second_octet}.0.0/16")


def read_banner(address: str, port: int = 22, timeout: float = 5.0) -> bytes:
    """Return the first line a server at a lab address sends."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        return sock.recv(256).split(b"\r\n", 1)[0]


def netns_of(tag: str) -> list[str]:
    """Return the network namespaces named for a lab tag."""
    pattern = re.compile(rf"mo-{re.escape(tag)}-\d+")
    return sorted(e["name"] for e in _ip_json("netns", "list")
                  if pattern.fullmatch(e["name"]))


def netns_inodes(tag: str) -> set[int]:
    """Return the inodes of a lab's namespaces, to find their processes after the
    names are gone."""
    return {os.stat(f"/run/netns/{ns}").st_ino for ns in netns_of(tag)}


def _live_pids() -> dict[int, tuple[int, str]]:
    """Return pid -> (parent, state) for every process that is not a zombie."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # A zombie holds no namespace, mount or file; reaping it is its parent's
            # job (here PID 1's, and not every PID 1 reaps).
            if fields[0] != "Z":
                found[int(entry)] = (int(fields[1]), fields[0])
    return found


def pids_in(ns_inodes: set[int], lab_dir: str | os.PathLike) -> list[str]:
    """Return "pid cmdline" for live processes in the given namespaces, or whose
    command line names the lab dir (ourselves and our ancestors excepted)."""
    table = _live_pids()
    mine, pid = set(), os.getpid()
    while pid in table:
        mine.add(pid)
        pid = table[pid][0]
    lab_dir = str(lab_dir)
    found = []
    for pid in sorted(set(table) - mine):
        try:
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        text = cmd.decode(errors="replace").strip()
        if inode in ns_inodes or lab_dir in text:
            found.append(f"{pid} {text}")
    return found


def mounts_under(directory: str | os.PathLike) -> list[str]:
    """Return the mount points at or under a directory."""
    top = os.path.realpath(directory)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                       line.split(" ", 5)[4])
        if point == top or point.startswith(top + "/"):
            points.append(point)
    return points


def container_ids(lab_dir: str | os.PathLike) -> set[str]:
    """Return the ids of the containers recorded on a lab's hosts, to look for their
    cgroups once the lab dir is gone."""
    return {p.name for p in Path(lab_dir).glob("hosts/*/root/containers/*")
            if re.fullmatch(r"[0-9a-f]{64}", p.name)}


def cgroups_of(ids: set[str] | frozenset[str]) -> list[str]:
    """Return the cgroup directories (v2: mockerops/ID, v1: CONTROLLER/mockerops/ID)
    that exist for some container ids."""
    top = Path("/sys/fs/cgroup")
    bases = [top, *(p for p in top.iterdir() if p.is_dir())] if top.is_dir() else []
    return sorted(str(base / "mockerops" / cid) for base in bases for cid in ids
                  if (base / "mockerops" / cid).is_dir())


@dataclasses.dataclass
class Leaks:
    """What a lab left behind, by kind; empty when it left nothing."""

    netns: list[str]
    links: list[str]
    mounts: list[str]
    processes: list[str]
    files: list[str]
    cgroups: list[str]

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def __str__(self) -> str:
        return "; ".join(f"{k}: {', '.join(v)}" for k, v in
                         dataclasses.asdict(self).items() if v)


def snapshot(tag: str, lab_dir: str | os.PathLike, ns_inodes: set[int] = frozenset(),
             files: tuple[os.PathLike, ...] = (),
             containers: set[str] = frozenset()) -> Leaks:
    """Return every namespace, link, mount, process, file and container cgroup of a
    lab that exists.

    Pass ``ns_inodes`` taken with ``netns_inodes`` before the lab went down to catch
    processes in a namespace whose name was deleted while they still ran in it, and
    ``containers`` taken with ``container_ids`` to catch their cgroups.
    """
    pattern = re.compile(rf"mo-{re.escape(tag)}-(\d+|br)")
    links = sorted(link["ifname"] for link in _ip_json("link", "show")
                   if pattern.fullmatch(link["ifname"]))
    inodes = set(ns_inodes) | netns_inodes(tag)
    return Leaks(
        netns=netns_of(tag),
        links=links,
        mounts=mounts_under(lab_dir),
        processes=pids_in(inodes, lab_dir),
        files=[str(p) for p in (Path(lab_dir), *map(Path, files)) if p.exists()],
        cgroups=cgroups_of(set(containers) | container_ids(lab_dir)),
    )


def down_and_check(info: LabInfo) -> None:
    """Take the lab down and fail the test if any part of it is left."""
    inodes, ids = netns_inodes(info.tag), container_ids(info.dir)
    lab_down(info.name, lab_dir=info.dir, inventory_path=info.inventory_path)
    leaks = snapshot(info.tag, info.dir, inodes, files=(info.inventory_path,),
                     containers=ids)
    if leaks:
        pytest.fail(f"lab {info.name!r} leaked: {leaks}", pytrace=False)


def start_lab(base: Path, name: str, n: int = 3) -> LabInfo:
    """Bring up a lab under base on a free subnet; take it down again if that fails."""
    lab_dir, inventory = base / "lab", base / "inventory.yaml"
    try:
        return lab_up(name=name, n=n, subnet=free_subnet(), lab_dir=lab_dir,
                      inventory_path=inventory)
    except BaseException:
        lab_down(name, lab_dir=lab_dir, inventory_path=inventory)
        raise


def mockerops(*args, timeout=600, check=False, input=None, env=None):
    """Run the mockerops CLI as a user would; return CompletedProcess.

    With check, a non-zero exit fails the test with the command's output.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "mockerops", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, input=input, env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mockerops {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def iptables_rules(netns: str) -> list[str]:
    """Return a namespace's iptables rules, without counters or comments."""
    saved = subprocess.run(["ip", "netns", "exec", netns, "iptables-save"],
                           capture_output=True, text=True, check=True).stdout
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in saved.splitlines()
            if not line.startswith("#")]
