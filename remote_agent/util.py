"""Small host helpers every agent module uses: atomic files, locks, commands."""

import contextlib
import errno
import fcntl
import json
import os
import subprocess
import tempfile

from remote_agent.errors import CommandFailed


def atomic_write(path, data, mode=0o644):
    """Write bytes or text to path through a temporary file, fsync and rename."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def fsync_dir(directory):
    """Flush a directory entry so a rename in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, obj, mode=0o644):
    """Write obj as JSON to path atomically, with file mode mode."""
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", mode=mode)


def read_json(path, default=None):
    """Return the JSON in path, or default when the file does not exist."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        return default


@contextlib.contextmanager
def file_lock(path, shared=False):
    """Hold an flock on path (created if missing) for the with-block."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def run(argv, check=True, input=None, timeout=120, env=None):
    """Run argv (never through a shell); return CompletedProcess with text output."""
    proc = subprocess.run(
        list(argv),
        input=input,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        env=env,
        universal_newlines=True,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, proc.stdout)
    return proc


MAX_SYMLINK_HOPS = 40  # as the kernel's MAXSYMLINKS


def resolve_in_root(path, locate, follow_last=True):
    """Return path, relative to an image root, with its symlinks resolved there.

    Links are followed as if the root were /, so an absolute or ../ target never
    leaves it. locate(rel) returns where rel is on the host (None or a missing
    path when it does not exist); the last component is followed only when
    follow_last. Raises OSError(ELOOP) after too many links.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done, hops = [], 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        found = locate("/".join(done + [part]))
        if found and os.path.islink(found) and (parts or follow_last):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise OSError(errno.ELOOP, "too many symlinks resolving %r" % path)
            target = os.readlink(found)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return "/".join(done)
