"""Build, show and remove the local lab: a fleet of namespaced hosts with own sshd.

A lab named NAME gets a short tag TAG (NAME itself when it has at most 7 characters,
else a prefix and a hash) so that every kernel name fits IFNAMSIZ (15 characters):

    root namespace  bridge ``mo-TAG-br`` holding the subnet's .1
    host i          netns ``mo-TAG-i``; veth ``mo-TAG-i`` on the bridge, its peer
                    ``eth0`` inside with address .(10+i) and a default route via .1;
                    OpenSSH sshd on address:22, started with ``nsenter --net``
    lab dir         lab.json, id_ed25519, authorized_keys, known_hosts and
                    hosts/HOST/{sshd_config, ssh_host_ed25519_key, sshd.pid,
                    sshd.log, root/}; root/ is the host's mockerops state root

Every part is found again by tag, so several labs (each with its own name and subnet)
live side by side, and ``lab_down`` cleans up after an ``lab_up`` that stopped half
way. Only loopback and the lab's own addresses are ever contacted.

This module holds the public API and the lab dir; the parts live beside it:
``lab_cmd`` runs the tools and checks they are here, ``lab_net`` plumbs bridge,
veths and namespaces, ``lab_sshd`` runs each host's sshd, and ``lab_procs`` stops
processes and unmounts what a lab leaves behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import yaml

from mockerops.errors import LabError
from mockerops.lab_cmd import (
    check_requirements,
    missing_requirements,
    run,
    tool_path,
)
from mockerops.lab_net import (
    bridge_name,
    bridge_subnet,
    check_subnet_free,
    ensure_bridge,
    ensure_host_net,
    host_address,
    lab_links,
    lab_netns,
    netns_name,
    netns_names,
    parse_subnet,
    remove_netns,
)
from mockerops.lab_procs import (
    mounts_under,
    recorded_containers,
    remove_container_cgroups,
    unmount_under,
)
from mockerops.lab_sshd import (
    banner,
    ensure_key,
    sshd_config,
    sshd_pid,
    start_sshd,
    wait_for_sshd,
)

__all__ = [
    "DEFAULT_NAME",
    "HostStatus",
    "LabAction",
    "LabHost",
    "LabInfo",
    "bridge_name",
    "check_requirements",
    "lab_down",
    "lab_info",
    "lab_status",
    "lab_tag",
    "lab_up",
    "missing_requirements",
    "mounts_under",
    "netns_name",
]

DEFAULT_NAME = "lab"
DEFAULT_SUBNET = "10.200.0.0/24"
DEFAULT_HOSTS = 3
MAX_HOSTS = 200

# "mo-" + tag + "-" + a 3-digit host index must fit the kernel's 15-character limit.
_MAX_TAG = 7
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_UNSAFE_DIR_CHARS = set(" \t\n\"'%\\")
_LAB_FILES = {"lab.json", "id_ed25519", "id_ed25519.pub", "authorized_keys",
              "known_hosts", "hosts"}


class LabHost(NamedTuple):
    """One lab host: inventory name, address and network namespace."""

    name: str
    address: str
    netns: str


class LabAction(NamedTuple):
    """What ``lab_up`` did to one host: created, repaired, kept or removed."""

    verb: str
    host: str
    address: str


class HostStatus(NamedTuple):
    """What ``lab_status`` found for one host."""

    name: str
    address: str
    netns: str
    netns_present: bool
    sshd_pid: int | None
    answers: bool


@dataclasses.dataclass
class LabInfo:
    """A lab as built: its hosts and the files a controller needs to reach them."""

    name: str
    hosts: list[LabHost]
    inventory_path: Path
    key_path: Path
    known_hosts_path: Path
    dir: Path
    subnet: str
    tag: str
    actions: list[LabAction] = dataclasses.field(default_factory=list)

    def __repr__(self) -> str:
        return f"<Lab {self.name} {len(self.hosts)} hosts on {self.subnet}>"


@dataclasses.dataclass(frozen=True)
class _Paths:
    """Locate the files of one lab dir."""

    dir: Path

    @property
    def state(self) -> Path:
        return self.dir / "lab.json"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    def host(self, host: str) -> Path:
        return self.dir / "hosts" / host


# -- names and the lab dir ---------------------------------------------------------


def lab_tag(name: str) -> str:
    """Return the short tag that names a lab's namespaces and links."""
    if len(name) <= _MAX_TAG:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()
    return name[:2] + digest[: _MAX_TAG - 2]


def default_lab_dir(name: str) -> Path:
    """Return where a lab keeps its files unless told otherwise."""
    return Path.home() / ".mockerops" / "lab" / name


def _check_owned(directory: Path) -> None:
    """Refuse to build in, kill for, unmount under or delete a directory that holds
    anything but a lab's files: a mistyped --dir must never cost a user data."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return
    foreign = sorted(e for e in entries if e not in _LAB_FILES
                     and not (e.startswith(".") and e.endswith(".tmp")))
    if foreign or directory == directory.parent:
        raise LabError(
            f"{directory} is not a lab dir: it holds {', '.join(foreign[:5]) or '/'}",
            hint="pass --dir with the directory 'mockerops lab up' made, or a new one",
        )


def _check_name(name: str) -> None:
    """Refuse a lab name that cannot be a group, host prefix and file name."""
    if not _NAME_RE.fullmatch(name):
        raise LabError(
            f"bad lab name {name!r}",
            hint="use a letter then up to 31 letters, digits or '_', e.g. 'lab'",
        )


def _resolve_dir(name: str, lab_dir: str | os.PathLike | None) -> Path:
    """Return the absolute lab dir, refusing paths sshd_config cannot hold."""
    path = Path(os.path.realpath(lab_dir or default_lab_dir(name)))
    if _UNSAFE_DIR_CHARS & set(str(path)):
        raise LabError(
            f"lab dir {str(path)!r} holds a space, quote, '%' or backslash, which "
            "sshd_config would split or expand",
            hint="pass --dir with a plain path",
        )
    return path


# -- files -------------------------------------------------------------------------


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file atomically: a reader sees the old or the new text, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read_state(paths: _Paths) -> dict | None:
    """Return the lab state recorded in lab.json, or None if there is none."""
    try:
        return json.loads(paths.state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(
            f"{paths.state}: unreadable lab state ({exc})",
            hint="run 'mockerops lab down' for this lab and bring it up again",
        ) from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the lab dir so two commands never interleave."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _mentions(path: Path, text: str) -> bool:
    """Return whether the file at PATH contains TEXT (False if unreadable)."""
    try:
        return text in path.read_text()
    except (OSError, UnicodeDecodeError):
        return False


# -- hosts -------------------------------------------------------------------------


def _hosts(name: str, tag: str, net: ipaddress.IPv4Network, n: int) -> list[LabHost]:
    """Return the first N hosts of a lab."""
    return [
        LabHost(f"{name}{i}", host_address(net, i), netns_name(tag, i))
        for i in range(1, n + 1)
    ]


def _info(name: str, paths: _Paths, state: dict) -> LabInfo:
    """Return the lab that a recorded state describes."""
    tag = lab_tag(name)
    net = ipaddress.IPv4Network(state["subnet"])
    return LabInfo(
        name=name,
        hosts=_hosts(name, tag, net, state["hosts"]),
        inventory_path=Path(state["inventory"]),
        key_path=paths.key,
        known_hosts_path=paths.known_hosts,
        dir=paths.dir,
        subnet=str(net),
        tag=tag,
    )


def _inventory_text(info: LabInfo, paths: _Paths) -> str:
    """Return the YAML inventory of a lab's hosts."""
    hosts = {
        h.name: {
            "ansible_host": h.address,
            "mockerops_root": str(paths.host(h.name) / "root"),
        }
        for h in info.hosts
    }
    data = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(info.key_path),
                "mockerops_known_hosts": str(info.known_hosts_path),
            },
            "children": {info.name: {"hosts": hosts}},
        }
    }
    header = (
        f"# The local lab {info.name!r}, written by 'mockerops lab up';\n"
        f"# 'mockerops lab down --name {info.name}' removes it.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# -- the API -----------------------------------------------------------------------


def lab_up(
    name: str = DEFAULT_NAME,
    n: int | None = None,
    subnet: str | None = None,
    lab_dir: str | os.PathLike | None = None,
    inventory_path: str | os.PathLike | None = None,
) -> LabInfo:
    """Create the lab, or repair and resize it; return it once every sshd answers.

    ``n`` defaults to the lab's current size (3 for a new lab); a smaller ``n``
    removes the hosts above it. ``subnet`` defaults to the lab's current one.
    """
    _check_name(name)
    check_requirements()
    if n is not None and not 1 <= n <= MAX_HOSTS:
        raise LabError(f"bad host count {n}", hint=f"give 1 to {MAX_HOSTS}")
    paths = _Paths(_resolve_dir(name, lab_dir))
    _check_owned(paths.dir)
    created = not paths.dir.exists()
    paths.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    with _locked(paths.dir):
        try:
            net, n, state, old_inventory = _plan(name, paths, n, subnet, inventory_path)
        except LabError:
            if created:
                # Nothing was built: leave no empty lab dir behind a refused 'up'.
                with contextlib.suppress(OSError):
                    paths.dir.rmdir()
            raise
        # Record the lab before building it, so 'down' finds an interrupted 'up'.
        _write_text(paths.state, json.dumps(state, indent=2) + "\n", 0o600)

        info = _build(name, paths, net, n, state)
        inventory = info.inventory_path
        if old_inventory and old_inventory != inventory and _mentions(
            old_inventory, str(paths.dir)
        ):
            old_inventory.unlink(missing_ok=True)
        _write_text(inventory, _inventory_text(info, paths))
        state["hosts"] = n
        _write_text(paths.state, json.dumps(state, indent=2) + "\n", 0o600)
        return info


def _plan(
    name: str,
    paths: _Paths,
    n: int | None,
    subnet: str | None,
    inventory_path: str | os.PathLike | None,
) -> tuple[ipaddress.IPv4Network, int, dict, Path | None]:
    """Check a request against the lab as it stands; return subnet, size, new state
    and the previous inventory path."""
    tag = lab_tag(name)
    old = _read_state(paths) or {}
    if old and old.get("name") != name:
        raise LabError(
            f"{paths.dir} holds the lab {old.get('name')!r}, not {name!r}",
            hint="pass another --dir, or the matching --name",
        )
    old_subnet = old.get("subnet") or bridge_subnet(bridge_name(tag))
    n = n or old.get("hosts") or DEFAULT_HOSTS
    net = parse_subnet(subnet or old_subnet or DEFAULT_SUBNET, n)
    if old_subnet and ipaddress.IPv4Network(old_subnet) != net:
        raise LabError(
            f"lab {name!r} already runs on {old_subnet}, not {net}",
            hint=f"run 'mockerops lab down --name {name}' first to change subnet",
        )
    check_subnet_free(net, bridge_name(tag))

    default_inventory = Path("inventories", f"{name}.yaml")
    inventory = Path(inventory_path or old.get("inventory") or default_inventory)
    old_inventory = Path(old["inventory"]) if old.get("inventory") else None
    state = {
        "name": name,
        "tag": tag,
        "subnet": str(net),
        "hosts": max(n, old.get("hosts", 0)),
        "inventory": str(inventory.absolute()),
    }
    return net, n, state, old_inventory


def _build(
    name: str, paths: _Paths, net: ipaddress.IPv4Network, n: int, state: dict
) -> LabInfo:
    """Make every part of the lab that is missing; return it with what was done."""
    tag = lab_tag(name)
    sshd = tool_path("sshd")
    info = _info(name, paths, {**state, "hosts": n})

    client_key = ensure_key(paths.key, f"mockerops-lab-{name}")
    _write_text(paths.authorized_keys, client_key + "\n", 0o600)
    known = []
    for host in info.hosts:
        hdir = paths.host(host.name)
        (hdir / "root").mkdir(parents=True, exist_ok=True)
        host_key = ensure_key(hdir / "ssh_host_ed25519_key", host.name)
        known.append(f"{host.address},{host.name} {' '.join(host_key.split()[:2])}")
        config = sshd_config(hdir, paths.authorized_keys, host.address)
        _write_text(hdir / "sshd_config", config)
    _write_text(paths.known_hosts, "\n".join(known) + "\n")
    # sshd insists on its privilege separation directory; it is shared with the
    # system's sshd and other labs, so it is made when missing and never removed.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    ensure_bridge(tag, net)
    existing = lab_netns(tag)
    for index, host in enumerate(info.hosts, start=1):
        changed = ensure_host_net(tag, index, net)
        hdir = paths.host(host.name)
        if sshd_pid(hdir, host.netns) is None:
            start_sshd(hdir, host.name, host.netns, sshd)
            changed = True
        verb = "created" if index not in existing else "repaired" if changed else "kept"
        info.actions.append(LabAction(verb, host.name, host.address))

    surplus = sorted(i for i in existing if i > n)
    if surplus:
        hdirs = [paths.host(f"{name}{i}") for i in surplus]
        remove_netns(tag, surplus, [str(d) for d in hdirs])
        remove_container_cgroups(recorded_containers(d / "root" for d in hdirs))
        for hdir in hdirs:
            unmount_under(hdir)
            # Never delete through a mount that would not go: it may be a volume.
            if not mounts_under(hdir):
                shutil.rmtree(hdir, ignore_errors=True)
        for i in surplus:
            address = host_address(net, i)
            info.actions.append(LabAction("removed", f"{name}{i}", address))

    wait_for_sshd(info.hosts)
    return info


def lab_down(
    name: str = DEFAULT_NAME,
    lab_dir: str | os.PathLike | None = None,
    inventory_path: str | os.PathLike | None = None,
) -> list[str]:
    """Remove every trace of a lab, even a half-built one; return what was removed.

    Stops every process in the lab's namespaces (and the containers they started),
    removes the cgroups of the containers recorded on its hosts, lazily unmounts
    everything under the lab dir, deletes namespaces, veths and bridge, then the
    lab dir and the inventory (only if the inventory is this lab's).
    """
    _check_name(name)
    paths = _Paths(_resolve_dir(name, lab_dir))
    _check_owned(paths.dir)
    check_requirements(tools=["ip"])
    tag = lab_tag(name)
    state = _read_state(paths) if paths.dir.exists() else None
    removed: list[str] = []

    removed += remove_netns(tag, sorted(lab_netns(tag)), [str(paths.dir)])
    # Their supervisors were killed above, so the containers' groups are ours to go.
    roots = sorted(paths.dir.glob("hosts/*/root"))
    removed += [f"cgroup {group}" for group in
                remove_container_cgroups(recorded_containers(roots))]
    for link in lab_links(tag):
        run(["ip", "link", "del", link], check=False)
        removed.append(f"link {link}")
    removed += [f"mount {point}" for point in unmount_under(paths.dir)]

    candidates = [inventory_path, (state or {}).get("inventory"),
                  Path("inventories", f"{name}.yaml")]
    for candidate in candidates:
        # Only a file that names this lab's dir is ours to delete.
        if candidate and _mentions(Path(candidate), str(paths.dir)):
            Path(candidate).unlink(missing_ok=True)
            removed.append(f"inventory {Path(candidate).absolute()}")

    if paths.dir.exists():
        left = mounts_under(paths.dir)
        if left:
            raise LabError(
                f"mounts under {paths.dir} remain: {', '.join(left)}; lab dir kept so "
                "nothing mounted there is deleted",
                hint="unmount them with 'umount -l PATH', then run lab down again",
            )
        shutil.rmtree(paths.dir)
        removed.append(f"dir {paths.dir}")

    leftover = sorted(lab_netns(tag).values()) + lab_links(tag)
    if leftover:
        raise LabError(f"lab {name!r} parts remain after down: {', '.join(leftover)}",
                       hint="see 'ip netns list' and 'ip link'; run lab down again")
    return removed


def lab_info(
    name: str = DEFAULT_NAME, lab_dir: str | os.PathLike | None = None
) -> LabInfo:
    """Return an existing lab as ``lab_up`` last built it."""
    _check_name(name)
    paths = _Paths(_resolve_dir(name, lab_dir))
    state = _read_state(paths)
    if state is None:
        raise LabError(
            f"No lab named {name!r} exists in {paths.dir}",
            hint=f"create it with 'mockerops lab up --name {name}'",
        )
    return _info(name, paths, state)


def lab_status(
    name: str = DEFAULT_NAME, lab_dir: str | os.PathLike | None = None
) -> list[HostStatus]:
    """Return each host of a lab with its namespace, sshd pid and whether it answers."""
    check_requirements(tools=["ip"])
    info = lab_info(name, lab_dir)
    paths = _Paths(info.dir)
    present = netns_names()
    statuses = []
    for host in info.hosts:
        pid = sshd_pid(paths.host(host.name), host.netns)
        answers = pid is not None and banner(host.address, 1.0).startswith(b"SSH-")
        statuses.append(HostStatus(host.name, host.address, host.netns,
                                   host.netns in present, pid, answers))
    return statuses
