"""Handlers about the agent and its host: ping and facts."""

import os
import platform
import shutil
import sys

from remote_agent.server import hello_data, rpc


@rpc("agent.ping")
def ping(ctx):
    """Return the agent's hello data: versions, pid, uid, state root."""
    return hello_data(ctx.root)


@rpc("host.facts")
def facts(ctx):
    """Return what the container engine needs to know about this host."""
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "distribution": os_release().get("PRETTY_NAME", "unknown"),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "cgroup": cgroup_version(),
        "overlayfs": "overlay" in read_text("/proc/filesystems"),
        "iptables": shutil.which("iptables") is not None,
        "ip": shutil.which("ip") is not None,
        "uid": os.getuid(),
        "cpus": os.cpu_count(),
        "memory_mb": meminfo_mb(),
        "root": ctx.root,
    }


def read_text(path):
    """Return a file's text, or "" when it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def os_release():
    """Return /etc/os-release as a dict."""
    values = {}
    for line in read_text("/etc/os-release").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value.strip().strip('"')
    return values


def cgroup_version():
    """Return "v2", "v1" or "none" for the cgroup layout of this host."""
    types = set()
    for line in read_text("/proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == "/sys/fs/cgroup":
            if fields[2] == "cgroup2":
                return "v2"
        if len(fields) > 2 and fields[2] == "cgroup":
            types.add("v1")
    # A hybrid layout (tmpfs at /sys/fs/cgroup, v1 controllers below it, an
    # empty v2 tree at unified/) limits resources through v1.
    return "v1" if types else "none"


def meminfo_mb():
    """Return total memory in MiB, or 0 when unknown."""
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0
