"""Container verbs over RPC: container.run, list, inspect, stop, start, restart,
rm, prune, logs and exec.

The handlers are thin: each calls a plain function (here or in containers.py)
that other agent modules, such as deploy, call in-process with a state root.
"""

import json
import os
import select
import subprocess
import threading
import time
import tty

from remote_agent import cgroups, containers, nsexec, supervisor
from remote_agent.errors import Conflict, InvalidRequest, NotFound
from remote_agent.server import rpc

RUN_PARAMS = ("image", "name", "command", "env", "ports", "volumes", "workdir", "user",
              "hostname", "restart", "memory", "cpus", "pids_limit", "labels",
              "subnet")
EXEC_DRAIN = 2.0


def logs(root, ref, on_output, follow=False, tail=None, cancelled=None):
    """Pass a container's log to on_output(stream, bytes); follow until it stops."""
    if tail is not None and (not isinstance(tail, int) or tail < 0):
        raise InvalidRequest("tail must be a whole number >= 0, got %r" % (tail,))
    container_id = resolve_app_ref(root, ref)
    directory = containers.container_dir(root, container_id)
    records = supervisor.read_log(directory, tail)
    for stream, data in records:
        on_output(stream, data)
    if not follow:
        return

    def running():
        state = containers.refresh(root, container_id)
        return state.get("status") in containers.ACTIVE

    supervisor.follow_log(directory, on_output, running, cancelled)


def resolve_app_ref(root, ref):
    """Return the container ref names: a name or id, else an app container's.

    A deploy names containers <app>-<container>-<replica>-<hash>; users type the
    container's name from app.yaml (``exec web1 api ...``, ``logs web1 api``),
    so when nothing has that exact name, the first running replica labelled
    with it is taken.
    """
    try:
        return containers.resolve(root, ref)
    except NotFound:
        replicas = [
            c for c in containers.list_containers(
                root, all=False, labels={"mockerops.container": ref})
            if c.get("status") == "running"
        ]
        if not replicas:
            raise
        replicas.sort(key=lambda c: c.get("name", ""))
        return replicas[0]["id"]


def exec_in_container(root, ref, argv, on_output, env=None, tty=False,
                      read_stdin=None, workdir=None, user=None, cancelled=None):
    """Run argv in a running container; return its exit code.

    Output goes to on_output(stream, bytes) ("stdout", "stderr", or "stdout"
    for a TTY). With read_stdin (a callable taking a timeout and returning
    bytes, b"" at end or None when nothing came yet) the command gets stdin.
    """
    if not argv or not isinstance(argv, list) or not all(
            isinstance(a, str) for a in argv):
        raise InvalidRequest("exec needs argv as a non-empty list of strings, got %r"
                             % (argv,))
    container_id = resolve_app_ref(root, ref)
    config = containers.read_config(root, container_id)
    state = containers.refresh(root, container_id)
    pid = state.get("pid")
    if state.get("status") != "running" or not containers.alive(
            pid, state.get("pid_start")):
        raise Conflict("container %r is %s, not running; start it before exec"
                       % (config.get("name"), state.get("status", "created")),
                       container=container_id)
    spec = {
        "argv": argv,
        "env": containers._env_list(config.get("env"), env),
        "cwd": workdir or config.get("workdir") or "/",
        "user": user if user is not None else config.get("user") or "",
        "tty": bool(tty),
        "cgroup_procs": cgroups.Cgroup(container_id).procs_files(),
    }
    return _run_exec_helper(pid, spec, on_output, read_stdin, cancelled)


def _run_exec_helper(pid, spec, on_output, read_stdin, cancelled):
    """Start ``nsexec exec``, pump stdin and output; return the exit code."""
    spec_r, spec_w = os.pipe()
    helper, env = nsexec.agent_argv("nsexec", "exec", str(pid), str(spec_r))
    master = None
    if spec["tty"]:
        master, slave = os.openpty()
        # Raw from the start: the helper relays bytes to the container's own
        # pty, whose line discipline is the one the command should see.
        tty.setraw(slave)
        stdio = {"stdin": slave, "stdout": slave, "stderr": slave}
    else:
        stdio = {"stdin": subprocess.PIPE if read_stdin else subprocess.DEVNULL,
                 "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    try:
        proc = subprocess.Popen(helper, env=env, close_fds=True, pass_fds=(spec_r,),
                                start_new_session=True, **stdio)
    finally:
        os.close(spec_r)
        if master is not None:
            os.close(slave)
    try:
        os.write(spec_w, json.dumps(spec).encode("utf-8"))
    finally:
        os.close(spec_w)
    if master is not None:
        outputs = {master: "stdout"}
        stdin_fd = master if read_stdin else None
    else:
        outputs = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
        stdin_fd = proc.stdin.fileno() if read_stdin else None
    pump = None
    if stdin_fd is not None:
        pump = threading.Thread(target=_pump_stdin, daemon=True,
                                args=(stdin_fd, read_stdin, master is not None, proc))
        pump.start()
    try:
        _pump_output(outputs, on_output, proc, cancelled)
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if master is not None:
            os.close(master)


def _pump_output(outputs, on_output, proc, cancelled):
    """Forward output chunks until every output is closed (or the call cancels).

    A background process the command left behind may hold the output open;
    once the command itself has exited, drain for at most EXEC_DRAIN seconds.
    """
    open_fds = list(outputs)
    exited_at = None
    while open_fds:
        if cancelled is not None and cancelled.is_set():
            proc.kill()
            return
        ready, _, _ = select.select(open_fds, [], [], 0.1)
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""  # EIO: the pty's last holder closed it
            if chunk:
                on_output(outputs[fd], chunk)
            else:
                open_fds.remove(fd)
        if proc.poll() is not None:
            exited_at = exited_at or time.monotonic()
            if time.monotonic() - exited_at > EXEC_DRAIN:
                return


def _pump_stdin(fd, read_stdin, is_tty, proc):
    """Copy the caller's stdin to the command until end of input."""
    while proc.poll() is None:
        chunk = read_stdin(0.2)
        if chunk is None:
            continue
        if chunk == b"":
            if is_tty:
                os.write(fd, b"\x04")
            else:
                proc.stdin.close()
            return
        try:
            os.write(fd, chunk)
        except OSError:
            return


# -- handlers ----------------------------------------------------------------------


@rpc("container.run")
def rpc_run(ctx, **params):
    """Create and start a container; return its dict."""
    unknown = sorted(set(params) - set(RUN_PARAMS))
    if unknown:
        raise InvalidRequest("container.run got unknown params %s" % ", ".join(unknown))
    if not params.get("image"):
        raise InvalidRequest("container.run needs an image")
    return containers.run(ctx.root, **params)


@rpc("container.list")
def rpc_list(ctx, all=False, labels=None):
    """Return containers (running ones unless all), filtered by labels."""
    return containers.list_containers(ctx.root, all=all, labels=labels)


@rpc("container.inspect")
def rpc_inspect(ctx, name):
    """Return one container's dict with state and usage."""
    return containers.inspect(ctx.root, name)


@rpc("container.stop")
def rpc_stop(ctx, name, timeout=10):
    """Stop a container (SIGTERM, SIGKILL after timeout s)."""
    return containers.stop(ctx.root, name, timeout)


@rpc("container.start")
def rpc_start(ctx, name):
    """Start a stopped container."""
    return containers.start(ctx.root, name)


@rpc("container.restart")
def rpc_restart(ctx, name, timeout=10):
    """Stop and start a container."""
    return containers.restart(ctx.root, name, timeout)


@rpc("container.rm")
def rpc_rm(ctx, name, force=False):
    """Remove a container; running ones only with force."""
    return {"id": containers.rm(ctx.root, name, force)}


@rpc("container.prune")
def rpc_prune(ctx):
    """Remove every stopped container."""
    return {"removed": containers.prune(ctx.root)}


@rpc("container.logs")
def rpc_logs(ctx, name, follow=False, tail=None):
    """Stream a container's log as "output" events."""

    def emit(stream, data):
        ctx.emit("output", {"stream": stream}, blob=data)

    logs(ctx.root, name, emit, follow=follow, tail=tail, cancelled=ctx.cancelled)
    return {}


@rpc("container.exec")
def rpc_exec(ctx, name, argv, env=None, tty=False, interactive=False, workdir=None,
             user=None):
    """Run a command in a running container, streaming "output" events."""

    def emit(stream, data):
        ctx.emit("output", {"stream": stream}, blob=data)

    code = exec_in_container(ctx.root, name, argv, emit, env=env, tty=tty,
                             read_stdin=ctx.read_stdin if interactive else None,
                             workdir=workdir, user=user, cancelled=ctx.cancelled)
    return {"exit_code": code}
