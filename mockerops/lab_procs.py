"""Find and stop a lab's processes, remove its containers' cgroups, and lazily
unmount what lies under its dir.

A lab's processes are those in its network namespaces, the containers whose root
is mounted from under the lab dir, and everything they started. They get
SIGTERM, a short grace, then SIGKILL until none are left. A container's
supervisor removes its cgroup when the container stops; one killed with the lab
cannot, so the lab removes the (by then empty) groups of every container
recorded under a host's state root. Mounts are detached deepest first, layer by
layer, so that nothing mounted is ever deleted through.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from mockerops.errors import LabError

STOP_GRACE = 1.0
KILL_DEADLINE = 5.0
_MNT_DETACH = 2
# Where the agent (remote_agent/cgroups.py) puts a container's group: PARENT/<id>
# in the unified hierarchy (v2), or in each controller's hierarchy (v1).
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PARENT = "mockerops"
RMDIR_DEADLINE = 2.5
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def proc_state(pid: int) -> str | None:
    """Return a process's state letter (R, S, Z...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_netns(pid: int) -> int | None:
    """Return the inode of a process's netns, or None if it is gone."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
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
        if pid_netns(pid) in ns_inodes:
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


def signal_all(pids: Iterable[int], sig: int) -> None:
    """Send SIG to each of PIDS, skipping those already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_lab_processes(ns_inodes: set[int], dirs: list[str]) -> int:
    """Stop the lab's processes: SIGTERM, a short grace, then SIGKILL until none are
    left (a supervisor may restart a container in between); return how many."""
    pids = _lab_pids(ns_inodes, dirs)
    total = set(pids)
    if not pids:
        return 0
    signal_all(pids, signal.SIGTERM)
    end = time.monotonic() + STOP_GRACE
    while pids and time.monotonic() < end:
        time.sleep(0.05)
        pids = _lab_pids(ns_inodes, dirs)
    end = time.monotonic() + KILL_DEADLINE
    while pids:
        total |= pids
        signal_all(pids, signal.SIGKILL)
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


def unmount_under(directory: Path) -> list[str]:
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


def recorded_containers(state_roots: Iterable[str | os.PathLike]) -> list[str]:
    """Return the ids of the containers recorded under some agent state roots."""
    ids = set()
    for root in state_roots:
        with contextlib.suppress(OSError):
            ids.update(name for name in os.listdir(Path(root, "containers"))
                       if _CONTAINER_ID.fullmatch(name))
    return sorted(ids)


def container_cgroups(container_id: str, root: str = CGROUP_ROOT) -> list[Path]:
    """Return the cgroup directories of a container that exist, on v2 or v1."""
    bases = [Path(root)]
    with contextlib.suppress(OSError):
        bases += sorted(Path(root, name) for name in os.listdir(root))
    found = []
    for base in bases:
        path = base / CGROUP_PARENT / container_id
        # cpu and cpuacct are often links to one "cpu,cpuacct" hierarchy.
        if path.is_dir() and path.resolve() not in {p.resolve() for p in found}:
            found.append(path)
    return found


def remove_container_cgroups(container_ids: Iterable[str],
                             root: str = CGROUP_ROOT) -> list[str]:
    """Remove the empty cgroups of some containers whose processes are gone; return
    them. rmdir alone: a group that still holds a process stays, and is reported."""
    removed: list[str] = []
    left: list[str] = []
    for container_id in container_ids:
        for path in container_cgroups(container_id, root):
            end = time.monotonic() + RMDIR_DEADLINE
            while True:
                try:
                    path.rmdir()
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY while the kernel finishes tearing down exited tasks.
                    if exc.errno == errno.EBUSY and time.monotonic() < end:
                        time.sleep(0.05)
                        continue
                    left.append(f"{path} ({exc.strerror})")
                    break
                removed.append(str(path))
                break
    if left:
        raise LabError(
            f"container cgroups remain: {', '.join(left)}",
            hint="see 'cat PATH/cgroup.procs' for what still runs there; stop it, "
            "then run lab down again",
        )
    return removed
