"""The local lab against real namespaces and real OpenSSH: up, again, status, down."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import labkit
from mockerops.cli_lab import lab_app
from mockerops.errors import LabError
from mockerops.lab import (
    bridge_name,
    lab_down,
    lab_status,
    lab_tag,
    lab_up,
    missing_requirements,
    netns_name,
)

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
BUSYBOX = REPO / "playbooks" / "busybox"


def _ssh(info, host, command: str) -> subprocess.CompletedProcess:
    """Run a command on a lab host with strict host key checking."""
    args = ["ssh", "-i", str(info.key_path), "-F", "none",
            "-o", f"UserKnownHostsFile={info.known_hosts_path}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", f"root@{host.address}", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


# -- without a lab -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["lab", "t2hgwwg", "a_very_long_lab_name_of_31_chars"])
def test_kernel_names_fit_ifnamsiz(name):
    tag = lab_tag(name)
    assert len(netns_name(tag, 200)) <= 15
    assert len(bridge_name(tag)) <= 15


def test_long_names_get_distinct_tags():
    assert lab_tag("benchmark_one") != lab_tag("benchmark_two")


def test_missing_requirements_name_debian_packages(tmp_path):
    missing = missing_requirements(euid=1000, path=str(tmp_path))
    text = "\n".join(missing)
    assert missing[0].startswith("root:")
    for package in ("iproute2", "openssh-server", "openssh-client"):
        assert f"apt-get install {package}" in text


def test_down_refuses_a_dir_that_is_not_a_lab(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me\n")
    with pytest.raises(LabError, match="is not a lab dir: it holds precious.txt"):
        lab_down("zz", lab_dir=tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_cli_refuses_a_bad_name_in_one_line():
    result = runner.invoke(lab_app, ["up", "--name", "bad-name"])
    assert result.exit_code == LabError("").exit_code
    assert result.stderr.startswith("error: bad lab name 'bad-name'\n")
    assert result.stdout == ""


# -- on the session's lab ----------------------------------------------------------


@pytest.mark.lab
def test_up_starts_sshd_in_each_namespace(lab):
    assert [h.name for h in lab.hosts] == [f"{lab.name}{i}" for i in (1, 2, 3)]
    assert labkit.netns_of(lab.tag) == sorted(h.netns for h in lab.hosts)
    prefix = lab.subnet.rsplit(".", 1)[0]
    assert [h.address for h in lab.hosts] == [f"{prefix}.{i}" for i in (11, 12, 13)]
    for host in lab.hosts:
        assert labkit.read_banner(host.address).startswith(b"SSH-2.0-OpenSSH")


@pytest.mark.lab
def test_ssh_logs_in_with_strict_host_keys(lab):
    first, second = lab.hosts[0], lab.hosts[1]
    for host in lab.hosts:
        result = _ssh(lab, host, "ip -4 -o addr show dev eth0")
        assert result.returncode == 0, result.stderr
        assert f"inet {host.address}/24" in result.stdout

    # Hosts reach each other over the bridge, not only the controller.
    probe = (f"python3 -c 'import socket; s = socket.create_connection("
             f"(\"{second.address}\", 22), timeout=5); print(s.recv(64)[:8])'")
    result = _ssh(lab, first, probe)
    assert result.returncode == 0, result.stderr
    assert "SSH-2.0" in result.stdout


@pytest.mark.lab
def test_known_hosts_holds_each_host_key(lab):
    entries = {}
    for line in lab.known_hosts_path.read_text().splitlines():
        names, keytype, key = line.split()
        for name in names.split(","):
            entries[name] = (keytype, key)
    for host in lab.hosts:
        scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", "-T", "5", host.address],
                              capture_output=True, text=True, timeout=30)
        served = scan.stdout.split()[1:3]
        assert entries[host.address] == tuple(served)
        assert entries[host.name] == tuple(served)
    assert len({key for _, key in entries.values()}) == len(lab.hosts)


@pytest.mark.lab
def test_inventory_gives_each_host_its_own_root(lab):
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    assert inventory["all"]["vars"] == {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.key_path),
        "mockerops_known_hosts": str(lab.known_hosts_path),
    }
    hosts = inventory["all"]["children"][lab.name]["hosts"]
    assert list(hosts) == [h.name for h in lab.hosts]
    roots = [hosts[h.name]["mockerops_root"] for h in lab.hosts]
    assert len(set(roots)) == len(roots)
    for host in lab.hosts:
        assert hosts[host.name]["ansible_host"] == host.address
        assert hosts[host.name]["mockerops_root"] == str(
            lab.dir / "hosts" / host.name / "root"
        )
    assert lab.key_path.stat().st_mode & 0o077 == 0


@pytest.mark.lab
def test_up_twice_is_harmless(lab):
    before = lab_status(lab.name, lab.dir)
    again = lab_up(name=lab.name, lab_dir=lab.dir)
    assert [a.verb for a in again.actions] == ["kept"] * len(lab.hosts)
    assert again.hosts == lab.hosts
    assert again.inventory_path == lab.inventory_path
    assert lab_status(lab.name, lab.dir) == before
    assert all(s.answers for s in before)


@pytest.mark.lab
def test_status_prints_a_table(lab):
    args = ["status", "--name", lab.name, "--dir", str(lab.dir)]
    result = runner.invoke(lab_app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["HOST", "ADDRESS", "NETNS", "SSHD"]
    for line, host in zip(lines[1:], lab.hosts):
        assert line.split()[:4] == [host.name, host.address, host.netns, "running"]


@pytest.mark.lab
def test_a_taken_subnet_is_refused_and_leaves_nothing(lab, tmp_path):
    name = labkit.unique_name(suffix="x")
    with pytest.raises(LabError, match="overlaps"):
        lab_up(name=name, subnet=lab.subnet, lab_dir=tmp_path / "x",
               inventory_path=tmp_path / "x.yaml")
    leaks = labkit.snapshot(lab_tag(name), tmp_path / "x", files=(tmp_path / "x.yaml",))
    assert not leaks, str(leaks)


# -- labs of their own -------------------------------------------------------------


@pytest.mark.lab
def test_cli_grows_and_shrinks_a_lab_then_down_leaves_nothing(tmp_path):
    labkit.require_root()
    name, subnet = labkit.unique_name(suffix="g"), labkit.free_subnet()
    lab_dir, inventory = tmp_path / "lab", tmp_path / "inventory.yaml"
    common = ["--name", name, "--dir", str(lab_dir)]
    try:
        result = runner.invoke(lab_app, ["up", "-n", "2", "--subnet", subnet,
                                         "--inventory", str(inventory), *common])
        assert result.exit_code == 0, result.output
        prefix = subnet.rsplit(".", 1)[0]
        assert result.stdout.splitlines()[:2] == [f"Created: {name}1 {prefix}.11",
                                                  f"Created: {name}2 {prefix}.12"]

        result = runner.invoke(lab_app, ["up", "-n", "4", *common])
        assert result.exit_code == 0, result.output
        verbs = [line.split()[0] for line in result.stdout.splitlines()[:4]]
        assert verbs == ["Kept:", "Kept:", "Created:", "Created:"]
        assert labkit.read_banner(f"{prefix}.14").startswith(b"SSH-")

        result = runner.invoke(lab_app, ["up", "-n", "3", *common])
        assert result.exit_code == 0, result.output
        assert f"Removed: {name}4 {prefix}.14" in result.stdout
        assert len(labkit.netns_of(lab_tag(name))) == 3
        assert name + "4" not in inventory.read_text()

        inodes = labkit.netns_inodes(lab_tag(name))
        result = runner.invoke(lab_app, ["down", *common])
        assert result.exit_code == 0, result.output
        assert f"Removed: netns mo-{lab_tag(name)}-1" in result.stdout
        leaks = labkit.snapshot(lab_tag(name), lab_dir, inodes, files=(inventory,))
        assert not leaks, str(leaks)
    finally:
        lab_down(name, lab_dir=lab_dir, inventory_path=inventory)


@pytest.mark.lab
def test_down_cleans_up_after_up_failed_half_way(tmp_path):
    labkit.require_root()
    name = labkit.unique_name(suffix="h")
    tag, lab_dir = lab_tag(name), tmp_path / "lab"
    # A host key sshd cannot load makes the second host's sshd fail after the first
    # host is fully up: a realistic half-built lab.
    bad_key = lab_dir / "hosts" / f"{name}2" / "ssh_host_ed25519_key"
    bad_key.parent.mkdir(parents=True)
    bad_key.write_text("not a key\n")
    bad_key.with_name(bad_key.name + ".pub").write_text("ssh-ed25519 AAAA bad\n")
    strays = []
    try:
        with pytest.raises(LabError, match=f"sshd for lab host {name}2 did not start"):
            lab_up(name=name, n=3, subnet=labkit.free_subnet(), lab_dir=lab_dir,
                   inventory_path=tmp_path / "inventory.yaml")

        # What other parts leave there: a stray process, a container-like child in
        # a namespace of its own, and stacked mounts under a host's state root.
        ns = netns_name(tag, 1)
        in_ns = ["ip", "netns", "exec", ns]
        strays.append(subprocess.Popen([*in_ns, "sleep", "300"],
                                       start_new_session=True))
        container = "unshare -n sleep 301 & exec sleep 302"
        strays.append(subprocess.Popen([*in_ns, "sh", "-c", container],
                                       start_new_session=True))
        mnt = lab_dir / "hosts" / f"{name}1" / "root" / "mnt"
        mnt.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "lab-test", str(mnt)], check=True)
        (mnt / "inner").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "lab-test", str(mnt / "inner")],
                       check=True)
        assert labkit.mounts_under(lab_dir)

        inodes = labkit.netns_inodes(tag)
        removed = lab_down(name, lab_dir=lab_dir)
        assert f"mount {mnt}" in removed
        for proc in strays:
            assert proc.wait(timeout=10) < 0
        inventory = tmp_path / "inventory.yaml"
        leaks = labkit.snapshot(tag, lab_dir, inodes, files=(inventory,))
        assert not leaks, str(leaks)
    finally:
        lab_down(name, lab_dir=lab_dir)
        for proc in strays:
            proc.kill()
            proc.wait()


@pytest.mark.lab
def test_down_removes_the_cgroups_of_running_containers(tmp_path):
    labkit.require_root()
    if not (BUSYBOX / "rootfs" / "busybox.tar.gz").exists():
        subprocess.run([sys.executable, str(REPO / "playbooks" / "make_rootfs.py"),
                        "busybox"], check=True, timeout=120)
    name, subnet = labkit.unique_name(suffix="c"), labkit.free_subnet()
    lab_dir, inventory = tmp_path / "lab", tmp_path / "inventory.yaml"
    info = lab_up(name=name, n=1, subnet=subnet, lab_dir=lab_dir,
                  inventory_path=inventory)
    try:
        host = info.hosts[0].name

        def cli(verb: list[str], *args: str) -> None:
            proc = subprocess.run(
                [sys.executable, "-m", "mockerops", *verb, "-i", str(inventory), host,
                 *args], capture_output=True, text=True, timeout=300, cwd=REPO)
            assert proc.returncode == 0, proc.stdout + proc.stderr

        cli(["build"], str(BUSYBOX / "Mockerfile"), "-t", "bb:1")
        cli(["container", "run"], "bb:1", "--name", "web", "-m", "64m")
        ids = labkit.container_ids(lab_dir)
        assert len(ids) == 1
        # The running container has a group; its supervisor dies with the lab.
        assert labkit.cgroups_of(ids)

        inodes = labkit.netns_inodes(info.tag)
        removed = lab_down(name, lab_dir=lab_dir, inventory_path=inventory)
        assert any(item.startswith("cgroup ") for item in removed)
        leaks = labkit.snapshot(info.tag, lab_dir, inodes, files=(inventory,),
                                containers=ids)
        assert not leaks, str(leaks)
    finally:
        lab_down(name, lab_dir=lab_dir, inventory_path=inventory)
