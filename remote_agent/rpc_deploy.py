"""Handlers a deploy needs on the host: lock, health probes, port switch, history.

    deploy.lock / deploy.unlock / deploy.lock_status   the per-app deploy lock
    deploy.health          one http or tcp probe of a container's address
    deploy.move_ports      publish an app's ports on new targets, atomically
    deploy.remove_ports    stop publishing an app's ports
    deploy.history / deploy.record                     versions deployed here

Published ports of deployed apps live in a nat chain and a filter chain per app,
jumped to from net.py's MOCKEROPS-DNAT and MOCKEROPS-FORWARD (deployed containers
are started with no ports of their own). A switch rewrites the app's nat chain
with one ``iptables-restore --noflush``: the
kernel swaps the whole table in one step (a single transaction under nf_tables),
so a new connection sees either every old rule or every new one, never a gap
that would refuse it. NAT is decided on a connection's first packet, so
connections already open keep reaching the old container through conntrack.
"""

import hashlib
import http.client
import os
import socket
import time

from remote_agent import deploylock, net
from remote_agent.errors import InvalidRequest
from remote_agent.server import rpc
from remote_agent.util import file_lock, read_json, run, write_json

HISTORY_KEEP = 10
HEALTH_OUTPUT = 2000


# -- lock ----------------------------------------------------------------------


@rpc("deploy.lock")
def lock(ctx, app, owner, ttl=deploylock.DEFAULT_TTL, renew=False, token=None):
    """Take (or with renew and token, extend) the app's deploy lock on this host."""
    return deploylock.acquire(ctx.root, app, owner, ttl=ttl, renew=renew, token=token)


@rpc("deploy.unlock")
def unlock(ctx, app, token=None, force=False):
    """Release the app's deploy lock; force releases one held by someone else."""
    return {"released": deploylock.release(ctx.root, app, token=token, force=force)}


@rpc("deploy.lock_status")
def lock_status(ctx, app):
    """Return who holds the app's deploy lock (without its token), or None."""
    return deploylock.status(ctx.root, app)


# -- health --------------------------------------------------------------------


def check_address(ip, port):
    """Return (ip, port) after checking them, or raise InvalidRequest."""
    try:
        socket.inet_aton(str(ip))
    except OSError:
        raise InvalidRequest("health check needs the container's IPv4 address, "
                             "got %r" % (ip,))
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidRequest("bad health check port %r" % (port,))
    return str(ip), port


def probe_tcp(ip, port, timeout):
    """Return (healthy, output) for a TCP connect to ip:port."""
    try:
        sock = socket.create_connection((ip, port), timeout=timeout)
    except OSError as exc:
        return False, "tcp %s:%d: %s" % (ip, port, exc.strerror or exc)
    sock.close()
    return True, "tcp %s:%d: connected" % (ip, port)


def probe_http(ip, port, path, timeout):
    """Return (healthy, output) for GET path: healthy on a 2xx or 3xx status."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "mockerops-health"})
        resp = conn.getresponse()
        body = resp.read(HEALTH_OUTPUT).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return False, "GET http://%s:%d%s: %s" % (ip, port, path, reason)
    finally:
        conn.close()
    healthy = 200 <= resp.status < 400
    return healthy, "GET http://%s:%d%s: %d %s %s" % (
        ip, port, path, resp.status, resp.reason, body.strip()[:200]
    )


@rpc("deploy.health")
def health(ctx, kind, ip, port, path="/", timeout=3.0):
    """Probe a container once over http or tcp; return healthy, output, elapsed."""
    ip, port = check_address(ip, port)
    timeout = float(timeout)
    if not 0 < timeout <= 300:
        raise InvalidRequest("health check timeout must be in (0, 300], got %r"
                             % timeout)
    started = time.monotonic()
    if kind == "tcp":
        healthy, output = probe_tcp(ip, port, timeout)
    elif kind == "http":
        if not isinstance(path, str) or not path.startswith("/"):
            raise InvalidRequest("http health check path must start with '/'")
        healthy, output = probe_http(ip, port, path, timeout)
    else:
        raise InvalidRequest("health check kind must be http or tcp, got %r" % kind)
    return {
        "healthy": healthy,
        "output": output,
        "elapsed": round(time.monotonic() - started, 3),
    }


# -- ports ---------------------------------------------------------------------


def app_chain(app):
    """Return the nat chain of an app's published ports (<= 28 characters)."""
    deploylock.lock_path("/", app)  # validates the name
    return "MOCKEROPS-APP-" + hashlib.sha256(app.encode()).hexdigest()[:12]


def check_rule(rule):
    """Return a validated port rule dict."""
    if not isinstance(rule, dict):
        raise InvalidRequest("a port rule must be an object, got %r" % (rule,))
    out = {}
    for key in ("host_port", "container_port"):
        value = rule.get(key)
        if not isinstance(value, int) or not 0 < value < 65536:
            raise InvalidRequest("bad %s %r in port rule" % (key, value))
        out[key] = value
    out["proto"] = rule.get("proto") or "tcp"
    if out["proto"] not in ("tcp", "udp"):
        raise InvalidRequest("bad proto %r in port rule" % (out["proto"],))
    out["host_ip"] = rule.get("host_ip") or ""
    targets = rule.get("targets") or []
    for address in [out["host_ip"]] + list(targets):
        if address:
            check_address(address, 1)
    out["targets"] = list(targets)
    return out


def dnat_lines(chain, rule):
    """Return iptables-restore lines that spread one port over its targets.

    With several targets, rule i of n matches with probability 1/(n-i), so each
    target gets an equal share of new connections and the last takes the rest.
    """
    match = "-p %s" % rule["proto"]
    if rule["host_ip"]:
        match += " -d %s/32" % rule["host_ip"]
    match += " -m %s --dport %d" % (rule["proto"], rule["host_port"])
    lines = []
    targets = rule["targets"]
    for i, ip in enumerate(targets):
        left = len(targets) - i
        spread = ""
        if left > 1:
            spread = " -m statistic --mode random --probability %.8f" % (1.0 / left)
        lines.append("-A %s %s%s -j DNAT --to-destination %s:%d" % (
            chain, match, spread, ip, rule["container_port"]))
    return lines


def iptables_ok(*args):
    """Return whether an iptables check command succeeds."""
    return run(("iptables", "-w") + args, check=False).returncode == 0


def app_comment(app):
    """Return the comment that marks the jumps to an app's chains."""
    return ("-m", "comment", "--comment", "mockerops:app:%s" % app)


def ensure_hooks(root, app, chain):
    """Make net's shared chains jump to the app's nat and filter chains.

    The app's chains hang off MOCKEROPS-DNAT and MOCKEROPS-FORWARD, so they
    share net.py's hooks: PREROUTING and OUTPUT for local destinations, the
    localhost masquerade and route_localnet on the bridge.
    """
    if not iptables_ok("-t", "nat", "-n", "-L", net.DNAT_CHAIN):
        subnet = net.read_ipam(root).get("subnet") or net.DEFAULT_SUBNET
        net.ensure_base(subnet)
    for table, parent in (("nat", net.DNAT_CHAIN), ("filter", net.FORWARD_CHAIN)):
        if not iptables_ok("-t", table, "-n", "-L", chain):
            run(("iptables", "-w", "-t", table, "-N", chain))
        jump = ("-j", chain) + app_comment(app)
        if not iptables_ok("-t", table, "-C", parent, *jump):
            run(("iptables", "-w", "-t", table, "-I", parent, "1") + jump)


def restore_input(chain, rules):
    """Return iptables-restore input that rewrites the app's chains.

    Declaring a chain flushes it, and each table's block is committed whole.
    filter goes first: its accepts match the original destination port of any
    DNATed connection, not the targets, so they never lag behind a switch.
    """
    lines = ["*filter", ":%s - [0:0]" % chain]
    for rule in rules:
        lines.append(
            "-A %s -o %s -p %s -m conntrack --ctstate DNAT --ctorigdstport %d "
            "-j ACCEPT" % (chain, net.BRIDGE, rule["proto"], rule["host_port"]))
    lines += ["COMMIT", "*nat", ":%s - [0:0]" % chain]
    for rule in rules:
        lines.extend(dnat_lines(chain, rule))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def ports_path(root, app):
    """Return where the app's published ports are recorded."""
    deploylock.lock_path(root, app)
    return os.path.join(root, "apps", app, "ports.json")


@rpc("deploy.move_ports")
def move_ports(ctx, app, rules):
    """Point the app's published ports at new targets in one atomic change.

    Refuses, changing nothing, a host port another app or a container publishes.
    """
    chain = app_chain(app)
    if not isinstance(rules, list):
        raise InvalidRequest("rules must be a list")
    rules = [check_rule(r) for r in rules]
    seen = set()
    for rule in rules:
        ident = (rule["host_port"], rule["proto"])
        if ident in seen:
            raise InvalidRequest("port %s/%s is published twice"
                                 % (rule["host_port"], rule["proto"]))
        seen.add(ident)

    # ipam_lock inside the deploy lock (never the other way round): a plain
    # container's port allocation holds ipam_lock alone, so neither side can
    # take a port between the other's check and its record.
    with file_lock(os.path.join(ctx.root, "locks", "deploy-ports.lock")), \
            net.ipam_lock(ctx.root):
        for rule in rules:
            clash = net.port_conflict(ctx.root, published(rule), skip_app=app)
            if clash is not None:
                raise clash
        ensure_hooks(ctx.root, app, chain)
        run(("iptables-restore", "-w", "--noflush"), input=restore_input(chain, rules))
        write_json(ports_path(ctx.root, app), {"chain": chain, "rules": rules,
                                               "changed": time.time()})
    return {"chain": chain, "rules": sum(len(r["targets"]) for r in rules)}


def published(rule):
    """Return a port rule as the port dict net.py compares published ports by."""
    return {"host_ip": rule["host_ip"] or "0.0.0.0", "host_port": rule["host_port"],
            "container_port": rule["container_port"], "proto": rule["proto"]}


@rpc("deploy.remove_ports")
def remove_ports(ctx, app):
    """Stop publishing the app's ports and delete its chains."""
    chain = app_chain(app)
    jump = ("-j", chain) + app_comment(app)
    with file_lock(os.path.join(ctx.root, "locks", "deploy-ports.lock")):
        for table, parent in (("nat", net.DNAT_CHAIN), ("filter", net.FORWARD_CHAIN)):
            while iptables_ok("-t", table, "-C", parent, *jump):
                run(("iptables", "-w", "-t", table, "-D", parent) + jump)
            if iptables_ok("-t", table, "-n", "-L", chain):
                run(("iptables", "-w", "-t", table, "-F", chain))
                run(("iptables", "-w", "-t", table, "-X", chain))
        path = ports_path(ctx.root, app)
        if os.path.exists(path):
            os.unlink(path)
    return {"chain": chain}


@rpc("deploy.ports")
def ports(ctx, app):
    """Return the app's published ports as last switched, or None."""
    return read_json(ports_path(ctx.root, app))


# -- history -------------------------------------------------------------------


def history_path(root, app):
    """Return the path of the app's deploy history on this host."""
    deploylock.lock_path(root, app)
    return os.path.join(root, "apps", app, "history.json")


def version_key(entry):
    """Return what makes two recorded versions the same: hashes and replicas."""
    return sorted(
        (name, c.get("spec_hash"), c.get("replicas"))
        for name, c in (entry.get("containers") or {}).items()
    )


@rpc("deploy.history")
def history(ctx, app):
    """Return the app's recorded versions on this host, oldest first."""
    return read_json(history_path(ctx.root, app)) or {"app": app, "versions": []}


@rpc("deploy.record")
def record(ctx, app, entry):
    """Append a deployed version, unless it is the same as the newest one."""
    if not isinstance(entry, dict) or not isinstance(entry.get("containers"), dict):
        raise InvalidRequest("a history entry needs a containers object")
    path = history_path(ctx.root, app)
    with file_lock(path + ".lock"):
        data = read_json(path) or {"app": app, "versions": []}
        versions = data.setdefault("versions", [])
        if versions and version_key(versions[-1]) == version_key(entry):
            return {"appended": False, "versions": len(versions)}
        versions.append(entry)
        del versions[:-HISTORY_KEEP]
        # A version's canonical spec holds the app's env: root's eyes only.
        write_json(path, data, mode=0o600)
    return {"appended": True, "versions": len(versions)}
