"""The container filesystem: overlay root, /proc, /dev, /sys, /etc files, volumes.

Everything here runs inside a fresh mount namespace (and, for /proc, inside the
container's PID namespace): nothing mounted here is visible on the host, and all
of it disappears with the namespace, so no unmount path is needed on exit.
"""

import os
import stat

from remote_agent import namespaces as ns
from remote_agent import util

# Files Docker hides behind /dev/null, directories behind an empty read-only
# tmpfs, and paths it makes read-only (moby oci/defaults.go).
MASKED_FILES = (
    "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug",
)
MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/sys/firmware",
               "/sys/devices/virtual/powercap")
READONLY_PATHS = (
    "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
    "/proc/sysrq-trigger",
)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

# mount(2) copies the option string into one page.
_MAX_MOUNT_DATA = 4000


def secure_join(root, path):
    """Return path resolved inside root, following symlinks as if root were /."""
    rel = util.resolve_in_root(path, lambda rel: os.path.join(root, rel))
    return os.path.join(root, rel) if rel else root


def make_private():
    """Stop mount events from reaching the host: make every mount private."""
    # Without this, mounts under a shared parent (systemd makes / shared)
    # propagate back into the host namespace.
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)


def mount_overlay(lowerdirs, upperdir, workdir, target, empty_lower=None):
    """Mount an overlay of lowerdirs (top first) with upperdir/workdir on target."""
    lowers = list(lowerdirs)
    if not lowers:
        # overlayfs needs at least one lower layer; scratch images get an empty one.
        if empty_lower is None:
            raise ValueError("an overlay without layers needs an empty lower dir")
        os.makedirs(empty_lower, exist_ok=True)
        lowers = [empty_lower]
    data = "lowerdir=%s,upperdir=%s,workdir=%s" % (":".join(lowers), upperdir, workdir)
    if len(data) <= _MAX_MOUNT_DATA:
        ns.mount("overlay", target, "overlay", 0, data)
        return
    # Too long for one page: the kernel resolves relative paths against the
    # caller's cwd, so mount from the common parent with short relative names.
    base = os.path.commonpath([os.path.abspath(p) for p in lowers])
    rel = [os.path.relpath(p, base) for p in lowers]
    data = "lowerdir=%s,upperdir=%s,workdir=%s" % (
        ":".join(rel), os.path.abspath(upperdir), os.path.abspath(workdir))
    if len(data) > _MAX_MOUNT_DATA:
        raise OSError(7, "overlay options for %d layers exceed a page" % len(lowers))
    old = os.open(".", os.O_RDONLY)
    try:
        os.chdir(base)
        ns.mount("overlay", target, "overlay", 0, data)
    finally:
        os.fchdir(old)
        os.close(old)


def _ensure_dir(path, mode=0o755):
    """Create directory path (and parents) when missing."""
    if not os.path.isdir(path):
        os.makedirs(path, mode)


def _ensure_file(path):
    """Create an empty file at path (and its parent) when missing."""
    if not os.path.lexists(path):
        _ensure_dir(os.path.dirname(path))
        with open(path, "a"):
            pass


def bind(source, target, readonly=False, recursive=True):
    """Bind-mount source on target, then make it read-only when asked."""
    flags = ns.MS_BIND | (ns.MS_REC if recursive else 0)
    ns.mount(source, target, None, flags)
    if readonly:
        # MS_RDONLY is ignored on the first bind; it takes a remount.
        ns.mount(None, target, None, flags | ns.MS_REMOUNT | ns.MS_RDONLY)


def mount_proc(rootfs):
    """Mount a proc filesystem for the current PID namespace under rootfs."""
    target = os.path.join(rootfs, "proc")
    _ensure_dir(target)
    ns.mount("proc", target, "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)


def mount_sys(rootfs):
    """Mount /sys read-only under rootfs."""
    target = os.path.join(rootfs, "sys")
    _ensure_dir(target)
    flags = ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC | ns.MS_RDONLY
    try:
        ns.mount("sysfs", target, "sysfs", flags)
    except OSError:
        # A fresh sysfs is refused when we share the host's network namespace
        # under some security modules; a read-only bind shows the same tree.
        bind("/sys", target, readonly=True)


def mount_dev(rootfs):
    """Give rootfs a minimal /dev: a tmpfs with a few host devices, pts and shm."""
    dev = os.path.join(rootfs, "dev")
    _ensure_dir(dev)
    ns.mount("tmpfs", dev, "tmpfs", ns.MS_NOSUID | ns.MS_STRICTATIME,
             "mode=755,size=65536k")
    for name in DEVICES:
        path = os.path.join(dev, name)
        if not os.path.exists("/dev/" + name):
            continue
        _ensure_file(path)
        # Binding host nodes works where mknod would be refused (no MKNOD cap
        # in user namespaces, nodev mounts).
        bind("/dev/" + name, path, recursive=False)
    pts = os.path.join(dev, "pts")
    _ensure_dir(pts)
    ns.mount("devpts", pts, "devpts", ns.MS_NOSUID | ns.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620,gid=5")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    shm = os.path.join(dev, "shm")
    _ensure_dir(shm)
    ns.mount("shm", shm, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC,
             "mode=1777,size=65536k")
    os.symlink("/proc/self/fd", os.path.join(dev, "fd"))
    for num, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink("/proc/self/fd/%d" % num, os.path.join(dev, name))


def mask_paths(rootfs):
    """Hide sensitive /proc and /sys entries the way Docker does."""
    for path in MASKED_FILES:
        target = os.path.join(rootfs, path.lstrip("/"))
        if os.path.isfile(target):
            bind("/dev/null", target, recursive=False)
    for path in MASKED_DIRS:
        target = os.path.join(rootfs, path.lstrip("/"))
        if os.path.isdir(target):
            ns.mount("tmpfs", target, "tmpfs", ns.MS_RDONLY, "size=0")
    for path in READONLY_PATHS:
        target = os.path.join(rootfs, path.lstrip("/"))
        if os.path.lexists(target):
            bind(target, target, readonly=True)


def mount_etc_files(rootfs, files):
    """Bind the generated /etc files (name -> host path) into rootfs/etc."""
    for name, source in sorted(files.items()):
        target = secure_join(rootfs, "/etc/" + name)
        _ensure_file(target)
        bind(source, target, recursive=False)


def mount_volumes(rootfs, volumes):
    """Bind each volume (source, destination, readonly) into rootfs."""
    for source, destination, readonly in volumes:
        target = secure_join(rootfs, destination)
        if os.path.isdir(source):
            _ensure_dir(target)
        else:
            _ensure_file(target)
        bind(source, target, readonly=readonly)


def pivot(rootfs):
    """Make rootfs the root and detach the old one."""
    # pivot_root(".", ".") stacks the old root on top of the new one, so no
    # put_old directory has to exist in the image (runc does the same).
    os.chdir(rootfs)
    ns.pivot_root(".", ".")
    ns.mount(None, ".", None, ns.MS_REC | ns.MS_SLAVE)
    ns.umount2(".", ns.MNT_DETACH)
    os.chdir("/")


def setup_rootfs(rootfs, etc_files=None, volumes=(), sysfs=True):
    """Mount proc, dev, sys, masks, /etc files and volumes under rootfs."""
    mount_proc(rootfs)
    mount_dev(rootfs)
    if sysfs:
        mount_sys(rootfs)
    mask_paths(rootfs)
    if etc_files:
        mount_etc_files(rootfs, etc_files)
    mount_volumes(rootfs, volumes)


def resolv_conf(filter_loopback=True, path="/etc/resolv.conf"):
    """Return the host's resolv.conf text, without loopback nameservers if asked."""
    # A container in its own network namespace cannot reach the host's
    # 127.0.0.53 stub; systemd-resolved keeps the real upstreams here.
    candidates = [path]
    if filter_loopback:
        candidates.append("/run/systemd/resolve/resolv.conf")
    text = ""
    for candidate in candidates:
        try:
            with open(candidate) as f:
                raw = f.read()
        except OSError:
            continue
        lines = []
        servers = 0
        for line in raw.splitlines():
            fields = line.split()
            if fields[:1] == ["nameserver"] and len(fields) > 1:
                if filter_loopback and (fields[1].startswith("127.")
                                        or fields[1] == "::1"):
                    continue
                servers += 1
            lines.append(line)
        text = "\n".join(lines) + "\n"
        if servers:
            break
    return text


def write_etc_files(directory, hostname, ip=None, filter_loopback=True,
                    extra_hosts=()):
    """Write hosts, hostname and resolv.conf into directory; return name -> path."""
    os.makedirs(directory, exist_ok=True)
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if ip:
        hosts.append("%s\t%s" % (ip, hostname))
    else:
        hosts.append("127.0.1.1\t%s" % hostname)
    hosts.extend("%s\t%s" % (addr, name) for addr, name in extra_hosts)
    contents = {
        "hosts": "\n".join(hosts) + "\n",
        "hostname": hostname + "\n",
        "resolv.conf": resolv_conf(filter_loopback),
    }
    paths = {}
    for name, text in contents.items():
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        paths[name] = path
    return paths


def is_mountpoint_file(path):
    """Return True when path is an empty regular file (a bind target we made)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0
