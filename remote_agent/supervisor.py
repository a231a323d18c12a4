"""The supervisor: one detached process per running container.

Started as ``agent supervise ROOT ID`` in a new session with stdio on
/dev/null, it forks once more so it is reparented away from the SSH session.
It then loops: set up the network and cgroup, start the container's PID 1 in
new mount, PID, network, UTS and IPC namespaces, copy its stdout and stderr to
the log, record the exit, tear the network and cgroup down, and apply the
restart policy. PID 1 holds PR_SET_PDEATHSIG, so killing the supervisor kills
the container instead of leaving it unwatched.

The log uses the CRI line format, ``<time> <stream> <F|P> <bytes>``: F ends a
line, P is a piece of a longer or unterminated one. At 10 MB the log moves to
``log.1`` (one old file kept).
"""

import json
import os
import select
import signal
import sys
import time
import traceback

from remote_agent import cgroups, containers, mounts, net, nsexec
from remote_agent import namespaces as ns
from remote_agent import util

LOG_MAX_BYTES = 10 * 1024 * 1024
PARTIAL_MAX = 16384
RESTART_DELAY_CAP = 10.0
CHILD_FLAGS = ns.CLONE_NEWNS | ns.CLONE_NEWNET | ns.CLONE_NEWUTS | ns.CLONE_NEWIPC


def timestamp():
    """Return the current UTC time as RFC 3339 with microseconds."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + (
        ".%06dZ" % int((now % 1) * 1e6))


class LogWriter:
    """Append a container's output to its log in CRI format, rotating by size."""

    def __init__(self, path, max_bytes=LOG_MAX_BYTES):
        self.path = path
        self.max_bytes = max_bytes
        self.partial = {"stdout": b"", "stderr": b""}
        self.file = open(path, "ab")

    def write(self, stream, data):
        """Record a chunk of stream's output."""
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        rest = lines.pop()
        for line in lines:
            self._record(stream, b"F", line)
        if len(rest) >= PARTIAL_MAX:
            self._record(stream, b"P", rest)
            rest = b""
        self.partial[stream] = rest

    def flush(self):
        """Record unterminated output as a partial line."""
        for stream, rest in self.partial.items():
            if rest:
                self._record(stream, b"P", rest)
            self.partial[stream] = b""
        self.file.flush()

    def _record(self, stream, tag, content):
        """Write one log line, rotating first when the file is full."""
        if self.file.tell() >= self.max_bytes:
            self.file.close()
            os.replace(self.path, self.path + ".1")
            self.file = open(self.path, "ab")
        self.file.write(b"%s %s %s %s\n" % (timestamp().encode(), stream.encode(),
                                            tag, content))
        self.file.flush()

    def close(self):
        """Flush and close the log."""
        self.flush()
        self.file.close()


def parse_log_line(line):
    """Return (stream, bytes) of one CRI log line, the newline restored for F."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    content = parts[3] if len(parts) == 4 else b""
    if parts[2] == b"F":
        content += b"\n"
    return parts[1].decode("ascii", "replace"), content


def read_log(directory, tail=None):
    """Return the (stream, bytes) records of a container's log and its old log."""
    lines = []
    for name in ("log.1", "log"):
        try:
            with open(os.path.join(directory, name), "rb") as f:
                lines.extend(f.read().splitlines(True))
        except FileNotFoundError:
            continue
    records = [r for r in (parse_log_line(line) for line in lines) if r]
    if tail is not None:
        # Count whole lines from the end; pieces (P) belong to the line after.
        count = 0
        start = len(records)
        while start > 0:
            if records[start - 1][1].endswith(b"\n"):
                if count == tail:
                    break
                count += 1
            start -= 1
        records = records[start:]
    return records


def follow_log(directory, on_record, running, cancelled=None, poll=0.2):
    """Pass records appended to the log to on_record until running() is False.

    Survives rotation: a new inode at the path means the old file was moved
    to log.1, so the rest of the old file is drained before switching.
    """
    path = os.path.join(directory, "log")
    f = open(path, "rb") if os.path.exists(path) else None
    if f is not None:
        f.seek(0, os.SEEK_END)
    pending = b""
    draining = False
    try:
        while True:
            data = f.read() if f is not None else b""
            if data:
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    record = parse_log_line(line + b"\n")
                    if record:
                        on_record(*record)
                continue
            try:
                inode = os.stat(path).st_ino
            except FileNotFoundError:
                inode = None
            moved = f is None or inode != os.fstat(f.fileno()).st_ino
            if inode is not None and moved:
                if f is not None:
                    f.close()
                f = open(path, "rb")
                pending = b""
                continue
            if cancelled is not None and cancelled.is_set():
                return
            if not running():
                if draining:
                    return
                # One more read: the last output may land just before the exit.
                draining = True
                continue
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def restart_wanted(policy, exit_code, restarts):
    """Return whether the restart policy asks for another run."""
    name = policy.get("name", "no")
    if name == "always":
        return True
    if name == "on-failure":
        limit = policy.get("max_retries") or 0
        return exit_code != 0 and (limit == 0 or restarts < limit)
    return False


class Supervisor:
    """Run and watch one container until it stops for good."""

    def __init__(self, root, container_id):
        self.root = root
        self.id = container_id
        self.dir = containers.container_dir(root, container_id)
        self.config = util.read_json(os.path.join(self.dir, "config.json"))
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def run(self):
        """Start the container, apply the restart policy, then clean up."""
        restarts = containers.read_state(self.root, self.id).get("restart_count", 0)
        delay = 0.1
        while True:
            code, error = self.run_once()
            state = containers.update_state(
                self.root, self.id, status="exited", pid=None, exit_code=code,
                finished_at=timestamp(), error=error)
            signal_ready()
            if state.get("desired") == "stopped" or error:
                break
            if not restart_wanted(self.config["restart"], code, restarts):
                break
            containers.update_state(self.root, self.id, status="restarting")
            if not self._sleep_unless_stopped(delay):
                containers.update_state(self.root, self.id, status="exited")
                break
            delay = min(delay * 2, RESTART_DELAY_CAP)
            restarts += 1
            containers.update_state(self.root, self.id, restart_count=restarts)
        containers.update_state(self.root, self.id, supervisor_pid=None,
                                supervisor_start=None)

    def _sleep_unless_stopped(self, seconds):
        """Sleep, returning False early when a stop was asked for."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if containers.read_state(self.root, self.id).get("desired") == "stopped":
                return False
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return containers.read_state(self.root, self.id).get("desired") != "stopped"

    def run_once(self):
        """Run the container once; return (exit code, setup error or None)."""
        cg = cgroups.Cgroup(self.id)
        log = LogWriter(os.path.join(self.dir, "log"))
        pid = None
        try:
            alloc = net.lookup(self.root, self.id)
            with util.file_lock(os.path.join(self.root, "net", "ipam.lock")):
                net.ensure_base(alloc["subnet"])
            cg.create(memory=self.config.get("memory"), cpus=self.config.get("cpus"),
                      pids_limit=self.config.get("pids_limit"))
            pid, channel, outputs = self._spawn(alloc, cg)
            try:
                self._await(channel, b"started")
            except BaseException:
                for fd in outputs:
                    os.close(fd)
                raise
            finally:
                os.close(channel[0])
            containers.update_state(self.root, self.id, status="running", pid=pid,
                                    pid_start=containers.proc_starttime(pid),
                                    started_at=timestamp(), finished_at=None,
                                    exit_code=None, error=None)
            signal_ready()
            self._pump(outputs, log)
            return self._reap(pid), None
        except Exception as exc:
            message = "container %s failed to start: %s" % (self.id[:12], exc)
            log.write("stderr", ("mockerops: %s\n" % message).encode())
            if pid is not None:
                _kill_quietly(pid)
                self._reap(pid)
            return 125, message
        finally:
            log.close()
            net.cleanup(self.id)
            try:
                cg.remove()
            except OSError:
                pass

    def _spawn(self, alloc, cg):
        """Fork the container's PID 1 in new namespaces; return pid, pipes."""
        to_child = os.pipe()
        from_child = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # New children of this process go into a fresh PID namespace; put it
        # back right after the fork so ip and iptables run in ours.
        ns.setns(self.own_pidns, ns.CLONE_NEWPID)
        ns.unshare(ns.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            close_ready()
            os.close(to_child[1])
            os.close(from_child[0])
            os.close(out_r)
            os.close(err_r)
            _container_init(self, alloc, cg, to_child[0], from_child[1], out_w, err_w)
            os._exit(255)
        ns.setns(self.own_pidns, ns.CLONE_NEWPID)
        os.close(to_child[0])
        os.close(from_child[1])
        os.close(out_w)
        os.close(err_w)
        try:
            self._await((from_child[0],), b"ready")
            host, peer = net.create_veth(self.id, pid)
            net.add_port_rules(self.id, alloc["ip"], alloc["ports"])
            go = {"peer": peer, "ip": alloc["ip"], "prefix": alloc["prefix"],
                  "gateway": alloc["gateway"]}
            os.write(to_child[1], json.dumps(go).encode() + b"\n")
        except BaseException:
            _kill_quietly(pid)
            self._reap(pid)
            for fd in (from_child[0], out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child[1])
        return pid, (from_child[0],), [out_r, err_r]

    def _await(self, channel, word):
        """Read one line from the child; raise with its message unless it is word."""
        fd = channel[0]
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        line = data.strip()
        if line == word:
            return
        raise RuntimeError(line.decode("utf-8", "replace") or
                           "container init exited during setup")

    def _pump(self, outputs, log):
        """Copy stdout and stderr to the log until both are closed."""
        names = {outputs[0]: "stdout", outputs[1]: "stderr"}
        open_fds = list(outputs)
        while open_fds:
            ready, _, _ = select.select(open_fds, [], [])
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    log.write(names[fd], chunk)
                else:
                    open_fds.remove(fd)
                    os.close(fd)
        log.flush()

    def _reap(self, pid):
        """Wait for pid; return its shell-style exit code."""
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                return nsexec.exit_code(status)
            except ChildProcessError:
                return 255


def _kill_quietly(pid):
    """SIGKILL pid, ignoring a process that is already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _container_init(sup, alloc, cg, go_fd, status_fd, out_w, err_w):
    """Be the container's PID 1: finish isolation, start the command, reap."""
    try:
        # Armed before reading "go": if the supervisor is already gone the read
        # sees EOF, and if it dies later the kernel kills us.
        ns.set_pdeathsig(signal.SIGKILL)
        ns.unshare(CHILD_FLAGS)
        os.write(status_fd, b"ready\n")
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(go_fd, 4096)
            if not chunk:
                os._exit(1)
            line += chunk
        os.close(go_fd)
        go = json.loads(line.decode())
        config = sup.config
        net.configure_inside(go["peer"], go["ip"], go["prefix"], go["gateway"])
        ns.sethostname(config["hostname"])
        rootfs = os.path.join(sup.dir, "merged")
        mounts.make_private()
        mounts.mount_overlay(containers.lowerdirs(sup.root, config),
                             os.path.join(sup.dir, "upper"),
                             os.path.join(sup.dir, "work"), rootfs,
                             empty_lower=os.path.join(sup.dir, "empty"))
        etc = mounts.write_etc_files(os.path.join(sup.dir, "etc"), config["hostname"],
                                     ip=go["ip"])
        volumes = [(v["source"], v["destination"], v["readonly"])
                   for v in config["volumes"]]
        mounts.setup_rootfs(rootfs, etc_files=etc, volumes=volumes)
        procs = [os.open(p, os.O_WRONLY) for p in cg.procs_files()]
        mounts.pivot(rootfs)
    except BaseException as exc:
        _report(status_fd, "setup failed: %s" % exc)
        os._exit(125)
    # Python pipes are close-on-exec: EOF on exec_r means the command has
    # joined its cgroup and reached execve (or died trying).
    exec_r, exec_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(exec_r)
        _start_command(config, procs, out_w, err_w)
    for fd in procs + [out_w, err_w, exec_w]:
        os.close(fd)
    while os.read(exec_r, 64):
        pass
    os.close(exec_r)
    ns.set_process_name("mockerops-init")
    os.write(status_fd, b"started\n")
    os.close(status_fd)
    os._exit(nsexec.init_loop(pid))


def _start_command(config, procs, out_w, err_w):
    """In the command's process: join the cgroup, wire stdio, drop privileges."""
    try:
        for fd in procs:
            # "0" moves the writer; only the command, not PID 1, is limited.
            os.write(fd, b"0")
            os.close(fd)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for fd in (null, out_w, err_w):
            if fd > 2:
                os.close(fd)
        os.setsid()
    except BaseException as exc:
        os.write(2, ("mockerops: cannot start command: %s\n" % exc).encode())
        os._exit(126)
    nsexec.exec_command(config["argv"], config["env"], config["workdir"] or "/",
                        config["user"], no_new_privs=True)


def _report(fd, message):
    """Send a one-line setup error to the supervisor."""
    try:
        os.write(fd, message.replace("\n", " ").encode("utf-8", "replace") + b"\n")
    except OSError:
        pass


_ready = {"fd": None}


def signal_ready():
    """Tell the agent waiting in containers.start that the state is settled."""
    fd = _ready["fd"]
    if fd is None:
        return
    _ready["fd"] = None
    try:
        os.write(fd, b"1")
    except OSError:
        pass
    os.close(fd)


def close_ready():
    """Drop the ready pipe in a child that must not hold it open."""
    fd, _ready["fd"] = _ready["fd"], None
    if fd is not None:
        os.close(fd)


def main(argv):
    """Supervise container argv[1] under state root argv[0]."""
    if len(argv) != 2:
        sys.stderr.write("usage: supervise ROOT ID\n")
        return 2
    root, container_id = argv
    ready = os.environ.pop(containers.READY_ENV, None)
    if ready and ready.isdigit():
        _ready["fd"] = int(ready)
        os.set_inheritable(_ready["fd"], False)
    if os.fork() != 0:
        os._exit(0)
    try:
        containers.update_state(root, container_id, supervisor_pid=os.getpid(),
                                supervisor_start=containers.proc_starttime(os.getpid()))
        Supervisor(root, container_id).run()
    except BaseException:
        try:
            containers.update_state(
                root, container_id, status="exited", pid=None,
                supervisor_pid=None, finished_at=timestamp(),
                error="supervisor failed: %s" % traceback.format_exc(limit=3))
        finally:
            signal_ready()
            os._exit(1)
    os._exit(0)
