"""The container runtime on real namespaces, overlays, cgroups and iptables.

Everything network-related runs in a private network namespace made for this
module: the test process's main thread joins it (setns affects only the
calling thread and what it spawns), so iptables rules, the bridge and veths
never touch the host's own network. Teardown fails on leaked veths, mounts,
cgroups or processes.
"""

import os
import re
import signal
import stat
import subprocess
import sys
import time
import types
import urllib.request
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from busybox_rootfs import make_image, make_rootfs  # noqa: E402
from remote_agent import cgroups, containers, net, sandbox  # noqa: E402
from remote_agent import namespaces as ns  # noqa: E402
from remote_agent import rpc_containers as rc  # noqa: E402
from remote_agent import rpc_deploy  # noqa: E402
from remote_agent.errors import Conflict, InvalidRequest  # noqa: E402

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces, "
                       "mounts, cgroups and iptables; CI runs as root"),
]

LOOP = 'trap "echo bye; exit 0" TERM; while :; do sleep 1; done'


def iptables_save():
    """Return iptables-save output without comments and packet counters."""
    out = subprocess.run(["iptables-save"], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    lines = [re.sub(r"\[\d+:\d+\]", "", line) for line in out.splitlines()
             if not line.startswith("#")]
    return "\n".join(lines)


def links():
    """Return the names of the network links in the current namespace."""
    out = subprocess.run(["ip", "-o", "link"], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0]
                  for line in out.splitlines())


def processes_mentioning(text):
    """Return pids whose command line mentions text (excluding ourselves)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                if text.encode() in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def netns():
    """Join a private network namespace for the module; delete it afterwards."""
    name = "mo-rt-%s" % uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    original = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + name, os.O_RDONLY)
    try:
        ns.setns(target, ns.CLONE_NEWNET)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        try:
            net.teardown_base()
        finally:
            ns.setns(original, ns.CLONE_NEWNET)
            os.close(original)
            os.close(target)
            subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory, netns):
    """Yield a state root holding a busybox image; fail on leaks at the end."""
    path = str(tmp_path_factory.mktemp("mo-runtime-root"))
    make_image(path)
    yield path
    for cid in containers.all_ids(path):
        containers.rm(path, cid, force=True)
    time.sleep(0.2)
    assert processes_mentioning(path) == []
    with open("/proc/self/mountinfo") as f:
        assert path not in f.read()
    assert [n for n in links() if n.startswith("mo") and n != net.BRIDGE] == []
    for directory in ("/sys/fs/cgroup/memory/mockerops", "/sys/fs/cgroup/mockerops",
                      "/sys/fs/cgroup/pids/mockerops"):
        if os.path.isdir(directory):
            left = [d for d in os.listdir(directory) if os.path.isdir(
                os.path.join(directory, d)) and os.path.exists(
                    os.path.join(path, "containers", d))]
            assert left == []


def run(root, **params):
    """Run a busybox container with a unique name; return its dict."""
    params.setdefault("name", "t-" + uuid.uuid4().hex[:8])
    return containers.run(root, image="busybox", **params)


def exec_(root, name, argv, **kwargs):
    """Run argv in a container; return (exit code, stdout, stderr)."""
    out = {"stdout": b"", "stderr": b""}

    def collect(stream, data):
        out[stream] += data

    code = rc.exec_in_container(root, name, argv, collect, **kwargs)
    return code, out["stdout"].decode(), out["stderr"].decode()


def get(url):
    """Return the body of an HTTP GET."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_http_port_hostname_and_ps(root):
    c = run(root, hostname="webbox", ports=["18080:8000"],
            command=["httpd", "-f", "-p", "8000", "-h", "/var/www"])
    try:
        assert c["status"] == "running" and c["ip"]
        gateway = net.lookup(root, c["id"])["gateway"]
        assert get("http://%s:8000/" % c["ip"]) == "hello from busybox\n"
        assert get("http://%s:18080/" % gateway) == "hello from busybox\n"
        assert get("http://127.0.0.1:18080/") == "hello from busybox\n"
        assert exec_(root, c["name"], ["hostname"]) == (0, "webbox\n", "")
        code, out, _ = exec_(root, c["name"], ["ps", "-o", "pid,comm"])
        assert code == 0
        commands = [line.split()[1] for line in out.splitlines()[1:]]
        assert sorted(commands) == ["httpd", "mockerops-init", "ps"]
        code, out, _ = exec_(root, c["name"], ["cat", "/proc/self/status"])
        assert "CapEff:\t00000000a80425fb" in out
        assert "NoNewPrivs:\t1" in out
    finally:
        containers.rm(root, c["id"], force=True)


def test_exec_output_status_and_stopped_container(root):
    c = run(root, command=["sh", "-c", LOOP], env=["GREETING=hi"])
    try:
        code, out, err = exec_(root, c["name"],
                               ["sh", "-c", "echo $GREETING; echo oops >&2; exit 7"])
        assert (code, out, err) == (7, "hi\n", "oops\n")
        assert exec_(root, c["name"], ["id", "-u"], user="nobody")[1] == "65534\n"
        assert exec_(root, c["name"], ["nonexistent-cmd"])[0] == 127
        containers.stop(root, c["name"], timeout=2)
        with pytest.raises(Conflict, match="not running"):
            exec_(root, c["name"], ["true"])
    finally:
        containers.rm(root, c["id"], force=True)


def test_stop_runs_the_trap(root):
    c = run(root, command=["sh", "-c", LOOP])
    started = time.monotonic()
    stopped = containers.stop(root, c["name"], timeout=2)
    elapsed = time.monotonic() - started
    try:
        assert stopped["status"] == "exited" and stopped["exit_code"] == 0
        assert elapsed < 3.5
        lines = []
        rc.logs(root, c["name"], lambda s, d: lines.append((s, d)))
        assert ("stdout", b"bye\n") in lines
    finally:
        containers.rm(root, c["id"])


def test_stop_kills_after_timeout(root):
    c = run(root, command=["sh", "-c", 'trap "" TERM; while :; do sleep 1; done'])
    started = time.monotonic()
    stopped = containers.stop(root, c["name"], timeout=1)
    elapsed = time.monotonic() - started
    containers.rm(root, c["id"])
    assert 0.9 < elapsed < 4 and stopped["exit_code"] == 137


def test_exec_orphans_are_reaped(root):
    c = run(root, command=["sh", "-c", LOOP])
    try:
        for _ in range(3):
            assert exec_(root, c["name"],
                         ["sh", "-c", "sleep 0.2 & sleep 0.3 & exit 0"])[0] == 0
        time.sleep(0.8)
        out = exec_(root, c["name"], ["ps", "-o", "stat,comm"])[1]
        assert [line for line in out.splitlines()[1:] if line.startswith("Z")] == []
    finally:
        containers.rm(root, c["id"], force=True)


def test_restart_on_failure(root):
    c = run(root, command=["sh", "-c", "echo run; exit 3"], restart="on-failure:2")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = containers.inspect(root, c["name"])
        if info["status"] == "exited" and info["restart_count"] == 2:
            break
        time.sleep(0.1)
    try:
        assert info["status"] == "exited" and info["exit_code"] == 3
        assert info["restart_count"] == 2
        lines = []
        rc.logs(root, c["name"], lambda s, d: lines.append(d))
        assert lines.count(b"run\n") == 3
        assert [x["id"] for x in containers.list_containers(root)] == []
    finally:
        containers.rm(root, c["id"])


def test_limits_and_bad_values(root):
    name = "t-limits-" + uuid.uuid4().hex[:6]
    for bad in ("lots", "-5m", "0"):
        with pytest.raises(InvalidRequest, match=re.escape(repr(bad))):
            run(root, name=name, memory=bad, command=["true"])
    with pytest.raises(InvalidRequest, match="cpus"):
        run(root, name=name, cpus="many", command=["true"])
    c = run(root, name=name, memory="64m", cpus=0.5, pids_limit=20,
            command=["sh", "-c", LOOP])
    try:
        with pytest.raises(Conflict, match=name):
            run(root, name=name, command=["true"])
        group = cgroups.Cgroup(c["id"])
        if group.v2:
            limit = open(os.path.join(group.dirs()["unified"], "memory.max")).read()
        else:
            limit = open(os.path.join(group.dirs()["memory"],
                                      "memory.limit_in_bytes")).read()
        assert int(limit) == 64 * 1024 * 1024
        assert containers.inspect(root, name)["usage"]["pids"] >= 1
    finally:
        containers.rm(root, c["id"], force=True)
    assert not cgroups.Cgroup(c["id"]).exists()


def test_rm_restores_iptables_and_port_conflicts(root):
    net.ensure_base(net.DEFAULT_SUBNET)
    before = iptables_save()
    links_before = links()
    c = run(root, ports=["18081:8000", "127.0.0.1:18082:53/udp"],
            command=["sh", "-c", LOOP])
    try:
        assert iptables_save() != before
        with pytest.raises(Conflict, match=c["name"]):
            run(root, ports=["18081:9000"], command=["true"])
        with pytest.raises(Conflict, match="running"):
            containers.rm(root, c["name"])
    finally:
        containers.rm(root, c["id"], force=True)
    assert iptables_save() == before
    assert links() == links_before
    other = run(root, ports=["18081:8000"], command=["sh", "-c", LOOP])
    containers.rm(root, other["id"], force=True)


def move_ports(root, app, host_port, target="10.88.0.200"):
    """Publish host_port for app through deploy.move_ports (one target)."""
    ctx = types.SimpleNamespace(root=root)
    rules = [{"host_port": host_port, "container_port": 8000, "targets": [target]}]
    return rpc_deploy.move_ports(ctx, app=app, rules=rules)


def test_published_ports_clash_between_apps_and_containers(root):
    net.ensure_base(net.DEFAULT_SUBNET)
    before = iptables_save()
    ctx = types.SimpleNamespace(root=root)
    c = None
    try:
        move_ports(root, "alpha", 18090)
        published = iptables_save()
        ids = containers.all_ids(root)

        # A plain container may not take an app's port, nor an app another's.
        with pytest.raises(Conflict, match="published by app 'alpha'"):
            run(root, ports=["18090:8000"], command=["true"])
        with pytest.raises(Conflict, match="published by app 'alpha'"):
            move_ports(root, "beta", 18090)
        assert containers.all_ids(root) == ids
        assert iptables_save() == published
        assert rpc_deploy.ports(ctx, app="beta") is None

        # An app may not take a container's port; nothing changes when refused.
        c = run(root, ports=["127.0.0.1:18091:8000"], command=["sh", "-c", LOOP])
        published = iptables_save()
        with pytest.raises(Conflict, match="published by container %r" % c["name"]):
            move_ports(root, "beta", 18091)
        with pytest.raises(Conflict, match=c["name"]):
            move_ports(root, "alpha", 18091)
        assert iptables_save() == published
        assert rpc_deploy.ports(ctx, app="beta") is None
        assert rpc_deploy.ports(ctx, app="alpha")["rules"][0]["host_port"] == 18090

        # Switching an app's own port to new targets is no clash.
        move_ports(root, "alpha", 18090, target="10.88.0.201")
        move_ports(root, "beta", 18092)
    finally:
        if c is not None:
            containers.rm(root, c["id"], force=True)
        for app in ("alpha", "beta"):
            rpc_deploy.remove_ports(ctx, app=app)
    assert iptables_save() == before


def test_config_holding_env_is_private(root):
    directory = os.path.join(root, "containers")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)  # as an older agent left it
    c = run(root, env=["API_TOKEN=s3cret"], command=["true"])
    try:
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        config = os.path.join(directory, c["id"], "config.json")
        assert "s3cret" in open(config).read()
        assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    finally:
        containers.rm(root, c["id"], force=True)


def test_dead_supervisor_is_reported_exited(root):
    c = run(root, ports=["18083:8000"], command=["sh", "-c", LOOP])
    state = containers.read_state(root, c["id"])
    os.kill(state["supervisor_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while containers.alive(state["pid"], state["pid_start"]):
        assert time.monotonic() < deadline, "PID 1 outlived its supervisor"
        time.sleep(0.05)
    listed = {x["id"]: x for x in containers.list_containers(root, all=True)}
    assert listed[c["id"]]["status"] == "exited"
    assert "mockerops:" + c["id"] not in iptables_save()
    assert net.veth_names(c["id"])[0] not in links()
    assert containers.prune(root) == [c["id"]]


def test_sandbox_runs_over_an_overlay(tmp_path):
    lower = make_rootfs(str(tmp_path / "lower"))
    upper, work = str(tmp_path / "upper"), str(tmp_path / "work")
    chunks = []
    code = sandbox.run_isolated(
        [lower], upper, work,
        ["sh", "-c", "hostname; echo built > /made; ls /sys/class/net; exit 4"],
        ["A=1"], hostname="builder", on_output=chunks.append, network="none")
    assert code == 4
    assert b"".join(chunks).decode().split() == ["builder", "lo"]
    assert sorted(os.listdir(upper)) == ["made"]
    assert not os.path.exists(os.path.join(lower, "made"))
    started = time.monotonic()
    with pytest.raises(sandbox.SandboxTimeout):
        sandbox.run_isolated([lower], upper, work, ["sleep", "31.25"], [], timeout=0.5)
    assert time.monotonic() - started < 5
    time.sleep(0.2)
    assert processes_mentioning("sleep\x0031.25") == []
