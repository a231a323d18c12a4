#!/usr/bin/env python3
"""Make the base rootfs tarballs the example playbooks build FROM.

    playbooks/make_rootfs.py busybox [--out PATH]   a tiny rootfs from /bin/busybox
    playbooks/make_rootfs.py debian [--out PATH]    Debian bookworm minbase + python3

Both are idempotent: an existing tarball is left alone. The tarball is written to a
temporary name and renamed, so an interrupted run never leaves a half tarball.
debootstrap's output goes to a log beside the tarball (PATH.log); only its tail is
printed, and only when debootstrap fails.
"""

import argparse
import glob
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = {
    "busybox": os.path.join(HERE, "busybox", "rootfs", "busybox.tar.gz"),
    "debian": os.path.join(HERE, "hello", "rootfs", "debian-bookworm.tar.gz"),
}
BUSYBOX = "/bin/busybox"
SUITE = "bookworm"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# python3 runs the hello app; procps gives the README's `exec ... ps` a ps.
DEBIAN_PACKAGES = ("python3-minimal", "procps")
LOG_TAIL_LINES = 30

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n"


def main(argv=None):
    """Parse the command line and make the tarball it names."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(DEFAULT_OUT))
    parser.add_argument("--out", help="tarball path (default: %(default)s)")
    args = parser.parse_args(argv)
    out = args.out or DEFAULT_OUT[args.kind]
    if os.path.exists(out):
        print("exists: %s" % out)
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if args.kind == "busybox":
        make_busybox(out)
    else:
        make_debian(out)
    print("created: %s" % out)
    return 0


def make_busybox(out, busybox=BUSYBOX):
    """Write a busybox rootfs tarball to out: the binary, applet links, /etc."""
    if not os.path.exists(out):
        _write_atomically(out, lambda tmp: _busybox_tar(tmp, busybox))
    return out


def _busybox_tar(path, busybox):
    """Write the busybox rootfs as a reproducible gzip tarball at path."""
    listing = subprocess.run(
        [busybox, "--list-full"], check=True, stdout=subprocess.PIPE,
        universal_newlines=True,
    ).stdout.split()
    dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "dev",
            "proc", "sys", "var", "var/www", "srv"}
    links = {}
    for applet in listing:
        applet = applet.strip("/")
        if applet and applet != "bin/busybox":
            links[applet] = "/bin/busybox"
            if os.path.dirname(applet):
                dirs.add(os.path.dirname(applet))

    # gzip stamps the time and file name into its header unless told otherwise.
    with open(path, "wb") as out, gzip.GzipFile(
        filename="", fileobj=out, mode="wb", mtime=0
    ) as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(dirs):
            tar.addfile(_member(name, tarfile.DIRTYPE, 0o755))
        tar.addfile(_member("tmp", tarfile.DIRTYPE, 0o1777))
        with open(busybox, "rb") as f:
            data = f.read()
        tar.addfile(_member("bin/busybox", tarfile.REGTYPE, 0o755, len(data)),
                    io.BytesIO(data))
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP),
                           ("etc/hostname", "busybox\n")):
            raw = text.encode()
            tar.addfile(_member(name, tarfile.REGTYPE, 0o644, len(raw)),
                        io.BytesIO(raw))
        for name in sorted(links):
            info = _member(name, tarfile.SYMTYPE, 0o777)
            info.linkname = links[name]
            tar.addfile(info)


def _member(name, kind, mode, size=0):
    """Return a root-owned TarInfo with a fixed mtime, so the tarball reproduces."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def make_debian(out, mirror=None):
    """Write a Debian bookworm minbase rootfs with python3-minimal and procps to out."""
    if os.path.exists(out):
        return out
    if shutil.which("debootstrap") is None:
        sys.exit("debootstrap is not installed: apt-get install debootstrap")
    mirror = mirror or apt_mirror()
    log = out + ".log"
    print("debootstrap %s from %s (about a minute); log: %s" % (SUITE, mirror, log))
    work = tempfile.mkdtemp(prefix="mockerops-debootstrap-")
    try:
        target = os.path.join(work, "rootfs")
        with open(log, "wb") as f:
            code = subprocess.run(
                ["debootstrap", "--variant=minbase",
                 "--include=" + ",".join(DEBIAN_PACKAGES), SUITE, target, mirror],
                stdout=f, stderr=subprocess.STDOUT,
            ).returncode
        if code != 0:
            sys.exit("debootstrap exited %d; last lines of %s:\n%s"
                     % (code, log, _tail(log, LOG_TAIL_LINES)))
        _clean_debian(target)
        _write_atomically(out, lambda tmp: subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", target, "-czf", tmp, "."],
            check=True,
        ))
    finally:
        _remove_tree(work)
    return out


def _tail(path, lines):
    """Return the last lines of a text file."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def apt_mirror():
    """Return the Debian mirror this machine's apt sources use for the main archive."""
    for path in ["/etc/apt/sources.list"] + sorted(
        glob.glob("/etc/apt/sources.list.d/*")
    ):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        for uri in re.findall(r"^\s*URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+%s\s" % SUITE, text, re.M
        ):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return FALLBACK_MIRROR


def _clean_debian(target):
    """Drop apt's package cache and lists, which only make the tarball bigger."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*"):
        for path in glob.glob(os.path.join(target, pattern)):
            os.unlink(path)


def _write_atomically(out, write):
    """Call write(tmp) for a temporary path beside out, then rename it to out."""
    tmp = "%s.tmp-%d" % (out, os.getpid())
    try:
        write(tmp)
        os.rename(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_tree(path):
    """Remove a debootstrap tree, unmounting anything debootstrap left in it."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for point in sorted(mounts, reverse=True):
        if point == path or point.startswith(path + "/"):
            subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
