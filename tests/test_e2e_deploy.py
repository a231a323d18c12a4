"""End to end on a real lab: deploy, unchanged redeploy, zero-downtime rollout,
health-gated failure, --check, the deploy lock, rollback and remove.

The example app (playbooks/hello) is copied with its Debian base into a temp dir
so the tests can point it at this session's lab and change its variables.
Needs root (CI is root).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from labkit import iptables_rules, mockerops
import yaml

pytestmark = [pytest.mark.lab]

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "playbooks" / "hello"
PORT = 18080


def get(address: str, timeout: float = 3.0) -> str:
    """Return the body of GET / on address:PORT over a new connection."""
    conn = http.client.HTTPConnection(address, PORT, timeout=timeout)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def host_results(proc) -> dict[str, dict]:
    """Return host -> host_result event from a --json run."""
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return {e["host"]: e for e in events if e["event"] == "host_result"}


class App:
    """A copy of the hello app aimed at this session's lab."""

    def __init__(self, root: Path, lab) -> None:
        self.dir = root / "hello"
        self.lab = lab
        shutil.copytree(HELLO, self.dir)
        self.path = self.dir / "app.yaml"
        self.spec = yaml.safe_load(self.path.read_text())
        self.spec["hosts"] = lab.name
        self.spec["containers"][0]["ports"] = [f"{PORT}:8000"]
        self.spec["rollout"]["drain"] = "1s"
        # A host whose inventory sets hello_broken gets an image whose app exits.
        with open(self.dir / "Mockerfile", "a") as f:
            f.write('{% if hello_broken | default(false) %}CMD ["false"]{% endif %}\n')
        self.save()
        self.inventory = root / "inventory.yaml"
        self.inventory.write_text(lab.inventory_path.read_text())

    def save(self) -> None:
        self.path.write_text(yaml.safe_dump(self.spec, sort_keys=False))

    def deploy(self, *extra, check=False):
        return mockerops(
            "deploy", "-i", self.inventory, self.path, "--json", *extra, check=check
        )

    def containers(self) -> dict[str, list[dict]]:
        proc = mockerops(
            "ps", "-i", self.inventory, self.lab.name, "--json", check=True
        )
        return {
            h: [c for c in cs if c["labels"].get("mockerops.app") == "hello"]
            for h, cs in json.loads(proc.stdout).items()
        }

    def set_host_var(self, host: str, key: str, value) -> None:
        data = yaml.safe_load(self.inventory.read_text())
        (group,) = data["all"]["children"].values()
        group["hosts"][host][key] = value
        self.inventory.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    """The deployed hello app; removed, with its ports, after the module."""
    if not (HELLO / "rootfs" / "debian-bookworm.tar.gz").exists():
        pytest.fail("run playbooks/make_rootfs.py debian first (scripts/test.sh does)")
    app = App(tmp_path_factory.mktemp("deploy"), lab)
    try:
        yield app
    finally:
        proc = mockerops("remove", "-i", app.inventory, app.path)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deploy_to_three_hosts_each_answers(app, lab):
    proc = app.deploy()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = host_results(proc)
    assert {h: r["status"] for h, r in results.items()} == {
        name: "changed" for name, _, _ in lab.hosts
    }
    for name, address, _ in lab.hosts:
        assert f"hello from {name} version 1" in get(address)


def test_exec_reaches_an_app_container_on_every_host(app, lab):
    proc = mockerops("exec", "-i", app.inventory, lab.name, "web", "cat", "/etc/hostname")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert sorted(lines) == sorted(name for name, _, _ in lab.hosts)
    assert len(set(lines.values())) == len(lab.hosts), "one container per host"
    env = dict(os.environ, MOCKEROPS_INVENTORY=str(app.inventory))
    single = subprocess.run(
        [sys.executable, "-m", "mockerops", "exec", lab.hosts[0][0], "web", "sh", "-c",
         "exit 4"], capture_output=True, text=True, timeout=120, env=env)
    assert single.returncode == 4, single.stdout + single.stderr


def test_unchanged_deploy_builds_and_restarts_nothing(app, lab):
    before = app.containers()
    proc = app.deploy()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {r["status"] for r in host_results(proc).values()} == {"ok"}
    assert re.search(r"build step \d+: cached", proc.stdout)
    assert not re.search(r"build step \d+: building", proc.stdout)
    after = app.containers()
    key = lambda cs: sorted((c["id"], c["started_at"]) for c in cs)  # noqa: E731
    assert {h: key(cs) for h, cs in after.items()} == {
        h: key(cs) for h, cs in before.items()
    }


def netns_snapshot(lab) -> dict:
    """Return every lab host's iptables rules (without counters)."""
    return {name: iptables_rules(netns) for name, _, netns in lab.hosts}


def test_check_changes_nothing(app, lab):
    app.spec["vars"]["app_version"] = "check"
    app.save()
    try:
        rules, containers = netns_snapshot(lab), app.containers()
        proc = app.deploy("--check")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert {r["status"] for r in host_results(proc).values()} == {"changed"}
        assert netns_snapshot(lab) == rules
        assert app.containers() == containers
    finally:
        del app.spec["vars"]["app_version"]
        app.save()


class Prober(threading.Thread):
    """Loop GETs on one host's port, counting answers and connection errors."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []
        self.bodies: set[str] = set()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                # A generous timeout: on a loaded 2-core CI machine an answer
                # can be slow; what must never happen is a refused or reset
                # connection, and every such error is recorded.
                self.bodies.add(get(self.address, timeout=15.0).split("\n")[0])
                self.ok += 1
            except (OSError, http.client.HTTPException) as exc:
                self.errors.append(repr(exc))


def test_changed_variable_rolls_out_batch_by_batch_without_downtime(app, lab):
    watched = lab.hosts[1][1]
    prober = Prober(watched)
    prober.start()
    app.spec["vars"]["app_version"] = "2"
    app.save()
    try:
        proc = app.deploy()
    finally:
        prober.stop.set()
        prober.join(timeout=10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    batches = [
        e["text"]
        for e in events
        if e["event"] == "message" and e["text"].startswith("batch ")
    ]
    assert len(batches) == 3, batches
    assert prober.errors == [], prober.errors[:5]
    assert prober.ok > 20
    assert any("version 2" in b for b in prober.bodies)
    for name, address, _ in lab.hosts:
        assert f"hello from {name} version 2" in get(address)


def test_failing_health_check_puts_the_host_back(app, lab):
    bad, bad_address, _ = lab.hosts[2]
    app.set_host_var(bad, "hello_broken", True)
    app.spec["vars"]["app_version"] = "3"
    app.spec["rollout"]["max_fail_percentage"] = 100
    app.save()
    try:
        proc = app.deploy()
    finally:
        app.set_host_var(bad, "hello_broken", False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    results = host_results(proc)
    assert results[bad]["status"] == "failed"
    assert "health" in results[bad]["message"]
    assert "version 2" in get(bad_address), "the old version keeps serving"
    assert len(app.containers()[bad]) == 1
    ok_host, ok_address, _ = lab.hosts[0]
    assert results[ok_host]["status"] == "changed"
    assert "version 3" in get(ok_address)


def test_rollback_restores_previous_version(app, lab):
    name, address, _ = lab.hosts[0]
    proc = mockerops("rollback", "-i", app.inventory, app.path, "--limit", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "version 2" in get(address)


def test_second_deploy_is_refused_while_the_lock_is_held(app, lab):
    name, _, _ = lab.hosts[0]
    root = Path(
        yaml.safe_load(app.inventory.read_text())["all"]["children"][lab.name]["hosts"][
            name
        ]["mockerops_root"]
    )
    lock = root / "locks" / "deploy-hello.json"
    lock.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    record = {
        "app": "hello",
        "token": "x" * 32,
        "started": now - 5,
        "expires": now + 300,
        "owner": {"user": "alice", "host": "laptop", "pid": 4242},
    }
    lock.write_text(json.dumps(record))
    try:
        refused = app.deploy("--limit", name)
        assert refused.returncode == 2
        message = host_results(refused)[name]["message"]
        assert "alice@laptop" in message and "4242" in message
        record["expires"] = now - 1
        lock.write_text(json.dumps(record))
        taken = app.deploy("--limit", name)
        assert taken.returncode == 0, taken.stdout + taken.stderr
    finally:
        lock.unlink(missing_ok=True)
