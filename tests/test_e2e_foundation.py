"""End to end on a real lab: ping, run, agent upload, host keys, deadlines, become.

Needs root and OpenSSH (the `lab` fixture builds the fleet); CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from labkit import mockerops
import yaml

pytestmark = [pytest.mark.lab]


def write_inventory(path: Path, base: Path, edit) -> Path:
    """Copy the lab inventory to path after edit(data) changed it."""
    data = yaml.safe_load(base.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def lab_hosts(data) -> dict:
    """Return the hosts mapping of the lab group in an inventory dict."""
    (group,) = data["all"]["children"].values()
    return group["hosts"]


def test_ping_every_host(lab):
    proc = mockerops("ping", "-i", lab.inventory_path, "all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, _, _ in lab.hosts:
        assert f"{name} | " in proc.stdout
    assert "python 3." in proc.stdout


def test_ping_json_reports_agent_and_python(lab):
    proc = mockerops("ping", "-i", lab.inventory_path, "all", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    results = [e for e in events if e["event"] == "host_result"]
    assert sorted(r["host"] for r in results) == sorted(h[0] for h in lab.hosts)
    assert all(r["data"]["uid"] == 0 for r in results)
    recap = events[-1]
    assert recap["event"] == "recap" and recap["exit_code"] == 0


def test_run_output_and_exit_codes_per_host(lab):
    first, second = lab.hosts[0][0], lab.hosts[1][0]
    script = (
        'echo "on $(hostname -I)"; [ "$(hostname -I | tr -d " ")" = "x" ] || exit 3'
    )
    proc = mockerops("run", "-i", lab.inventory_path, f"{first},{second}", "--", script)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for name, address, _ in lab.hosts[:2]:
        assert f"{name}: on {address}" in proc.stdout
        assert f"{name} | failed | rc=3" in proc.stdout
    ok = mockerops(
        "run", "-i", lab.inventory_path, f"all:!{second}", "--", "uname", "-r"
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert os.uname().release in ok.stdout
    assert f"{second}:" not in ok.stdout


def test_pattern_matching_nothing_is_an_error(lab):
    proc = mockerops("ping", "-i", lab.inventory_path, "nosuch")
    assert proc.returncode == 4
    assert "nosuch" in proc.stderr and "Traceback" not in proc.stderr


def test_agent_uploaded_once_across_runs(lab):
    name, _, _ = lab.hosts[0]
    root = Path(
        yaml.safe_load(lab.inventory_path.read_text())["all"]["children"][lab.name][
            "hosts"
        ][name]["mockerops_root"]
    )
    shutil.rmtree(root / "agent", ignore_errors=True)
    first = mockerops("ping", "-i", lab.inventory_path, name)
    second = mockerops("ping", "-i", lab.inventory_path, name)
    assert first.returncode == 0 and second.returncode == 0, (
        first.stderr + second.stderr
    )
    assert "agent uploaded" in first.stdout
    assert "agent uploaded" not in second.stdout
    assert len(list((root / "agent").glob("*.pyz"))) == 1


def test_changed_host_key_refused_others_work(lab, tmp_path):
    victim, victim_addr, _ = lab.hosts[1]
    other_key = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
        check=True,
    )
    assert other_key.returncode == 0
    fake = (tmp_path / "k.pub").read_text().split()[:2]
    lines = []
    for line in lab.known_hosts_path.read_text().splitlines():
        if victim_addr in line.split()[0].split(","):
            line = f"{victim_addr} {fake[0]} {fake[1]}"
        lines.append(line)
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(lines) + "\n")
    before = known.read_text()
    inv = write_inventory(
        tmp_path / "inv.yaml",
        lab.inventory_path,
        lambda d: d["all"]["vars"].update(mockerops_known_hosts=str(known)),
    )
    proc = mockerops("ping", "-i", inv, "all", "--accept-new-host-keys")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"{victim} | unreachable" in proc.stdout
    assert "does not match" in proc.stdout and "ssh-keygen" in proc.stdout
    for name, _, _ in lab.hosts:
        if name != victim:
            assert f"{name} | ok" in proc.stdout or f"{name} | changed" in proc.stdout
    assert known.read_text() == before, "a changed key must never be replaced"


def test_unknown_host_key_refused_then_accepted_on_request(lab, tmp_path):
    name, address, _ = lab.hosts[0]
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = write_inventory(
        tmp_path / "inv.yaml",
        lab.inventory_path,
        lambda d: d["all"]["vars"].update(mockerops_known_hosts=str(known)),
    )
    refused = mockerops("ping", "-i", inv, name)
    assert refused.returncode == 3
    assert "not in" in refused.stdout and "--accept-new-host-keys" in refused.stdout
    accepted = mockerops("ping", "-i", inv, name, "--accept-new-host-keys")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert known.read_text().startswith(f"{address} ssh-ed25519 ")
    again = mockerops("ping", "-i", inv, name)
    assert again.returncode == 0


def unused_lab_address(lab) -> str:
    """Return an address inside the lab's subnet that no host uses."""
    used = {a for _, a, _ in lab.hosts}
    prefix = lab.hosts[0][1].rsplit(".", 1)[0]
    for last in range(250, 200, -1):
        if f"{prefix}.{last}" not in used:
            return f"{prefix}.{last}"
    raise AssertionError("no free address in the lab subnet")


@pytest.fixture
def silent_listener(lab):
    """A TCP listener on a lab host that accepts and never speaks SSH."""
    _, address, netns = lab.hosts[2]
    code = (
        "import socket,time\n"
        f"s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{address}', 2222)); s.listen(8); print('ready', flush=True)\n"
        "conns=[]\n"
        "while True: conns.append(s.accept())\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield address
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_unreachable_and_silent_hosts_time_out_others_succeed(
    lab, tmp_path, silent_listener
):
    dead = unused_lab_address(lab)

    def edit(d):
        hosts = lab_hosts(d)
        hosts["ghost"] = {"ansible_host": dead}
        hosts["mute"] = {"ansible_host": silent_listener, "ansible_port": 2222}

    inv = write_inventory(tmp_path / "inv.yaml", lab.inventory_path, edit)
    started = time.monotonic()
    proc = mockerops("ping", "-i", inv, "all", "--connect-timeout", "3")
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ghost | unreachable" in proc.stdout
    assert "mute | unreachable" in proc.stdout
    for name, _, _ in lab.hosts:
        assert f"{name} | ok" in proc.stdout or f"{name} | changed" in proc.stdout
    assert elapsed < 15, f"deadline not kept: {elapsed:.1f}s"


@pytest.fixture
def login_user(lab, tmp_path):
    """A non-root login user with a noisy .bashrc, removed afterwards."""
    user = f"mo{os.getpid() % 100000}"
    home = Path("/home") / user
    # "*" rather than useradd's "!": sshd without PAM refuses locked accounts.
    subprocess.run(
        ["useradd", "-m", "-d", str(home), "-s", "/bin/bash", "-p", "*", user],
        check=True,
    )
    sudoers = Path(f"/etc/sudoers.d/{user}")
    try:
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        pub = Path(str(lab.key_path) + ".pub").read_text()
        (home / ".ssh" / "authorized_keys").write_text(pub)
        (home / ".bashrc").write_text('echo "welcome to the noisy host"\necho >&2 hi\n')
        subprocess.run(["chown", "-R", f"{user}:{user}", str(home)], check=True)
        yield user, sudoers
    finally:
        sudoers.unlink(missing_ok=True)
        subprocess.run(["pkill", "-KILL", "-u", user], check=False)
        subprocess.run(["userdel", "-r", user], check=False, capture_output=True)


def test_become_through_sudo_with_noisy_shell(lab, tmp_path, login_user):
    user, sudoers = login_user
    name = lab.hosts[0][0]

    def edit(d):
        host = lab_hosts(d)[name]
        host.update(ansible_user=user, ansible_become=True)

    inv = write_inventory(tmp_path / "inv.yaml", lab.inventory_path, edit)
    no_sudo = mockerops("ping", "-i", inv, name, "--connect-timeout", "5", "-T", "20")
    assert no_sudo.returncode == 3, no_sudo.stdout + no_sudo.stderr
    assert "sudo" in no_sudo.stdout and "password" in no_sudo.stdout
    sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD: ALL\n")
    os.chmod(sudoers, 0o440)
    proc = mockerops("ping", "-i", inv, name, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = [json.loads(x) for x in proc.stdout.splitlines()][-2]
    assert result["event"] == "host_result" and result["data"]["uid"] == 0


def test_facts_report_engine_needs(lab):
    proc = mockerops("facts", "-i", lab.inventory_path, lab.hosts[0][0], "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = [json.loads(x) for x in proc.stdout.splitlines()][-2]["data"]
    assert facts["overlayfs"] is True and facts["iptables"] is True
    assert facts["cgroup"] in ("v1", "v2")
    assert facts["kernel"] == os.uname().release
