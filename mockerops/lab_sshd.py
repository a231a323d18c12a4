"""Give each lab host its own OpenSSH sshd, and the keys to trust and reach it.

An sshd runs in its host's network namespace only (joined with ``nsenter``),
with its config, host key, pid file and log in the host's dir. Its pid file is
trusted only while the pid still lives in that namespace.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mockerops.errors import LabError
from mockerops.lab_cmd import run
from mockerops.lab_net import netns_inode
from mockerops.lab_procs import pid_netns, proc_state, signal_all

if TYPE_CHECKING:
    from mockerops.lab import LabHost

SSH_PORT = 22
SSHD_DEADLINE = 10.0


def ensure_key(path: Path, comment: str) -> str:
    """Create an ed25519 key pair unless both halves exist; return the public key."""
    pub = path.with_name(path.name + ".pub")
    if not (path.exists() and pub.exists()):
        path.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
             "-f", str(path)])
    return pub.read_text().strip()


def sshd_config(hdir: Path, authorized_keys: Path, address: str) -> str:
    """Return the sshd_config of the lab host whose files are in HDIR."""
    return "\n".join([
        "# Written by 'mockerops lab up'; 'mockerops lab down' removes it.",
        f"ListenAddress {address}:{SSH_PORT}",
        f"HostKey {hdir / 'ssh_host_ed25519_key'}",
        f"PidFile {hdir / 'sshd.pid'}",
        # The lab key for every login, and a user's own keys as on any host.
        f"AuthorizedKeysFile {authorized_keys} .ssh/authorized_keys",
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


def _pid_from(pidfile: Path) -> int | None:
    """Return the pid in a pid file, or None."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    """Return a process's command line, or '' if it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def sshd_pid(hdir: Path, ns: str) -> int | None:
    """Return the pid of the running sshd of the host in HDIR and netns NS, or None."""
    pid = _pid_from(hdir / "sshd.pid")
    if pid is None:
        return None
    # A stale pid file may name a process that has since reused the pid elsewhere.
    inode = netns_inode(ns)
    if inode is None or pid_netns(pid) != inode or proc_state(pid) in (None, "Z"):
        return None
    return pid


def start_sshd(hdir: Path, host: str, ns: str, sshd: str) -> None:
    """Start one host's sshd in its namespace; it daemonizes and writes its pid file."""
    config = str(hdir / "sshd_config")
    # An sshd left in a namespace that was deleted and made anew still holds its
    # pid file; stop it, or it would outlive the lab where 'down' cannot find it.
    old = _pid_from(hdir / "sshd.pid")
    if old and config in _cmdline(old) and proc_state(old) not in (None, "Z"):
        signal_all([old], signal.SIGKILL)
    (hdir / "sshd.pid").unlink(missing_ok=True)
    logfile = hdir / "sshd.log"
    # nsenter joins the network namespace only. 'ip netns exec' would also give
    # sshd a private mount namespace with a fresh /sys, hiding the cgroup
    # hierarchies mounted under /sys/fs/cgroup from every container it starts.
    result = run(
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
    """Return the last LINES lines of a file joined by " | ", or ""."""
    try:
        return " | ".join(path.read_text().strip().splitlines()[-lines:])
    except OSError:
        return ""


def banner(address: str, timeout: float) -> bytes:
    """Return the first line an SSH server at address:22 sends, or b"" on failure."""
    try:
        with socket.create_connection((address, SSH_PORT), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(256).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def wait_for_sshd(hosts: list[LabHost], deadline: float = SSHD_DEADLINE) -> None:
    """Wait until every host's sshd sends its banner, or raise LabError."""
    pending = list(hosts)
    end = time.monotonic() + deadline
    while pending:
        pending = [h for h in pending if not banner(h.address, 0.5).startswith(b"SSH")]
        if not pending:
            return
        if time.monotonic() > end:
            names = ", ".join(f"{h.name} ({h.address}:{SSH_PORT})" for h in pending)
            raise LabError(
                f"sshd did not answer within {deadline:g} s on {names}",
                hint="see hosts/<host>/sshd.log in the lab dir",
            )
        time.sleep(0.05)
