"""End to end on a real lab: builds, the layer cache, containers, ports, exec, stop.

Every step goes through the mockerops CLI as a user types it, against OpenSSH
hosts in network namespaces; needs root (CI is root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from labkit import iptables_rules, mockerops

pytestmark = [pytest.mark.lab]

REPO = Path(__file__).resolve().parent.parent
BUSYBOX_TAR = REPO / "playbooks" / "busybox" / "rootfs" / "busybox.tar.gz"
DEBIAN_TAR = REPO / "playbooks" / "hello" / "rootfs" / "debian-bookworm.tar.gz"


def steps_of(proc) -> list[tuple[str, bool]]:
    """Return (instruction, cached) for every build step a --json build printed."""
    steps = []
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        if event["event"] != "host_output":
            continue
        m = re.match(r"(CACHED )?step (\d+): (.*)", event["text"])
        if m:
            steps.append((m.group(3), bool(m.group(1))))
    return steps


@pytest.fixture(scope="module")
def host(lab):
    """The lab host these tests work on: (name, address, netns, inventory)."""
    name, address, netns = lab.hosts[0]
    return name, address, netns, lab.inventory_path


@pytest.fixture(scope="module")
def busybox_context(tmp_path_factory):
    """A build context holding the busybox base tarball."""
    if not BUSYBOX_TAR.exists():
        subprocess.run(
            [sys.executable, str(REPO / "playbooks/make_rootfs.py"), "busybox"],
            check=True,
        )
    ctx = tmp_path_factory.mktemp("bbctx")
    shutil.copy(BUSYBOX_TAR, ctx / "base.tar.gz")
    return ctx


@pytest.fixture(scope="module")
def app_image(host, busybox_context):
    """A busybox image with a small app and a SIGTERM trap, tagged app:1."""
    ctx = busybox_context
    (ctx / "serve.sh").write_text(
        "#!/bin/sh\n"
        "trap 'echo got TERM; exit 0' TERM\n"
        'echo "$(hostname)" > /www/index.html\n'
        "httpd -f -p 8000 -h /www &\n"
        "while :; do sleep 1; done\n"
    )
    os.chmod(ctx / "serve.sh", 0o755)
    (ctx / "Mockerfile").write_text(
        "FROM ./base.tar.gz\n"
        "RUN mkdir -p /www\n"
        "COPY serve.sh /serve.sh\n"
        "EXPOSE 8000\n"
        'CMD ["/serve.sh"]\n'
    )
    name, _, _, inv = host
    mockerops("build", "-i", inv, name, ctx / "Mockerfile", "-t", "app:1", check=True)
    return "app:1"


def test_busybox_example_builds_then_is_fully_cached(host):
    name, _, _, inv = host
    mockerfile = REPO / "playbooks" / "busybox" / "Mockerfile"
    first = mockerops(
        "build", "-i", inv, name, mockerfile, "-t", "bb:1", "--json", check=True
    )
    assert steps_of(first), first.stdout
    second = mockerops(
        "build", "-i", inv, name, mockerfile, "-t", "bb:1", "--json", check=True
    )
    steps = steps_of(second)
    assert steps and all(cached for _, cached in steps), steps
    images = mockerops("images", "-i", inv, name, "--json", check=True)
    tags = [t for image in json.loads(images.stdout)[name] for t in image["tags"]]
    assert "bb:1" in tags


def test_changed_file_same_size_and_mtime_rebuilds_from_its_copy(
    host, tmp_path, busybox_context
):
    name, _, _, inv = host
    shutil.copy(busybox_context / "base.tar.gz", tmp_path / "base.tar.gz")
    data = tmp_path / "data.txt"
    data.write_text("aaaa\n")
    stamp = (1_600_000_000, 1_600_000_000)
    os.utime(data, stamp)
    (tmp_path / "Mockerfile").write_text(
        "FROM ./base.tar.gz\n"
        "RUN echo before > /before\n"
        "COPY data.txt /data.txt\n"
        "RUN cat /data.txt > /after\n"
    )
    mockerops(
        "build", "-i", inv, name, tmp_path / "Mockerfile", "-t", "cc:1", check=True
    )
    data.write_text("bbbb\n")
    os.utime(data, stamp)
    proc = mockerops(
        "build",
        "-i",
        inv,
        name,
        tmp_path / "Mockerfile",
        "-t",
        "cc:1",
        "--json",
        check=True,
    )
    cached = [c for _, c in steps_of(proc)]
    assert cached == [True, True, False, False], steps_of(proc)


def test_arg_used_in_env_rebuilds_when_it_changes(host, tmp_path, busybox_context):
    name, _, _, inv = host
    shutil.copy(busybox_context / "base.tar.gz", tmp_path / "base.tar.gz")
    (tmp_path / "Mockerfile").write_text(
        "FROM ./base.tar.gz\nARG c=one\nENV x=$c\nRUN echo $x > /x\n"
    )
    build = ["build", "-i", inv, name, tmp_path / "Mockerfile", "-t", "arg:1", "--json"]
    mockerops(*build, "--build-arg", "c=one", check=True)
    same = steps_of(mockerops(*build, "--build-arg", "c=one", check=True))
    assert all(c for _, c in same), same
    changed = steps_of(mockerops(*build, "--build-arg", "c=two", check=True))
    assert not all(c for _, c in changed), changed
    assert any(not c and "RUN" in instr for instr, c in changed), changed


@pytest.mark.parametrize(
    "mockerfile, expected",
    [
        ("FROM ./base.tar.gz\nCOPY nosuch.txt /x\n", "nosuch.txt"),
        ("FROM ./base.tar.gz\nCOPY ../outside /x\n", "outside"),
        ("FROM ./base.tar.gz\nFROBNICATE x\n", "FROBNICATE"),
        ("FROM ./base.tar.gz\nRUN echo {{ undefined_var }}\n", "undefined_var"),
    ],
)
def test_bad_mockerfiles_name_file_and_line(
    host, tmp_path, busybox_context, mockerfile, expected
):
    name, _, _, inv = host
    shutil.copy(busybox_context / "base.tar.gz", tmp_path / "base.tar.gz")
    (tmp_path / "Mockerfile").write_text(mockerfile)
    proc = mockerops("build", "-i", inv, name, tmp_path / "Mockerfile")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 4, "bad input, found before connecting"
    assert "Mockerfile:2" in text and expected in text, text
    assert "Traceback" not in text


def run_container(inv, host, image, name, *extra, check=False):
    """Run a container through the CLI; return CompletedProcess."""
    return mockerops("container", "run", "-i", inv, host, image, "--name", name,
                     *extra, check=check)


def exec_in(inv, host, container, *argv, check=False):
    """Run argv in a container through the CLI; return CompletedProcess."""
    return mockerops("exec", "-i", inv, host, container, "--", *argv, check=check)


def netns_state(netns: str) -> dict:
    """Return what a container could leave behind in a lab host's namespace."""
    rules = iptables_rules(netns)
    links = subprocess.run(
        ["ip", "-n", netns, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    links = sorted(
        re.sub(r"^\d+: ", "", line).split(":")[0] for line in links.splitlines()
    )
    return {"rules": rules, "links": links}


def overlay_mounts() -> list[str]:
    """Return every overlay mount of this machine."""
    return [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if " - overlay " in line
    ]


def http_get(url: str, timeout: float = 5.0) -> str:
    """Return the body of a GET on a lab address."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait_http(url: str, deadline: float = 15.0) -> str:
    """GET url until it answers or the deadline passes."""
    end = time.monotonic() + deadline
    while True:
        try:
            return http_get(url)
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_container_lifecycle_ports_exec_stop_and_clean_rm(host, app_image):
    name, address, netns, inv = host
    run_container(inv, name, app_image, "warmup", check=True)
    mockerops("rm", "-i", inv, name, "warmup", "-f", check=True)
    before = netns_state(netns)
    mounts_before = overlay_mounts()

    run_container(inv, name, app_image, "web", "-p", "8080:8000", check=True)
    try:
        body = wait_http(f"http://{address}:8080/").strip()
        record = json.loads(
            mockerops("inspect", "-i", inv, name, "web", check=True).stdout
        )[name]
        assert body == record["id"][:12], "the app sees its own hostname, as Docker's"
        assert body != os.uname().nodename

        ps = exec_in(inv, name, "web", "ps", "-o", "pid,comm")
        assert ps.returncode == 0, ps.stderr
        pids = [line.split()[0] for line in ps.stdout.splitlines()[1:]]
        assert "1" in pids and len(pids) < 10, ps.stdout
        assert "sshd" not in ps.stdout and "pytest" not in ps.stdout

        rc = exec_in(inv, name, "web", "sh", "-c", "echo out; exit 7")
        assert rc.returncode == 7 and rc.stdout.strip() == "out"
        with open(__file__, "rb") as stdin:
            fed = subprocess.run(
                [sys.executable, "-m", "mockerops", "exec", "--interactive", "-i",
                 str(inv), name, "web", "--", "wc", "-c"],
                stdin=stdin, capture_output=True, text=True, timeout=60)
        assert fed.returncode == 0, fed.stdout + fed.stderr
        assert int(fed.stdout.split()[0]) == Path(__file__).stat().st_size

        term = subprocess.run(
            [sys.executable, "-m", "mockerops", "exec", "-t", "-i", str(inv), name,
             "web", "--", "sh", "-c", "tty; exit 3"],
            stdin=subprocess.PIPE, capture_output=True, text=True, timeout=60)
        assert term.returncode == 3, term.stdout + term.stderr
        assert term.stdout.strip().startswith("/dev/pts/"), term.stdout

        listing = mockerops("ps", "-i", inv, name, "-a", check=True)
        assert "web" in listing.stdout and " up " in listing.stdout
        images = mockerops("images", "-i", inv, name, check=True)
        assert "app:1" in images.stdout and "ago" in images.stdout

        for _ in range(3):
            exec_in(inv, name, "web", "sh", "-c", "sleep 0.2 & exit 0", check=True)
        time.sleep(1)
        zombies = exec_in(inv, name, "web", "sh", "-c", "ps -o stat | grep -c Z || true")
        assert zombies.stdout.strip() == "0", "orphans of exec must be reaped"

        taken = run_container(inv, name, app_image, "web")
        assert taken.returncode != 0 and "web" in taken.stdout + taken.stderr
        port = run_container(inv, name, app_image, "web2", "-p", "8080:8000")
        assert port.returncode != 0 and "8080" in port.stdout + port.stderr

        started = time.monotonic()
        mockerops("stop", "-i", inv, name, "web", "-t", "2", check=True)
        assert time.monotonic() - started < 8
        logs = mockerops("logs", "-i", inv, name, "web", check=True)
        assert "got TERM" in logs.stdout

        stopped = exec_in(inv, name, "web", "true")
        assert (
            stopped.returncode != 0 and "not running" in stopped.stdout + stopped.stderr
        )
    finally:
        mockerops("rm", "-i", inv, name, "web", "-f")
    assert netns_state(netns) == before
    assert overlay_mounts() == mounts_before


def test_bad_run_requests_change_nothing(host, app_image):
    name, _, _, inv = host

    missing = run_container(inv, name, "nosuch:9", "x1")
    assert missing.returncode != 0 and "nosuch:9" in missing.stdout + missing.stderr
    memory = run_container(inv, name, app_image, "m1", "--memory", "lots")
    assert memory.returncode != 0 and "lots" in memory.stdout + memory.stderr
    free = run_container(inv, name, app_image, "m1", "--memory", "64m")
    try:
        assert free.returncode == 0, free.stdout + free.stderr
    finally:
        mockerops("rm", "-i", inv, name, "m1", "-f")


def test_restart_on_failure_restarts_a_crashing_app(host, app_image):
    name, _, _, inv = host
    run_container(inv, name, app_image, "crash", "--restart", "on-failure:3", "--",
                  "sh", "-c", "echo run; exit 3", check=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            record = json.loads(
                mockerops("inspect", "-i", inv, name, "crash", check=True).stdout
            )[name]
            if record["restart_count"] >= 2:
                break
            time.sleep(0.5)
        assert record["restart_count"] >= 2, record
        logs = mockerops("logs", "-i", inv, name, "crash", check=True)
        assert logs.stdout.count("run") >= 2
    finally:
        mockerops("rm", "-i", inv, name, "crash", "-f")


@pytest.mark.skipif(
    not DEBIAN_TAR.exists(),
    reason="run playbooks/make_rootfs.py debian first (test.sh does)",
)
def test_debian_hello_example_builds_and_serves(lab):
    name, address, _ = lab.hosts[1]
    inv = lab.inventory_path
    mockerfile = REPO / "playbooks" / "hello" / "Mockerfile"
    mockerops(
        "build", "-i", inv, name, mockerfile, "-t", "hello:1", check=True, timeout=900
    )
    again = mockerops(
        "build", "-i", inv, name, mockerfile, "-t", "hello:1", "--json", check=True
    )
    assert all(c for _, c in steps_of(again))
    run_container(inv, name, "hello:1", "hello", "-p", "8081:8000", check=True)
    try:
        assert f"hello from {name}" in wait_http(f"http://{address}:8081/")
    finally:
        mockerops("rm", "-i", inv, name, "hello", "-f")
