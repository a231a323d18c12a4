"""Run one command isolated over an overlay of layers: the engine of build steps.

``run_isolated`` starts ``agent nsexec sandbox`` (a fresh single-threaded
interpreter, see nsexec.py), which unshares mount, PID, UTS and IPC namespaces
(and network for ``network="none"``), mounts the overlay and a minimal /dev,
/proc and /sys, pivots into it and runs the command under a reaping PID 1.
Nothing is mounted on the host: the mounts live and die with the namespace.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time

from remote_agent import mounts, nsexec
from remote_agent.errors import CommandFailed, InvalidRequest

ETC_FILES = ("hosts", "hostname", "resolv.conf")


class SandboxTimeout(CommandFailed):
    """A sandboxed command ran past its deadline and was killed."""


class SandboxCancelled(CommandFailed):
    """A sandboxed command was killed because its caller cancelled."""


def _exists_in_image(lowerdirs, upperdir, relpath):
    """Return True when relpath exists in the upper dir or any lower layer."""
    for base in [upperdir] + list(lowerdirs):
        if os.path.lexists(os.path.join(base, relpath)):
            return True
    return False


def _planned_mountpoints(lowerdirs, upperdir):
    """Return the paths the sandbox will create in upperdir as mount targets."""
    # Mounting over /proc or binding over /etc/hosts creates the target, or
    # copies its directory up, in upperdir even when a lower layer has it.
    # What is still empty afterwards is removed so it never reaches a layer.
    created = []
    for top in ("proc", "dev", "sys", "etc"):
        if not os.path.lexists(os.path.join(upperdir, top)):
            created.append(top)
    for name in ETC_FILES:
        rel = "etc/" + name
        if not _exists_in_image(lowerdirs, upperdir, rel):
            created.append(rel)
    return created


def _remove_mountpoints(upperdir, created):
    """Remove the mount targets the sandbox left empty in upperdir."""
    for rel in reversed(created):
        path = os.path.join(upperdir, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                os.rmdir(path)
            except OSError:
                pass  # the command wrote something there: keep it
        elif mounts.is_mountpoint_file(path):
            os.unlink(path)


def _kill(proc):
    """Kill the helper's whole process group and reap it."""
    # The helper's PID 1 child has PDEATHSIG=SIGKILL and the kernel kills a PID
    # namespace when its init dies, so this takes every sandboxed process down.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_isolated(lowerdirs, upperdir, workdir_dir, argv, env, cwd="/", user="",
                 hostname="build", timeout=None, on_output=None, network="host",
                 volumes=(), cancel=None, no_new_privs=False):
    """Run argv over an overlay of lowerdirs (top first); return its exit code.

    Writes land in upperdir (workdir_dir is overlayfs's work dir, on the same
    filesystem). stdout and stderr are passed to on_output as byte chunks as
    they come. network is "host" (share the host's network, for package
    installs) or "none" (only loopback). volumes are (host_path, path, readonly).
    Raises SandboxTimeout after timeout seconds and SandboxCancelled when the
    threading.Event cancel is set; every process is killed either way.
    """
    if network not in ("host", "none"):
        raise InvalidRequest("sandbox network must be 'host' or 'none', not %r"
                             % (network,))
    if not argv:
        raise InvalidRequest("sandbox needs a command to run, got %r" % (argv,))
    for path in (upperdir, workdir_dir):
        os.makedirs(path, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".sandbox-",
                               dir=os.path.dirname(os.path.abspath(upperdir)))
    created = _planned_mountpoints(lowerdirs, upperdir)
    try:
        merged = os.path.join(scratch, "merged")
        os.mkdir(merged)
        etc_files = mounts.write_etc_files(
            os.path.join(scratch, "etc"), hostname,
            filter_loopback=(network != "host"))
        spec = {
            "lowerdirs": [os.path.abspath(p) for p in lowerdirs],
            "upperdir": os.path.abspath(upperdir),
            "workdir": os.path.abspath(workdir_dir),
            "empty_lower": os.path.join(scratch, "empty"),
            "merged": merged,
            "etc_files": etc_files,
            "volumes": [list(v) for v in volumes],
            "argv": list(argv),
            "env": env if isinstance(env, dict) else list(env or ()),
            "cwd": cwd or "/",
            "user": user or "",
            "hostname": hostname,
            "network": network,
            "no_new_privs": no_new_privs,
        }
        return _run_helper(spec, timeout, on_output, cancel)
    finally:
        _remove_mountpoints(os.path.abspath(upperdir), created)
        shutil.rmtree(scratch, ignore_errors=True)


def _run_helper(spec, timeout, on_output, cancel):
    """Start the nsexec sandbox helper, pump its output, enforce the deadline."""
    helper, env = nsexec.agent_argv("nsexec", "sandbox")
    proc = subprocess.Popen(helper, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, close_fds=True,
                            start_new_session=True)
    try:
        proc.stdin.write(json.dumps(spec).encode("utf-8"))
        proc.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while True:
            wait = 0.2
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            ready, _, _ = select.select([fd], [], [], wait)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                if on_output is not None:
                    on_output(chunk)
            if deadline is not None and time.monotonic() >= deadline:
                _kill(proc)
                raise SandboxTimeout(spec["argv"], 124, message=(
                    "%r ran past its %ss timeout and was killed"
                    % (" ".join(spec["argv"]), timeout)))
            if cancel is not None and cancel.is_set():
                _kill(proc)
                raise SandboxCancelled(spec["argv"], 130, message=(
                    "%r was cancelled and killed" % " ".join(spec["argv"])))
        return proc.wait()
    finally:
        if proc.poll() is None:
            _kill(proc)
        proc.stdout.close()
