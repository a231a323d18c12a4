"""Thin ctypes wrappers for the Linux calls that build a container.

Every wrapper raises OSError carrying errno and a message that names the call and
its arguments, so a failure deep in a container setup says what was refused.
Only the standard library is used; nothing here runs a subprocess.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import platform
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

CAPS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3,
    "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11,
    "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19,
    "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27,
    "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30, "SETFCAP": 31,
}

# The set Docker grants a container by default.
DEFAULT_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
    "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
    "AUDIT_WRITE",
)

_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126},
    "aarch64": {"pivot_root": 41, "capset": 91},
    "armv7l": {"pivot_root": 218, "capset": 185},
    "ppc64le": {"pivot_root": 203, "capset": 184},
    "s390x": {"pivot_root": 217, "capset": 185},
    "riscv64": {"pivot_root": 41, "capset": 91},
}

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _check(ret, call):
    """Raise OSError naming call when a libc function returned -1."""
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (call, os.strerror(err)))
    return ret


def _enc(value):
    """Return value as bytes for a C string argument, or None."""
    if value is None:
        return None
    return os.fsencode(value)


def _syscall_number(name):
    """Return this machine's number for syscall name."""
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise OSError(errno.ENOSYS, "%s: unknown syscall number on %s"
                      % (name, platform.machine()))
    return table[name]


def unshare(flags):
    """Move the calling process into new namespaces chosen by flags."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare(%#x)" % flags)


def setns(fd, nstype=0):
    """Join the namespace that the open file descriptor fd refers to."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)),
           "setns(fd=%d, %#x)" % (fd, nstype))


def mount(source, target, fstype=None, flags=0, data=None):
    """Mount source on target; fstype and data as for mount(2)."""
    ret = _libc.mount(_enc(source), _enc(target), _enc(fstype),
                      ctypes.c_ulong(flags), _enc(data))
    _check(ret, "mount(%r, %r, %r, %#x, %r)" % (source, target, fstype, flags, data))


def umount2(target, flags=0):
    """Unmount target; MNT_DETACH makes it lazy."""
    _check(_libc.umount2(_enc(target), ctypes.c_int(flags)),
           "umount2(%r, %d)" % (target, flags))


def pivot_root(new_root, put_old):
    """Make new_root the root of this mount namespace, moving the old one to put_old."""
    # glibc has no wrapper, so go through syscall(2) with the arch's number.
    ret = _libc.syscall(ctypes.c_long(_syscall_number("pivot_root")),
                        ctypes.c_char_p(_enc(new_root)),
                        ctypes.c_char_p(_enc(put_old)))
    _check(ret, "pivot_root(%r, %r)" % (new_root, put_old))


def sethostname(name):
    """Set the hostname of the current UTS namespace."""
    raw = _enc(name)
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))),
           "sethostname(%r)" % name)


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    """Call prctl(2) and return its result."""
    ret = _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2),
                      ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                      ctypes.c_ulong(arg5))
    return _check(ret, "prctl(%d, %d)" % (option, arg2))


def set_no_new_privs():
    """Forbid this process and its children from gaining privileges on execve."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def set_pdeathsig(signum):
    """Ask the kernel to send signum to this process when its parent dies."""
    prctl(PR_SET_PDEATHSIG, signum)


def set_process_name(name):
    """Set this process's comm name (what ps shows), cut to 15 bytes."""
    buf = ctypes.create_string_buffer(_enc(name)[:15])
    _check(_libc.prctl(ctypes.c_int(PR_SET_NAME), buf, 0, 0, 0),
           "prctl(PR_SET_NAME, %r)" % name)


def set_child_subreaper():
    """Adopt orphaned descendants instead of letting init inherit them."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def last_cap():
    """Return the highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPS.values()) + 9


def cap_mask(names):
    """Return the 64-bit mask of the capability names (with or without CAP_)."""
    mask = 0
    for name in names:
        key = name.upper()
        if key.startswith("CAP_"):
            key = key[4:]
        if key not in CAPS:
            raise ValueError("unknown capability %r" % name)
        mask |= 1 << CAPS[key]
    return mask


def drop_bounding_set(keep_mask):
    """Drop every capability outside keep_mask from the bounding set."""
    for cap in range(last_cap() + 1):
        if keep_mask & (1 << cap):
            continue
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            # Kernels older than the header list reject numbers they lack.
            if exc.errno != errno.EINVAL:
                raise


def capset(effective, permitted, inheritable):
    """Set this thread's capability sets from 64-bit masks."""
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = struct.pack(
        "IIIIII",
        effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
        effective >> 32, permitted >> 32, inheritable >> 32,
    )
    hbuf = ctypes.create_string_buffer(header, len(header))
    dbuf = ctypes.create_string_buffer(data, len(data))
    ret = _libc.syscall(ctypes.c_long(_syscall_number("capset")), hbuf, dbuf)
    _check(ret, "capset(eff=%#x, perm=%#x)" % (effective, permitted))


def drop_capabilities(names=DEFAULT_CAPS):
    """Cut bounding, ambient, permitted and effective sets down to names."""
    keep = cap_mask(names)
    drop_bounding_set(keep)
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # ambient capabilities arrived in 4.3
    if os.getuid() == 0:
        # After a switch to another uid the kernel already emptied these sets,
        # and capset cannot raise them again.
        capset(keep, keep, keep)


def set_link_up(name):
    """Bring network interface name up with SIOCSIFFLAGS (no ip binary needed)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, siocgifflags, req))[1]
        req = struct.pack("16sH14x", name.encode(), flags | iff_up)
        fcntl.ioctl(sock, siocsifflags, req)
    except OSError as exc:
        raise OSError(exc.errno, "ioctl(SIOCSIFFLAGS, %r up): %s"
                      % (name, exc.strerror))
    finally:
        sock.close()


def join_namespaces(pid, kinds=("ipc", "uts", "net", "pid", "mnt")):
    """Join the namespaces of process pid, mount namespace last.

    All descriptors are opened first: once the mount namespace changes,
    /proc/<pid> may name something else. Joining a PID namespace affects only
    children forked afterwards (setns(2)), so the caller must fork next.
    """
    types = {"ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "net": CLONE_NEWNET,
             "pid": CLONE_NEWPID, "mnt": CLONE_NEWNS, "cgroup": CLONE_NEWCGROUP}
    fds = []
    try:
        for kind in kinds:
            path = "/proc/%d/ns/%s" % (pid, kind)
            fds.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
        for kind, fd in fds:
            setns(fd, types[kind])
    finally:
        for _, fd in fds:
            os.close(fd)
