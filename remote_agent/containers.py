"""Container records and lifecycle: run, start, stop, restart, rm, list, prune.

A container lives in ``<root>/containers/<id>/``: ``config.json`` (what was
asked for, fixed at creation; it holds the env, deploy secrets included, so it
is mode 0600 under a ``containers/`` of mode 0700), ``state.json`` (what is
happening, rewritten atomically under ``lock``), ``log``, and the overlay's
``upper``/``work``.
Names are unique per host: creation checks and claims a name under
``<root>/locks/containers.lock``; a create that fails removes the record and so
frees the name. The running part is the supervisor (supervisor.py), one
detached process per container; a recorded running container whose supervisor
is gone (reboot, crash) is reported exited and its leftovers are removed.
"""

import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import time

from remote_agent import cgroups, layers, net, nsexec, util
from remote_agent.errors import Conflict, InvalidRequest, NotFound

STATUSES = ("created", "running", "exited", "restarting")
ACTIVE = ("starting", "running", "restarting")
START_TIMEOUT = 30.0
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# config.json holds env values (deploy puts secrets there): root's eyes only.
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def now():
    """Return the current UTC time as RFC 3339."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def container_dir(root, container_id):
    """Return the directory of a container's record."""
    return os.path.join(root, "containers", container_id)


def ensure_containers_dir(root):
    """Create ``<root>/containers`` mode 0700, tightening an older, wider one."""
    directory = os.path.join(root, "containers")
    os.makedirs(directory, PRIVATE_DIR, exist_ok=True)
    # makedirs applies the umask and leaves an existing directory as it was.
    if os.stat(directory).st_mode & 0o777 != PRIVATE_DIR:
        os.chmod(directory, PRIVATE_DIR)
    return directory


def _lock_path(root, container_id):
    """Return the lock file guarding a container's state."""
    return os.path.join(container_dir(root, container_id), "lock")


def read_state(root, container_id):
    """Return the container's state.json (empty dict when missing)."""
    return util.read_json(os.path.join(container_dir(root, container_id),
                                       "state.json"), {}) or {}


def update_state(root, container_id, **changes):
    """Apply changes to state.json atomically under the container's lock."""
    with util.file_lock(_lock_path(root, container_id)):
        state = read_state(root, container_id)
        state.update(changes)
        util.write_json(os.path.join(container_dir(root, container_id),
                                     "state.json"), state)
    return state


def read_config(root, container_id):
    """Return the container's config.json, or None when it has no record."""
    return util.read_json(os.path.join(container_dir(root, container_id),
                                       "config.json"))


def proc_starttime(pid):
    """Return pid's start time in clock ticks, or None when it does not run."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            raw = f.read()
    except (OSError, TypeError):
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def alive(pid, start):
    """Return True when pid runs and is the process that started at start."""
    return bool(pid) and start is not None and proc_starttime(pid) == start


# -- images ----------------------------------------------------------------------


def resolve_image(root, ref):
    """Return the manifest of image ref (name[:tag], id or unique id prefix)."""
    return layers.resolve_image(root, ref)


def lowerdirs(root, config):
    """Return the overlay lower dirs of a container's image, top layer first."""
    return [os.path.join(root, "layers", layer, "fs")
            for layer in reversed(config.get("layers") or [])]


# -- validation --------------------------------------------------------------------


def parse_restart(value):
    """Parse "no", "always", "unless-stopped" or "on-failure[:N]"."""
    text = str(value or "no").strip()
    name, _, count = text.partition(":")
    if name in ("no", "always", "unless-stopped") and not count:
        return {"name": "always" if name == "unless-stopped" else name,
                "max_retries": 0}
    if name == "on-failure":
        if count and (not count.isdigit() or int(count) < 0):
            raise InvalidRequest("restart %r: retries must be a number" % (value,))
        return {"name": "on-failure", "max_retries": int(count or 0)}
    raise InvalidRequest("restart %r is not no, always or on-failure[:N]" % (value,))


def parse_volume(root, spec):
    """Parse "src:dst[:ro|rw]"; src is a host path or a named volume."""
    parts = str(spec).split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not all(parts):
        raise InvalidRequest("volume %r is not source:destination[:ro]" % (spec,))
    source, destination = parts
    if not destination.startswith("/"):
        raise InvalidRequest("volume %r: destination must be absolute" % (spec,))
    if source.startswith("/"):
        if not os.path.exists(source):
            os.makedirs(source, 0o755)
    elif VOLUME_NAME_RE.match(source):
        source = os.path.join(root, "volumes", source)
        os.makedirs(source, 0o755, exist_ok=True)
    else:
        raise InvalidRequest("volume %r: %r is neither an absolute path nor a "
                             "volume name" % (spec, source))
    return {"source": source, "destination": destination, "readonly": mode == "ro"}


def _env_list(base, extra):
    """Merge env given as "K=V" lists or dicts, later keys winning, order kept."""
    merged = {}
    items = []
    for source in (base, extra):
        if isinstance(source, dict):
            items.extend("%s=%s" % kv for kv in source.items())
        else:
            items.extend(source or ())
    for item in items:
        if "=" not in item:
            raise InvalidRequest("env entry %r is not KEY=VALUE" % (item,))
        key, _, value = item.partition("=")
        merged.pop(key, None)
        merged[key] = value
    return ["%s=%s" % kv for kv in merged.items()]


def build_config(root, image, name=None, command=None, env=None, ports=None,
                 volumes=None, workdir=None, user=None, hostname=None,
                 restart="no", memory=None, cpus=None, pids_limit=None,
                 labels=None, subnet=None):
    """Validate a run request and return the container config (no side effects
    but named volume directories)."""
    if name is not None and not NAME_RE.match(str(name)):
        raise InvalidRequest("container name %r must match %s"
                             % (name, NAME_RE.pattern))
    if command is not None and (not isinstance(command, list)
                                or not all(isinstance(a, str) for a in command)):
        raise InvalidRequest("command must be a list of strings, got %r" % (command,))
    if labels is not None and not isinstance(labels, dict):
        raise InvalidRequest("labels must be an object, got %r" % (labels,))
    config = {
        "memory": cgroups.parse_memory(memory) if memory not in (None, "") else None,
        "cpus": cgroups.parse_cpus(cpus) if cpus not in (None, "") else None,
        "pids_limit": (cgroups.parse_pids_limit(pids_limit)
                       if pids_limit not in (None, "") else None),
        "restart": parse_restart(restart),
        "ports": [net.parse_port(p) for p in ports or ()],
        "subnet": subnet,
    }
    manifest = resolve_image(root, image)
    image_config = manifest.get("config") or {}
    argv = list(image_config.get("entrypoint") or []) + list(
        command if command is not None else image_config.get("cmd") or [])
    if not argv:
        raise InvalidRequest("image %r has no command; give one to run" % image)
    config.update({
        "image": image,
        "image_id": manifest["id"],
        "layers": list(manifest.get("layers") or []),
        "argv": argv,
        "env": _env_list(image_config.get("env"), env),
        "workdir": workdir or image_config.get("workdir") or "/",
        "user": user if user is not None else image_config.get("user") or "",
        "hostname": hostname,
        "labels": dict(labels or {}),
        "volumes": [parse_volume(root, v) for v in volumes or ()],
        "healthcheck": image_config.get("healthcheck"),
    })
    return config


# -- lookup ------------------------------------------------------------------------


def all_ids(root):
    """Return the ids of every container record on this host."""
    directory = os.path.join(root, "containers")
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory)
                  if os.path.exists(os.path.join(directory, n, "config.json")))


def resolve(root, ref):
    """Return the id of the container named ref, with id ref, or id prefix ref."""
    ids = all_ids(root)
    for cid in ids:
        if (read_config(root, cid) or {}).get("name") == ref:
            return cid
    if ref in ids:
        return ref
    matches = [cid for cid in ids if cid.startswith(str(ref))] if len(str(ref)) >= 4 \
        else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidRequest("container id prefix %r is ambiguous" % (ref,))
    raise NotFound("no container named %r on this host" % (ref,))


def refresh(root, container_id):
    """Return state, first marking a container whose supervisor died as exited."""
    state = read_state(root, container_id)
    if state.get("status") not in ACTIVE:
        return state
    if alive(state.get("supervisor_pid"), state.get("supervisor_start")):
        return state
    if state.get("supervisor_pid") is None and time.time() - state.get(
            "spawned", 0) < START_TIMEOUT:
        return state  # the supervisor is still starting up
    cleanup_runtime(container_id)
    return update_state(root, container_id, status="exited", pid=None,
                        supervisor_pid=None, finished_at=now(),
                        error=state.get("error") or "supervisor gone (host "
                        "rebooted or it was killed); container is not running")


def cleanup_runtime(container_id):
    """Remove a container's iptables rules, veth and cgroup."""
    net.cleanup(container_id)
    cgroups.Cgroup(container_id).remove()


def describe(root, container_id):
    """Return the container dict the API hands out."""
    config = read_config(root, container_id) or {}
    state = refresh(root, container_id)
    status = state.get("status", "created")
    if status == "starting":
        status = "created"
    alloc = net.lookup(root, container_id) or {}
    return {
        "id": container_id,
        "name": config.get("name"),
        "image": config.get("image"),
        "image_id": config.get("image_id"),
        "status": status,
        "pid": state.get("pid") if status == "running" else None,
        "ip": alloc.get("ip"),
        "ports": alloc.get("ports", config.get("ports", [])),
        "created": config.get("created"),
        "started_at": state.get("started_at"),
        "finished_at": state.get("finished_at"),
        "exit_code": state.get("exit_code"),
        "restart_count": state.get("restart_count", 0),
        "labels": config.get("labels", {}),
        "error": state.get("error"),
        "config": config,
    }


# -- lifecycle ---------------------------------------------------------------------


def create(root, name=None, **params):
    """Validate, claim the name and write the record; return the container id."""
    config = build_config(root, name=name, **params)
    container_id = secrets.token_hex(32)
    config["id"] = container_id
    config["name"] = name or "c-" + container_id[:12]
    config["hostname"] = config["hostname"] or container_id[:12]
    config["created"] = now()
    with util.file_lock(os.path.join(root, "locks", "containers.lock")):
        for cid in all_ids(root):
            if (read_config(root, cid) or {}).get("name") == config["name"]:
                raise Conflict("container name %r is already used by %s; remove it "
                               "or pick another name" % (config["name"], cid[:12]),
                               container=cid)
        ensure_containers_dir(root)
        directory = container_dir(root, container_id)
        for sub in ("upper", "work", "merged"):
            os.makedirs(os.path.join(directory, sub))
        util.write_json(os.path.join(directory, "state.json"),
                        {"status": "created", "restart_count": 0})
        util.write_json(os.path.join(directory, "config.json"), config,
                        mode=PRIVATE_FILE)
    try:
        net.allocate(root, container_id, config["name"], config["ports"],
                     subnet=config["subnet"])
    except BaseException:
        remove_record(root, container_id)
        raise
    return container_id


def remove_record(root, container_id):
    """Free a container's address and delete its record (and so its name)."""
    net.release(root, container_id)
    shutil.rmtree(container_dir(root, container_id), ignore_errors=True)


def run(root, **params):
    """Create and start a container; return its dict. A failed start removes it."""
    container_id = create(root, **params)
    try:
        return start(root, container_id)
    except BaseException:
        try:
            stop(root, container_id, timeout=0)
        finally:
            cleanup_runtime(container_id)
            remove_record(root, container_id)
        raise


# Names the descriptor of the pipe a supervisor signals readiness on.
READY_ENV = "MOCKEROPS_READY_FD"


def _spawn_supervisor(root, container_id):
    """Start ``agent supervise ROOT ID`` detached; return the ready pipe's read end.

    The supervisor writes one byte to the pipe once the container runs (or has
    failed), so start() wakes at once instead of polling the state file.
    """
    argv, env = nsexec.agent_argv("supervise", root, container_id)
    ready_r, ready_w = os.pipe()
    env = dict(env if env is not None else os.environ)
    env[READY_ENV] = str(ready_w)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=devnull, stderr=devnull,
                                env=env, close_fds=True, start_new_session=True,
                                cwd="/", pass_fds=(ready_w,))
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(devnull)
        os.close(ready_w)
    # The supervisor forks again and its first process exits at once: reap it.
    proc.wait()
    return ready_r


def start(root, ref):
    """Start a stopped container and wait until it runs; return its dict."""
    container_id = resolve(root, ref)
    if refresh(root, container_id).get("status") in ACTIVE:
        return describe(root, container_id)
    with util.file_lock(_lock_path(root, container_id)):
        state = read_state(root, container_id)
        claimed = state.get("status") not in ACTIVE  # else a concurrent start won
        if claimed:
            state.update(status="starting", desired="running", supervisor_pid=None,
                         supervisor_start=None, spawned=time.time(), error=None,
                         restart_count=0)
            util.write_json(os.path.join(container_dir(root, container_id),
                                         "state.json"), state)
    deadline = time.monotonic() + START_TIMEOUT
    if claimed:
        ready = _spawn_supervisor(root, container_id)
        try:
            select.select([ready], [], [], START_TIMEOUT)
        finally:
            os.close(ready)
    while time.monotonic() < deadline:
        state = read_state(root, container_id)
        if state.get("status") in ("running", "exited", "restarting"):
            break
        time.sleep(0.02)
    else:
        raise Conflict("container %s did not start within %ds"
                       % (ref, START_TIMEOUT))
    if state.get("error"):
        raise InvalidRequest(state["error"], container=container_id)
    return describe(root, container_id)


def _wait_gone(pid, start, timeout):
    """Wait until pid (started at start) has exited; return whether it did."""
    deadline = time.monotonic() + timeout
    while alive(pid, start):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop(root, ref, timeout=10):
    """SIGTERM the container's PID 1, SIGKILL after timeout s; return its dict."""
    container_id = resolve(root, ref)
    state = update_state(root, container_id, desired="stopped")
    pid, pid_start = state.get("pid"), state.get("pid_start")
    if state.get("status") == "running" and alive(pid, pid_start):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(pid, pid_start, float(timeout)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, pid_start, 10.0)
    # The supervisor records the exit and removes rules, veth and cgroup.
    _wait_gone(state.get("supervisor_pid"), state.get("supervisor_start"), 15.0)
    if state.get("status") == "starting":
        _wait_started(root, container_id)
        return stop(root, container_id, timeout)
    refresh(root, container_id)
    return describe(root, container_id)


def _wait_started(root, container_id):
    """Wait while a concurrent start is still spawning the supervisor."""
    deadline = time.monotonic() + START_TIMEOUT
    while read_state(root, container_id).get("status") == "starting":
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)


def restart(root, ref, timeout=10):
    """Stop then start a container; return its dict."""
    stop(root, ref, timeout)
    return start(root, ref)


def rm(root, ref, force=False):
    """Remove a container (refusing a running one unless force); return its id."""
    container_id = resolve(root, ref)
    state = refresh(root, container_id)
    if state.get("status") in ACTIVE:
        if not force:
            name = (read_config(root, container_id) or {}).get("name", ref)
            raise Conflict("container %r is %s; stop it first, or remove it "
                           "anyway with rm -f" % (name, state["status"]),
                           container=container_id)
        stop(root, container_id, timeout=0)
    cleanup_runtime(container_id)
    remove_record(root, container_id)
    return container_id


def list_containers(root, all=False, labels=None):
    """Return container dicts (running only unless all), filtered by labels."""
    result = []
    for cid in all_ids(root):
        info = describe(root, cid)
        if not all and info["status"] not in ("running", "restarting"):
            continue
        if labels and any(info["labels"].get(k) != v for k, v in labels.items()):
            continue
        result.append(info)
    result.sort(key=lambda c: c.get("created") or "")
    return result


def prune(root):
    """Remove every container that is not running; return their ids."""
    removed = []
    for cid in all_ids(root):
        if refresh(root, cid).get("status") not in ACTIVE:
            rm(root, cid)
            removed.append(cid)
    return removed


def inspect(root, ref):
    """Return the container dict of ref plus resource usage when running."""
    container_id = resolve(root, ref)
    info = describe(root, container_id)
    info["state"] = read_state(root, container_id)
    if info["status"] == "running":
        info["usage"] = cgroups.Cgroup(container_id).usage()
    return info
