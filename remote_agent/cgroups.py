"""Memory, CPU and pids limits for a container through cgroup v2 or v1.

A container's group is ``mockerops/<container id>``: one directory in the
unified hierarchy on cgroup v2 hosts, one per controller (memory, cpu, cpuacct,
pids) on cgroup v1 hosts. Only the container's own command and what it starts
are placed in it; the small PID 1 stays outside so its interpreter does not eat
into the memory limit.
"""

import errno
import os
import re
import signal
import time

from remote_agent.errors import InvalidRequest

CGROUP_ROOT = "/sys/fs/cgroup"
PARENT = "mockerops"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
CPU_PERIOD_US = 100000
# Docker refuses less; our PID 1 stays outside the group, the command does not.
MIN_MEMORY = 6 * 1024 * 1024

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$", re.I)


def parse_memory(value):
    """Return a memory size like 256m, 1g, 512k or 1048576 in bytes."""
    if isinstance(value, bool):
        raise InvalidRequest("memory limit %r is not a size like 256m or 1g" % (value,))
    if isinstance(value, (int, float)):
        number = float(value)
        unit = ""
    else:
        match = _MEMORY_RE.match(str(value))
        if not match:
            raise InvalidRequest(
                "memory limit %r is not a size like 256m, 1g, 512k or bytes" % (value,))
        number = float(match.group(1))
        unit = match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size < MIN_MEMORY:
        raise InvalidRequest("memory limit %r is below the minimum of 6m" % (value,))
    return size


def parse_cpus(value):
    """Return a CPU count (a positive float no larger than the host's) as a float."""
    try:
        cpus = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest("cpus %r is not a number like 0.5 or 2" % (value,))
    available = os.cpu_count() or 1
    if not cpus > 0 or cpus != cpus:
        raise InvalidRequest("cpus %r must be greater than 0" % (value,))
    if cpus > available:
        raise InvalidRequest("cpus %r exceeds the %d CPUs of this host"
                             % (value, available))
    return cpus


def parse_pids_limit(value):
    """Return a positive process limit as an int."""
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest("pids_limit %r is not a whole number" % (value,))
    if isinstance(value, bool) or limit <= 0 or str(limit) != str(value).strip():
        raise InvalidRequest("pids_limit %r must be a whole number above 0" % (value,))
    return limit


def is_v2(root=CGROUP_ROOT):
    """Return True when root is a cgroup2 (unified) mount."""
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def _write(path, value):
    """Write value to a cgroup control file, naming the file on failure."""
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as exc:
        raise OSError(exc.errno, "write %r to %s: %s" % (value, path, exc.strerror))


def _read(path, default=None):
    """Return the stripped text of a cgroup file, or default if unreadable."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


class Cgroup:
    """The cgroup of one container, on whichever hierarchy the host has."""

    def __init__(self, container_id, root=CGROUP_ROOT):
        self.container_id = container_id
        self.root = root
        self.v2 = is_v2(root)

    def __repr__(self):
        return "<Cgroup %s/%s v%d>" % (PARENT, self.container_id[:12],
                                       2 if self.v2 else 1)

    def dirs(self):
        """Return controller name -> directory of this container's group."""
        if self.v2:
            return {"unified": os.path.join(self.root, PARENT, self.container_id)}
        result = {}
        for controller in V1_CONTROLLERS:
            base = os.path.join(self.root, controller)
            if os.path.exists(os.path.join(base, "cgroup.procs")):
                result[controller] = os.path.join(base, PARENT, self.container_id)
        return result

    def procs_files(self):
        """Return the cgroup.procs paths a process writes itself into."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs().values()]

    def create(self, memory=None, cpus=None, pids_limit=None):
        """Create the group and apply limits (bytes, CPUs as a float, processes)."""
        if self.v2:
            self._enable_v2_controllers()
        for path in self.dirs().values():
            os.makedirs(path, exist_ok=True)
        try:
            self._apply(memory, cpus, pids_limit)
        except BaseException:
            self.remove()
            raise

    def _enable_v2_controllers(self):
        """Delegate memory, cpu and pids from the root down to mockerops/."""
        parent = os.path.join(self.root, PARENT)
        os.makedirs(parent, exist_ok=True)
        available = (_read(os.path.join(self.root, "cgroup.controllers")) or "").split()
        wanted = [c for c in ("memory", "cpu", "pids") if c in available]
        for directory in (self.root, parent):
            enabled = (_read(os.path.join(directory, "cgroup.subtree_control"))
                       or "").split()
            missing = [c for c in wanted if c not in enabled]
            if missing:
                _write(os.path.join(directory, "cgroup.subtree_control"),
                       " ".join("+" + c for c in missing))

    def _apply(self, memory, cpus, pids_limit):
        """Write the limit files for the controllers this host has."""
        dirs = self.dirs()
        if self.v2:
            d = dirs["unified"]
            if memory is not None:
                _write(os.path.join(d, "memory.max"), memory)
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), 0)
            if cpus is not None:
                _write(os.path.join(d, "cpu.max"), "%d %d" % (
                    int(cpus * CPU_PERIOD_US), CPU_PERIOD_US))
            if pids_limit is not None:
                _write(os.path.join(d, "pids.max"), pids_limit)
            return
        if memory is not None:
            if "memory" not in dirs:
                raise OSError(errno.ENOENT, "no cgroup v1 memory controller mounted")
            _write(os.path.join(dirs["memory"], "memory.limit_in_bytes"), memory)
        if cpus is not None:
            if "cpu" not in dirs:
                raise OSError(errno.ENOENT, "no cgroup v1 cpu controller mounted")
            _write(os.path.join(dirs["cpu"], "cpu.cfs_period_us"), CPU_PERIOD_US)
            _write(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"),
                   int(cpus * CPU_PERIOD_US))
        if pids_limit is not None:
            if "pids" not in dirs:
                raise OSError(errno.ENOENT, "no cgroup v1 pids controller mounted")
            _write(os.path.join(dirs["pids"], "pids.max"), pids_limit)

    def add(self, pid):
        """Move process pid into every hierarchy of the group."""
        for path in self.procs_files():
            _write(path, pid)

    def pids(self):
        """Return the pids in the group (union over hierarchies)."""
        found = set()
        for path in self.procs_files():
            text = _read(path) or ""
            found.update(int(p) for p in text.split())
        return sorted(found)

    def usage(self):
        """Return {"memory": bytes, "pids": n, "cpu_ns": n} as far as known."""
        dirs = self.dirs()
        result = {}
        if self.v2:
            d = dirs["unified"]
            mem = _read(os.path.join(d, "memory.current"))
            pids = _read(os.path.join(d, "pids.current"))
            stat = _read(os.path.join(d, "cpu.stat")) or ""
            for line in stat.splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    result["cpu_ns"] = int(value) * 1000
        else:
            mem = _read(os.path.join(dirs.get("memory", "/nonexistent"),
                                     "memory.usage_in_bytes"))
            pids = _read(os.path.join(dirs.get("pids", "/nonexistent"),
                                      "pids.current"))
            cpu = _read(os.path.join(dirs.get("cpuacct", "/nonexistent"),
                                     "cpuacct.usage"))
            if cpu is not None:
                result["cpu_ns"] = int(cpu)
        if mem is not None:
            result["memory"] = int(mem)
        if pids is not None:
            result["pids"] = int(pids)
        return result

    def kill(self, timeout=5.0):
        """SIGKILL every process in the group and wait until it is empty."""
        deadline = time.monotonic() + timeout
        kill_file = os.path.join(self.dirs().get("unified", "/nonexistent"),
                                 "cgroup.kill")
        while True:
            pids = self.pids()
            if not pids:
                return True
            if os.path.exists(kill_file):
                # cgroup.kill (5.14+) kills atomically, forks included.
                _write(kill_file, 1)
            else:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def remove(self):
        """Kill what is left and remove the group's directories."""
        self.kill()
        for path in self.dirs().values():
            for attempt in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY while the kernel finishes tearing down exited tasks.
                    if exc.errno != errno.EBUSY or attempt == 49:
                        raise
                    time.sleep(0.05)

    def exists(self):
        """Return True when any of the group's directories exists."""
        return any(os.path.isdir(p) for p in self.dirs().values())
