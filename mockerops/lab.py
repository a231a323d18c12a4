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
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import yaml

from mockerops.errors import LabError

log = logging.getLogger(__name__)

DEFAULT_NAME = "lab"
DEFAULT_SUBNET = "10.200.0.0/24"
DEFAULT_HOSTS = 3
MAX_HOSTS = 200
SSH_PORT = 22
SSHD_DEADLINE = 10.0
STOP_GRACE = 1.0
KILL_DEADLINE = 5.0
CMD_TIMEOUT = 30.0

# "mo-" + tag + "-" + a 3-digit host index must fit the kernel's 15-character limit.
_MAX_TAG = 7
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_UNSAFE_DIR_CHARS = set(" \t\n\"'%\\")
# Root's PATH from a login shell or sudo may lack the sbin directories sshd lives in.
_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_PACKAGES = {"ip": "iproute2", "sshd": "openssh-server", "ssh-keygen": "openssh-client"}
_MNT_DETACH = 2
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


# -- names -------------------------------------------------------------------------


def lab_tag(name: str) -> str:
    """Return the short tag that names a lab's namespaces and links."""
    if len(name) <= _MAX_TAG:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()
    return name[:2] + digest[: _MAX_TAG - 2]


def netns_name(tag: str, index: int) -> str:
    """Return the netns (and root-side veth) name of host ``index`` of a lab."""
    return f"mo-{tag}-{index}"


def bridge_name(tag: str) -> str:
    """Return the name of a lab's bridge in the root namespace."""
    return f"mo-{tag}-br"


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


# -- requirements and commands -----------------------------------------------------


def _search_path(path: str | None) -> str:
    if path is not None:
        return path
    return os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])


def missing_requirements(
    *,
    euid: int | None = None,
    path: str | None = None,
    tools: Iterable[str] = _PACKAGES,
) -> list[str]:
    """Return one line per missing requirement: root and each tool with its package."""
    missing = []
    if (os.geteuid() if euid is None else euid) != 0:
        missing.append("root: namespaces, links and sshd need uid 0 (run as root)")
    for tool in tools:
        if not shutil.which(tool, path=_search_path(path)):
            package = _PACKAGES[tool]
            missing.append(f"{tool}: not found (apt-get install {package})")
    return missing


def check_requirements(*, tools: Iterable[str] = _PACKAGES) -> None:
    """Raise LabError naming everything the lab lacks on this machine."""
    missing = missing_requirements(tools=tools)
    if not missing:
        return
    packages = [_PACKAGES[m.split(":")[0]] for m in missing if not m.startswith("root")]
    hint = "run it as root, e.g. with sudo" if not packages else (
        f"on Debian: apt-get install {' '.join(packages)}"
    )
    raise LabError("the lab cannot run here: " + "; ".join(missing), hint=hint)


def _tool(name: str) -> str:
    """Return the absolute path of a tool (sshd re-executes itself, so it must be)."""
    found = shutil.which(name, path=_search_path(None))
    if not found:
        raise LabError(f"{name}: not found", hint=f"apt-get install {_PACKAGES[name]}")
    return os.path.abspath(found)


def _run(
    args: list[str], *, check: bool = True, timeout: float = CMD_TIMEOUT
) -> subprocess.CompletedProcess:
    """Run a command (an argument list, never a shell); raise LabError if it fails."""
    log.debug("run %s", args)
    found = shutil.which(args[0], path=_search_path(None))
    if found and "/" not in args[0]:
        args = [found, *args[1:]]
    try:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise LabError(
            f"{args[0]}: not found", hint=f"apt-get install {_PACKAGES.get(args[0])}"
        ) from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(args)} gave no answer in {timeout:g} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        raise LabError(f"{' '.join(args)} failed: {detail}")
    return result


def _ip_json(args: list[str]) -> list[dict]:
    """Run ``ip -j ARGS`` and return its parsed output ([] when it prints nothing)."""
    out = _run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def _netns_names() -> set[str]:
    return {entry["name"] for entry in _ip_json(["netns", "list"])}


def _links(netns: str | None = None) -> set[str]:
    prefix = ["-n", netns] if netns else []
    return {link["ifname"] for link in _ip_json([*prefix, "link", "show"])}


def _lab_netns(tag: str) -> dict[int, str]:
    """Return the lab's existing namespaces by host index."""
    pattern = re.compile(rf"mo-{re.escape(tag)}-(\d+)")
    found = {}
    for ns in _netns_names():
        match = pattern.fullmatch(ns)
        if match:
            found[int(match.group(1))] = ns
    return found


def _lab_links(tag: str) -> list[str]:
    """Return the lab's links in the root namespace: its veths and its bridge."""
    pattern = re.compile(rf"mo-{re.escape(tag)}-(\d+|br)")
    return sorted(link for link in _links() if pattern.fullmatch(link))


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


def _ensure_key(path: Path, comment: str) -> str:
    """Create an ed25519 key pair unless both halves exist; return the public key."""
    pub = path.with_name(path.name + ".pub")
    if not (path.exists() and pub.exists()):
        path.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
              "-f", str(path)])
    return pub.read_text().strip()


def _mentions(path: Path, text: str) -> bool:
    try:
        return text in path.read_text()
    except (OSError, UnicodeDecodeError):
        return False


# -- network -----------------------------------------------------------------------


def _parse_subnet(subnet: str, n: int) -> ipaddress.IPv4Network:
    """Return the subnet, refusing one that is not private or too small for n hosts."""
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise LabError(
            f"bad lab subnet {subnet!r}: {exc}", hint="give e.g. 10.200.0.0/24"
        ) from None
    if not net.is_private:
        raise LabError(
            f"lab subnet {subnet!r} is not a private range",
            hint="use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 so "
            "lab addresses never shadow real ones",
        )
    # .1 is the bridge, hosts start at .11, and the broadcast address stays free.
    if net.num_addresses < 10 + n + 2:
        raise LabError(
            f"lab subnet {subnet!r} is too small for {n} hosts",
            hint="use a /24, which holds up to 200 lab hosts",
        )
    return net


def _host_address(net: ipaddress.IPv4Network, index: int) -> str:
    return str(net.network_address + 10 + index)


def _check_subnet_free(net: ipaddress.IPv4Network, bridge: str) -> None:
    """Refuse a subnet that overlaps an address or route not on this lab's bridge."""
    for link in _ip_json(["-4", "addr", "show"]):
        for addr in link.get("addr_info", []):
            other = ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}")
            if link["ifname"] != bridge and other.network.overlaps(net):
                raise LabError(
                    f"lab subnet {net} overlaps {other} on {link['ifname']}",
                    hint="pick another --subnet (each lab needs its own), or run "
                    "'mockerops lab down' for the lab that holds it",
                )
    for route in _ip_json(["-4", "route", "show"]):
        if route.get("dst") in (None, "default") or route.get("dev") == bridge:
            continue
        other = ipaddress.IPv4Network(route["dst"], strict=False)
        if other.overlaps(net):
            raise LabError(
                f"lab subnet {net} overlaps route {other} via {route.get('dev')}",
                hint="pick another --subnet",
            )


def _bridge_subnet(bridge: str) -> str | None:
    """Return the subnet an existing bridge serves, or None."""
    try:
        links = _ip_json(["-4", "addr", "show", "dev", bridge])
    except LabError:
        return None
    for link in links:
        for addr in link.get("addr_info", []):
            iface = ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}")
            return str(iface.network)
    return None


def _ensure_bridge(tag: str, net: ipaddress.IPv4Network) -> None:
    """Create the lab's bridge with the subnet's .1, or repair it."""
    bridge = bridge_name(tag)
    if bridge not in _links():
        _run(["ip", "link", "add", bridge, "type", "bridge"])
    gateway = f"{net.network_address + 1}/{net.prefixlen}"
    _run(["ip", "addr", "replace", gateway, "dev", bridge])
    _run(["ip", "link", "set", bridge, "up"])


def _ensure_host_net(tag: str, index: int, net: ipaddress.IPv4Network) -> bool:
    """Create or repair one host's namespace and veth; return whether it changed."""
    ns = netns_name(tag, index)
    changed = False
    if ns not in _netns_names():
        _run(["ip", "netns", "add", ns])
        changed = True

    if "eth0" not in _links(ns) or ns not in _links():
        # One half of a pair without the other is a leftover: drop both and start
        # again (deleting either end of a veth deletes its peer).
        _run(["ip", "link", "del", ns], check=False)
        _run(["ip", "-n", ns, "link", "del", "eth0"], check=False)
        # Making the peer inside the namespace avoids a temporary name in the root
        # namespace that another lab could collide with.
        _run(["ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0",
              "netns", ns])
        changed = True

    address = f"{_host_address(net, index)}/{net.prefixlen}"
    _run(["ip", "link", "set", ns, "master", bridge_name(tag), "up"])
    _run(["ip", "-n", ns, "link", "set", "lo", "up"])
    _run(["ip", "-n", ns, "addr", "replace", address, "dev", "eth0"])
    _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    _run(["ip", "-n", ns, "route", "replace", "default", "via",
          str(net.network_address + 1)])
    return changed


# -- sshd --------------------------------------------------------------------------


def _sshd_config(paths: _Paths, host: str, address: str) -> str:
    """Return the sshd_config of one lab host."""
    hdir = paths.host(host)
    return "\n".join([
        "# Written by 'mockerops lab up'; 'mockerops lab down' removes it.",
        f"ListenAddress {address}:{SSH_PORT}",
        f"HostKey {hdir / 'ssh_host_ed25519_key'}",
        f"PidFile {hdir / 'sshd.pid'}",
        # The lab key for every login, and a user's own keys as on any host.
        f"AuthorizedKeysFile {paths.authorized_keys} .ssh/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The lab dir may sit under a world-writable directory such as /tmp, which
        # StrictModes refuses; the key files themselves are private.
        "StrictModes no",
        "X11Forwarding no",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
        "",
    ])


def _pid_netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _netns_inode(ns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None


def _pid_from(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _sshd_pid(paths: _Paths, host: str, ns: str) -> int | None:
    """Return the pid of a host's running sshd, or None."""
    pid = _pid_from(paths.host(host) / "sshd.pid")
    if pid is None:
        return None
    # A stale pid file may name a process that has since reused the pid elsewhere.
    inode = _netns_inode(ns)
    if inode is None or _pid_netns(pid) != inode or _proc_state(pid) in (None, "Z"):
        return None
    return pid


def _start_sshd(paths: _Paths, host: str, ns: str, sshd: str) -> None:
    """Start one host's sshd in its namespace; it daemonizes and writes its pid file."""
    hdir = paths.host(host)
    config = str(hdir / "sshd_config")
    # An sshd left in a namespace that was deleted and made anew still holds its
    # pid file; stop it, or it would outlive the lab where 'down' cannot find it.
    old = _pid_from(hdir / "sshd.pid")
    if old and config in _cmdline(old) and _proc_state(old) not in (None, "Z"):
        _signal_all([old], signal.SIGKILL)
    (hdir / "sshd.pid").unlink(missing_ok=True)
    logfile = hdir / "sshd.log"
    # nsenter joins the network namespace only. 'ip netns exec' would also give
    # sshd a private mount namespace with a fresh /sys, hiding the cgroup
    # hierarchies mounted under /sys/fs/cgroup from every container it starts.
    result = _run(
        ["nsenter", f"--net=/run/netns/{ns}", sshd, "-f", config, "-E", str(logfile)],
        check=False,
    )
    if result.returncode != 0:
        tail = _tail(logfile) or result.stderr.strip()
        raise LabError(
            f"sshd for lab host {host} did not start: {tail}",
            hint=f"see {logfile}; 'mockerops lab down' then 'up' rebuilds the host",
        )


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return ""


def _banner(address: str, timeout: float) -> bytes:
    """Return the first line an SSH server at address:22 sends, or b"" on failure."""
    try:
        with socket.create_connection((address, SSH_PORT), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def _wait_for_sshd(hosts: list[LabHost], deadline: float = SSHD_DEADLINE) -> None:
    """Wait until every host's sshd sends its banner, or raise LabError."""
    pending = list(hosts)
    end = time.monotonic() + deadline
    while pending:
        pending = [h for h in pending if not _banner(h.address, 0.5).startswith(b"SSH")]
        if not pending:
            return
        if time.monotonic() > end:
            names = ", ".join(f"{h.name} ({h.address}:{SSH_PORT})" for h in pending)
            raise LabError(
                f"sshd did not answer within {deadline:g} s on {names}",
                hint="see hosts/<host>/sshd.log in the lab dir",
            )
        time.sleep(0.05)


# -- processes and mounts ----------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _process_table() -> dict[int, int]:
    """Return pid -> parent pid for every live (not zombie) process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            table[int(entry)] = int(fields[1])
    return table


def _root_mount_under(pid: int, dirs: Iterable[str]) -> bool:
    """Return whether a process's root was mounted from one of some directories,
    as a container's overlay or bind-mounted rootfs is."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            roots = [line for line in f if line.split(" ", 5)[4] == "/"]
    except (OSError, IndexError):
        return False
    return bool(roots) and any(d.rstrip("/") + "/" in roots[-1] for d in dirs)


def _lab_pids(ns_inodes: set[int], dirs: Iterable[str]) -> set[int]:
    """Return the processes in some lab namespaces, the containers whose root lies
    under some directories, and everything they started."""
    table = _process_table()
    own_mnt = os.stat("/proc/self/ns/mnt").st_ino
    seeds = set()
    for pid in table:
        if _pid_netns(pid) in ns_inodes:
            seeds.add(pid)
            continue
        # Only a process in another mount namespace can have pivoted into a rootfs.
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != own_mnt and _root_mount_under(
                pid, dirs
            ):
                seeds.add(pid)

    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(seeds)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))

    # Never signal ourselves or whoever ran us, e.g. a shell inside a lab namespace.
    pid = os.getpid()
    while pid > 1:
        found.discard(pid)
        pid = table.get(pid, 0)
    return found


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _kill_lab_processes(ns_inodes: set[int], dirs: list[str]) -> int:
    """Stop the lab's processes: SIGTERM, a short grace, then SIGKILL until none are
    left (a supervisor may restart a container in between); return how many."""
    pids = _lab_pids(ns_inodes, dirs)
    total = set(pids)
    if not pids:
        return 0
    _signal_all(pids, signal.SIGTERM)
    end = time.monotonic() + STOP_GRACE
    while pids and time.monotonic() < end:
        time.sleep(0.05)
        pids = _lab_pids(ns_inodes, dirs)
    end = time.monotonic() + KILL_DEADLINE
    while pids:
        total |= pids
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.05)
        pids = _lab_pids(ns_inodes, dirs)
        if pids and time.monotonic() > end:
            raise LabError(
                f"lab processes {sorted(pids)} survive SIGKILL",
                hint="they may be stuck in the kernel; see 'ps -o pid,stat,wchan,cmd "
                f"-p {','.join(map(str, sorted(pids)))}'",
            )
    return len(total)


def _unescape_mount(field: str) -> str:
    """Decode the octal escapes (space, tab, newline, backslash) of mountinfo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(directory: str | os.PathLike) -> list[str]:
    """Return the mount points at or under a directory, deepest first."""
    top = os.path.realpath(directory)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mount(line.split(" ", 5)[4])
            if point == top or point.startswith(top.rstrip("/") + "/"):
                found.append(point)
    # Later lines are mounted on top of earlier ones, so unmount those first.
    found.reverse()
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _unmount_under(directory: Path) -> list[str]:
    """Lazily unmount everything under a directory; return what was unmounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    done: list[str] = []
    # Each pass takes one layer of stacked mounts; stop when a pass changes nothing.
    for _ in range(64):
        points = mounts_under(directory)
        if not points:
            break
        progress = False
        for point in points:
            if libc.umount2(point.encode(), _MNT_DETACH) == 0:
                done.append(point)
                progress = True
            elif ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
                err = ctypes.get_errno()
                raise LabError(f"cannot unmount {point}: {os.strerror(err)}")
        if not progress:
            break
    return done


# -- hosts -------------------------------------------------------------------------


def _remove_netns(tag: str, indices: Iterable[int], dirs: list[str]) -> list[str]:
    """Stop the processes of some lab hosts (and containers rooted under dirs), then
    delete the hosts' namespaces and veths."""
    namespaces = [netns_name(tag, i) for i in indices]
    inodes = {i for i in map(_netns_inode, namespaces) if i is not None}
    removed = []
    killed = _kill_lab_processes(inodes, dirs)
    if killed:
        removed.append(f"{killed} process" + ("es" if killed != 1 else ""))
    present = _netns_names()
    links = _links()
    for ns in namespaces:
        if ns in links:
            _run(["ip", "link", "del", ns], check=False)
            removed.append(f"link {ns}")
        if ns in present:
            _run(["ip", "netns", "del", ns])
            removed.append(f"netns {ns}")
    return removed


def _hosts(name: str, tag: str, net: ipaddress.IPv4Network, n: int) -> list[LabHost]:
    return [
        LabHost(f"{name}{i}", _host_address(net, i), netns_name(tag, i))
        for i in range(1, n + 1)
    ]


def _info(name: str, paths: _Paths, state: dict) -> LabInfo:
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
    old_subnet = old.get("subnet") or _bridge_subnet(bridge_name(tag))
    n = n or old.get("hosts") or DEFAULT_HOSTS
    net = _parse_subnet(subnet or old_subnet or DEFAULT_SUBNET, n)
    if old_subnet and ipaddress.IPv4Network(old_subnet) != net:
        raise LabError(
            f"lab {name!r} already runs on {old_subnet}, not {net}",
            hint=f"run 'mockerops lab down --name {name}' first to change subnet",
        )
    _check_subnet_free(net, bridge_name(tag))

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
    sshd = _tool("sshd")
    info = _info(name, paths, {**state, "hosts": n})

    client_key = _ensure_key(paths.key, f"mockerops-lab-{name}")
    _write_text(paths.authorized_keys, client_key + "\n", 0o600)
    known = []
    for host in info.hosts:
        hdir = paths.host(host.name)
        (hdir / "root").mkdir(parents=True, exist_ok=True)
        host_key = _ensure_key(hdir / "ssh_host_ed25519_key", host.name)
        known.append(f"{host.address},{host.name} {' '.join(host_key.split()[:2])}")
        _write_text(hdir / "sshd_config", _sshd_config(paths, host.name, host.address))
    _write_text(paths.known_hosts, "\n".join(known) + "\n")
    # sshd insists on its privilege separation directory; it is shared with the
    # system's sshd and other labs, so it is made when missing and never removed.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    _ensure_bridge(tag, net)
    existing = _lab_netns(tag)
    for index, host in enumerate(info.hosts, start=1):
        changed = _ensure_host_net(tag, index, net)
        if _sshd_pid(paths, host.name, host.netns) is None:
            _start_sshd(paths, host.name, host.netns, sshd)
            changed = True
        verb = "created" if index not in existing else "repaired" if changed else "kept"
        info.actions.append(LabAction(verb, host.name, host.address))

    surplus = sorted(i for i in existing if i > n)
    if surplus:
        hdirs = [paths.host(f"{name}{i}") for i in surplus]
        _remove_netns(tag, surplus, [str(d) for d in hdirs])
        for hdir in hdirs:
            _unmount_under(hdir)
            # Never delete through a mount that would not go: it may be a volume.
            if not mounts_under(hdir):
                shutil.rmtree(hdir, ignore_errors=True)
        for i in surplus:
            address = _host_address(net, i)
            info.actions.append(LabAction("removed", f"{name}{i}", address))

    _wait_for_sshd(info.hosts)
    return info


def lab_down(
    name: str = DEFAULT_NAME,
    lab_dir: str | os.PathLike | None = None,
    inventory_path: str | os.PathLike | None = None,
) -> list[str]:
    """Remove every trace of a lab, even a half-built one; return what was removed.

    Stops every process in the lab's namespaces (and the containers they started),
    lazily unmounts everything under the lab dir, deletes namespaces, veths and
    bridge, then the lab dir and the inventory (only if the inventory is this lab's).
    """
    _check_name(name)
    paths = _Paths(_resolve_dir(name, lab_dir))
    _check_owned(paths.dir)
    check_requirements(tools=["ip"])
    tag = lab_tag(name)
    state = _read_state(paths) if paths.dir.exists() else None
    removed: list[str] = []

    removed += _remove_netns(tag, sorted(_lab_netns(tag)), [str(paths.dir)])
    for link in _lab_links(tag):
        _run(["ip", "link", "del", link], check=False)
        removed.append(f"link {link}")
    removed += [f"mount {point}" for point in _unmount_under(paths.dir)]

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

    leftover = sorted(_lab_netns(tag).values()) + _lab_links(tag)
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
    present = _netns_names()
    statuses = []
    for host in info.hosts:
        pid = _sshd_pid(paths, host.name, host.netns)
        answers = pid is not None and _banner(host.address, 1.0).startswith(b"SSH-")
        statuses.append(HostStatus(host.name, host.address, host.netns,
                                   host.netns in present, pid, answers))
    return statuses
