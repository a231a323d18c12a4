"""Processes that live inside namespaces: the sandbox helper, PID 1, exec.

The agent serves calls from many threads, and after fork only async-signal-safe
work is sound in a threaded process (and setns(CLONE_NEWNS) is refused to one).
So anything that must enter namespaces runs in a fresh, single-threaded
interpreter started as ``agent nsexec MODE``:

    nsexec sandbox          read a JSON spec on stdin, run a command isolated
    nsexec exec PID         read a JSON spec on stdin, run it in PID's namespaces

The same module holds the pieces the supervisor shares: the container's PID 1
loop (reap every child, forward signals, exit with the main command's status)
and the last steps before execve (user, capabilities, no_new_privs).
"""

import fcntl
import json
import os
import select
import signal
import struct
import sys
import time
import termios

from remote_agent import mounts
from remote_agent import namespaces as ns

# ioctls of the pty master (asm-generic values: x86, arm, arm64, riscv, s390);
# Python's termios does not export them.
TIOCSPTLCK = getattr(termios, "TIOCSPTLCK", 0x40045431)
TIOCGPTN = getattr(termios, "TIOCGPTN", 0x80045430)
PTY_DRAIN = 0.5

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def agent_argv(*args):
    """Return (argv, env) that start this agent again in another mode."""
    import remote_agent

    home = os.path.dirname(os.path.dirname(os.path.abspath(remote_agent.__file__)))
    env = dict(os.environ)
    # -S skips site: the agent needs only the standard library, and site's
    # .pth processing costs a new interpreter more than all else it does.
    if os.path.isfile(home):
        # Running from the zipapp: start the same archive.
        return [sys.executable, "-S", home] + list(args), env
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = home + (os.pathsep + path if path else "")
    return [sys.executable, "-S", "-m", "remote_agent"] + list(args), env


def exit_code(status):
    """Return a shell-style exit code (128+signal when killed) for a wait status."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 255


def _read_table(path):
    """Return the colon-separated rows of an /etc/passwd-style file."""
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if ":" in line]
    except OSError:
        return []


def resolve_user(spec):
    """Return (uid, gid, groups, home) for "name", "uid", "name:group" or "uid:gid".

    Names are looked up in the current root's /etc/passwd and /etc/group, so
    call this after pivot_root.
    """
    if not spec:
        return 0, 0, [], "/root"
    user, _, group = spec.partition(":")
    passwd = _read_table("/etc/passwd")
    groups = _read_table("/etc/group")
    entry = None
    for row in passwd:
        if len(row) >= 6 and (row[0] == user or row[2] == user):
            entry = row
            break
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    elif user.isdigit():
        uid, gid, home = int(user), int(user), "/"
    else:
        raise LookupError("no user %r in the container's /etc/passwd" % user)
    if group:
        match = [row for row in groups if len(row) >= 3
                 and (row[0] == group or row[2] == group)]
        if match:
            gid = int(match[0][2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise LookupError("no group %r in the container's /etc/group" % group)
    name = entry[0] if entry else None
    extra = sorted({int(row[2]) for row in groups
                    if len(row) >= 4 and name and name in row[3].split(",")})
    return uid, gid, extra, home


def build_env(env, home="/root"):
    """Return env (list of "K=V" or dict) as a dict with PATH and HOME filled in."""
    if isinstance(env, dict):
        result = dict(env)
    else:
        result = {}
        for item in env or ():
            key, _, value = item.partition("=")
            result[key] = value
    result.setdefault("PATH", DEFAULT_PATH)
    result.setdefault("HOME", home)
    return result


def exec_command(argv, env, cwd="/", user="", caps=ns.DEFAULT_CAPS,
                 no_new_privs=True, pdeathsig=None):
    """Drop privileges as configured and execve argv; never return.

    Runs in the forked child that becomes the user's process. On failure it
    writes the reason to stderr and exits 127 (not found) or 126, like a shell.
    """
    try:
        uid, gid, groups, home = resolve_user(user)
        environ = build_env(env, home)
        keep = ns.cap_mask(caps)
        # The bounding set needs CAP_SETPCAP, which a switch of uid removes.
        ns.drop_bounding_set(keep)
        if user:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        try:
            ns.prctl(ns.PR_CAP_AMBIENT, ns.PR_CAP_AMBIENT_CLEAR_ALL)
        except OSError:
            pass
        if os.getuid() == 0:
            ns.capset(keep, keep, keep)
        if no_new_privs:
            ns.set_no_new_privs()
        if pdeathsig:
            # Set after the uid switch, which clears it (prctl(2)).
            ns.set_pdeathsig(pdeathsig)
        if not os.path.isdir(cwd):
            os.makedirs(cwd, 0o755)
        os.chdir(cwd)
        for sig in FORWARDED_SIGNALS + (signal.SIGPIPE,):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execvpe(argv[0], argv, environ)
    except FileNotFoundError as exc:
        _die(127, "mockerops: cannot run %r: %s\n" % (argv[0], exc))
    except Exception as exc:  # anything here must end this child, never return
        _die(126, "mockerops: cannot run %r: %s\n" % (argv[0] if argv else "", exc))


def _die(code, message):
    """Write message to stderr and leave at once, skipping interpreter cleanup."""
    try:
        os.write(2, message.encode("utf-8", "replace"))
    finally:
        os._exit(code)


def forward_signals(pid):
    """Pass the signals a container's main process should get on to pid."""

    def forward(signum, frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)


def init_loop(main_pid):
    """Act as PID 1: forward signals to main_pid, reap all, return its exit code."""
    forward_signals(main_pid)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 255
        if pid == main_pid:
            # When PID 1 exits the kernel SIGKILLs the rest of the namespace.
            return exit_code(status)


def sandbox_main(spec):
    """Run spec["argv"] isolated over an overlay; exit with its status."""
    ns.set_pdeathsig(signal.SIGKILL)
    flags = ns.CLONE_NEWNS | ns.CLONE_NEWPID | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC
    if spec.get("network") == "none":
        flags |= ns.CLONE_NEWNET
    ns.unshare(flags)
    pid = os.fork()
    if pid == 0:
        try:
            _sandbox_init(spec)
        except BaseException as exc:
            _die(125, "mockerops: sandbox setup failed: %s\n" % exc)
        os._exit(255)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return exit_code(status)
        except ChildProcessError:
            return 255


def _sandbox_init(spec):
    """Be PID 1 of the sandbox: build the root, start the command, reap."""
    ns.set_pdeathsig(signal.SIGKILL)
    merged = spec["merged"]
    mounts.make_private()
    mounts.mount_overlay(spec["lowerdirs"], spec["upperdir"], spec["workdir"],
                         merged, empty_lower=spec.get("empty_lower"))
    mounts.setup_rootfs(merged, etc_files=spec.get("etc_files"),
                        volumes=[tuple(v) for v in spec.get("volumes", ())])
    ns.sethostname(spec.get("hostname") or "build")
    if spec.get("network") == "none":
        ns.set_link_up("lo")
    mounts.pivot(merged)
    pid = os.fork()
    if pid == 0:
        exec_command(spec["argv"], spec.get("env") or [], spec.get("cwd") or "/",
                     spec.get("user") or "", caps=spec.get("caps", ns.DEFAULT_CAPS),
                     no_new_privs=spec.get("no_new_privs", False))
    ns.set_process_name("mockerops-init")
    os._exit(init_loop(pid))


def _read_spec(fd=0):
    """Read the JSON spec from fd; stdin is then pointed at /dev/null."""
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    if fd == 0:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    else:
        os.close(fd)
    return json.loads(data.decode("utf-8"))


def exec_main(pid, spec_fd):
    """Join the namespaces of container PID 1 pid and run the spec's command."""
    spec = _read_spec(spec_fd)
    # Opened while the host's /sys is still in view; the child writes itself
    # in so only the command, not this helper, counts against the limits.
    procs = [os.open(p, os.O_WRONLY) for p in spec.get("cgroup_procs", ())]
    ns.join_namespaces(pid)
    master = slave_path = None
    if spec.get("tty"):
        master, slave_path = _open_container_pty()
    child = os.fork()
    if child == 0:
        try:
            for fd in procs:
                os.write(fd, b"0")
                os.close(fd)
            if master is not None:
                os.close(master)
                os.setsid()
                slave = os.open(slave_path, os.O_RDWR)
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for target in (0, 1, 2):
                    os.dup2(slave, target)
                os.close(slave)
        except BaseException as exc:
            _die(126, "mockerops: exec setup failed: %s\n" % exc)
        exec_command(spec["argv"], spec.get("env") or [], spec.get("cwd") or "/",
                     spec.get("user") or "", no_new_privs=True,
                     pdeathsig=signal.SIGKILL)
    for fd in procs:
        os.close(fd)

    forward_signals(child)
    if master is not None:
        return _relay_pty(master, child)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            return exit_code(status)
        except ChildProcessError:
            return 255


def _open_container_pty():
    """Open a pty pair on the container's own devpts; return (master, slave path).

    The pty must come from the container's devpts instance: one made by the
    agent on the host would be a /dev/pts/N the container cannot see, so the
    command would have a terminal that ttyname() and tty(1) cannot name.
    """
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("i", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    return master, "/dev/pts/%d" % number


def _relay_pty(master, child):
    """Copy our stdin to the pty and the pty to our stdout until child exits."""
    if os.isatty(0):
        # The agent's pty in front of us already applies a line discipline;
        # pass bytes through untouched so the command's pty is the only one.
        attrs = termios.tcgetattr(0)
        attrs[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(0, termios.TCSANOW, attrs)
    watched = [0, master]
    status = drain_until = None
    # A background process of the command may hold the pty open: once the
    # command has exited, drain its output for PTY_DRAIN seconds at most.
    while status is None or (master in watched and time.monotonic() < drain_until):
        try:
            ready, _, _ = select.select(watched, [], [], 0.1)
        except InterruptedError:
            ready = []
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""  # EIO: every holder of the slave has closed it
            if not chunk:
                watched.remove(fd)
                if fd == 0 and status is None:
                    os.write(master, b"\x04")  # end of input: EOF for the command
                continue
            os.write(1 if fd == master else master, chunk)
        if status is None:
            done, raw = os.waitpid(child, os.WNOHANG)
            if done:
                status = raw
                drain_until = time.monotonic() + PTY_DRAIN
                if 0 in watched:
                    watched.remove(0)
    return exit_code(status)


def main(argv):
    """Dispatch ``nsexec MODE ...``."""
    if not argv:
        sys.stderr.write("usage: nsexec {sandbox,exec PID}\n")
        return 2
    mode = argv[0]
    if mode == "sandbox":
        return sandbox_main(_read_spec())
    if mode == "exec" and len(argv) == 3:
        return exec_main(int(argv[1]), int(argv[2]))
    sys.stderr.write("nsexec: unknown mode %r\n" % mode)
    return 2
