"""Container networking: one bridge per host, IPAM, veth pairs, NAT and ports.

Layout on a host (names fixed so every agent on it agrees):

    bridge mockerops0            gateway = first address of the subnet
    nat    MOCKEROPS-DNAT        published ports; hooked from PREROUTING and OUTPUT
    nat    MOCKEROPS-POSTROUTING outbound MASQUERADE, localhost and hairpin SNAT
    filter MOCKEROPS-FORWARD     accepts for the bridge; hooked first in FORWARD

Every per-container rule carries ``-m comment --comment mockerops:<id>`` so a
container's rules are found and deleted exactly; shared rules carry
``mockerops:base``. Addresses and published ports are allocated in
``<root>/net/ipam.json`` under ``<root>/net/ipam.lock``.

A host port is published either by a container (in ipam.json) or by a deployed
app (``<root>/apps/<app>/ports.json``, written by rpc_deploy's
deploy.move_ports). Both sides check a new port against both records while
holding ipam.lock, so neither can take a port the other holds.
"""

import errno
import ipaddress
import os
import shlex
import socket

from remote_agent import util
from remote_agent.errors import CommandFailed, Conflict, InvalidRequest

BRIDGE = "mockerops0"
DEFAULT_SUBNET = "10.88.0.0/24"
DNAT_CHAIN = "MOCKEROPS-DNAT"
POST_CHAIN = "MOCKEROPS-POSTROUTING"
FORWARD_CHAIN = "MOCKEROPS-FORWARD"
BASE_COMMENT = "mockerops:base"
IPTABLES = "iptables"


def comment(container_id):
    """Return the iptables comment that marks container_id's rules."""
    return "mockerops:%s" % container_id


def veth_names(container_id):
    """Return (host side, container side before rename) link names."""
    # IFNAMSIZ is 16 with the NUL: at most 15 characters.
    return "mo" + container_id[:12], "mp" + container_id[:12]


def parse_port(spec):
    """Parse "[ip:]host:container[/proto]" (or "container") into a dict."""
    text = str(spec).strip()
    proto = "tcp"
    if "/" in text:
        text, proto = text.rsplit("/", 1)
        proto = proto.lower()
    if proto not in ("tcp", "udp"):
        raise InvalidRequest("port %r: protocol must be tcp or udp" % (spec,))
    parts = text.split(":")
    if len(parts) == 1:
        host_ip, host_port, cport = "0.0.0.0", parts[0], parts[0]
    elif len(parts) == 2:
        host_ip, (host_port, cport) = "0.0.0.0", parts
    elif len(parts) == 3:
        host_ip, host_port, cport = parts
        host_ip = host_ip or "0.0.0.0"
    else:
        raise InvalidRequest("port %r is not [ip:]host:container[/udp]" % (spec,))
    try:
        ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise InvalidRequest("port %r: %r is not an IPv4 address" % (spec, host_ip))
    numbers = []
    for value in (host_port, cport):
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise InvalidRequest("port %r: %r is not a port number 1-65535"
                                 % (spec, value))
        numbers.append(int(value))
    return {"host_ip": host_ip, "host_port": numbers[0],
            "container_port": numbers[1], "proto": proto}


def format_port(port):
    """Return a port dict as "ip:host->container/proto"."""
    return "%s:%d->%d/%s" % (port["host_ip"], port["host_port"],
                             port["container_port"], port["proto"])


def _overlaps(a, b):
    """Return True when two published ports would catch the same packets."""
    if a["proto"] != b["proto"] or a["host_port"] != b["host_port"]:
        return False
    return "0.0.0.0" in (a["host_ip"], b["host_ip"]) or a["host_ip"] == b["host_ip"]


def app_ports(root):
    """Return app name -> the port dicts its deploy publishes on this host."""
    apps = os.path.join(root, "apps")
    try:
        names = sorted(os.listdir(apps))
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        record = util.read_json(os.path.join(apps, name, "ports.json"))
        if not record:
            continue
        # A deploy rule's empty host_ip means every address, as 0.0.0.0 does here.
        found[name] = [{"host_ip": rule.get("host_ip") or "0.0.0.0",
                        "host_port": rule["host_port"],
                        "container_port": rule["container_port"],
                        "proto": rule.get("proto") or "tcp"}
                       for rule in record.get("rules") or ()]
    return found


def port_conflict(root, port, skip_app=None):
    """Return a Conflict naming the container or app that publishes port, or None.

    skip_app is the app being switched: its own ports are no clash. Call it
    holding ipam_lock(root).
    """
    for cid, alloc in sorted(read_ipam(root).get("containers", {}).items()):
        for other in alloc.get("ports", ()):
            if _overlaps(port, other):
                name = alloc.get("name") or cid[:12]
                return Conflict(
                    "host port %s is already published by container %r; remove it "
                    "('mockerops rm HOST %s') or pick another host port"
                    % (format_port(port), name, name), container=cid)
    for app, ports in app_ports(root).items():
        if app == skip_app:
            continue
        for other in ports:
            if _overlaps(port, other):
                return Conflict(
                    "host port %s is already published by app %r; remove that app "
                    "('mockerops remove' with its app.yaml) or pick another host "
                    "port" % (format_port(port), app), app=app)
    return None


def _check_host_port_free(port):
    """Raise Conflict when a host process already listens on the port."""
    kind = socket.SOCK_STREAM if port["proto"] == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.bind((port["host_ip"], port["host_port"]))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise Conflict("host port %s is in use by a process on this host"
                           % format_port(port), port=port)
        # EADDRNOTAVAIL: the address is not on this host; DNAT would never match.
        raise InvalidRequest("cannot publish %s: %s" % (format_port(port),
                                                          exc.strerror))
    finally:
        sock.close()


def _ipam_paths(root):
    """Return (ipam.json, lock) paths under root."""
    directory = os.path.join(root, "net")
    return os.path.join(directory, "ipam.json"), os.path.join(directory, "ipam.lock")


def ipam_lock(root):
    """Return a context manager holding the lock of addresses and host ports."""
    return util.file_lock(_ipam_paths(root)[1])


def read_ipam(root):
    """Return the IPAM record (subnet and per-container allocations)."""
    path, _ = _ipam_paths(root)
    return util.read_json(path, {"subnet": None, "containers": {}})


def allocate(root, container_id, name, ports=(), subnet=None):
    """Reserve an address and the published ports for a container; return them.

    Raises Conflict when a host port is published by another container or a
    deployed app or used by a host process, naming it, and InvalidRequest on a
    bad subnet.
    """
    parsed = [parse_port(p) if not isinstance(p, dict) else p for p in ports]
    for i, port in enumerate(parsed):
        for other in parsed[:i]:
            if _overlaps(port, other):
                raise InvalidRequest("port %s is published twice" % format_port(port))
    path, lock = _ipam_paths(root)
    with util.file_lock(lock):
        ipam = read_ipam(root)
        current = ipam.get("subnet")
        wanted = subnet or current or DEFAULT_SUBNET
        try:
            network = ipaddress.IPv4Network(wanted, strict=True)
        except ValueError as exc:
            raise InvalidRequest("subnet %r is not an IPv4 network: %s" % (wanted, exc))
        if network.num_addresses < 4:
            raise InvalidRequest("subnet %r is too small for containers" % wanted)
        allocs = ipam.setdefault("containers", {})
        if current and str(network) != current and allocs:
            raise Conflict("bridge %s already uses subnet %s; remove its %d "
                           "container(s) before asking for %s"
                           % (BRIDGE, current, len(allocs), network))
        for port in parsed:
            clash = port_conflict(root, port)
            if clash is not None:
                raise clash
            _check_host_port_free(port)
        used = {a["ip"] for a in allocs.values()}
        hosts = network.hosts()
        gateway = str(next(hosts))
        for candidate in hosts:
            if str(candidate) not in used:
                ip = str(candidate)
                break
        else:
            raise Conflict("subnet %s has no free address left" % network)
        alloc = {"ip": ip, "name": name, "ports": parsed}
        allocs[container_id] = alloc
        ipam["subnet"] = str(network)
        util.write_json(path, ipam)
    return dict(alloc, gateway=gateway, prefix=network.prefixlen, subnet=str(network))


def release(root, container_id):
    """Free a container's address and ports."""
    path, lock = _ipam_paths(root)
    with util.file_lock(lock):
        ipam = read_ipam(root)
        if ipam.get("containers", {}).pop(container_id, None) is not None:
            util.write_json(path, ipam)


def lookup(root, container_id):
    """Return the container's allocation with gateway and prefix, or None."""
    ipam = read_ipam(root)
    alloc = ipam.get("containers", {}).get(container_id)
    if alloc is None:
        return None
    network = ipaddress.IPv4Network(ipam["subnet"])
    return dict(alloc, gateway=str(next(network.hosts())), prefix=network.prefixlen,
                subnet=str(network))


def _ipt(table, *args, check=True):
    """Run iptables on table, waiting for the xtables lock."""
    return util.run([IPTABLES, "-w", "-t", table] + list(args), check=check)


def _ensure_chain(table, chain):
    """Create chain in table unless it exists."""
    if _ipt(table, "-n", "-L", chain, check=False).returncode != 0:
        _ipt(table, "-N", chain)


def _ensure_rule(table, chain, rule, insert=False):
    """Append (or insert first) rule in chain unless an equal rule is there."""
    if _ipt(table, "-C", chain, *rule, check=False).returncode == 0:
        return
    if insert:
        _ipt(table, "-I", chain, "1", *rule)
    else:
        _ipt(table, "-A", chain, *rule)


def _sysctl(path, value):
    """Write value to a /proc/sys file."""
    with open(path, "w") as f:
        f.write(value)


def ensure_base(subnet):
    """Create the bridge, enable forwarding and install the shared chains."""
    network = ipaddress.IPv4Network(subnet)
    gateway = "%s/%d" % (next(network.hosts()), network.prefixlen)
    if util.run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
        util.run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = util.run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout
    if gateway not in addrs.split():
        util.run(["ip", "addr", "flush", "dev", BRIDGE])
        util.run(["ip", "addr", "add", gateway, "dev", BRIDGE])
    util.run(["ip", "link", "set", BRIDGE, "up"])
    _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    # Lets DNAT'd packets from 127.0.0.1 be routed out of the bridge, so the
    # host reaches a published port on localhost without a userland proxy.
    _sysctl("/proc/sys/net/ipv4/conf/%s/route_localnet" % BRIDGE, "1")
    base = ["-m", "comment", "--comment", BASE_COMMENT]
    _ensure_chain("nat", DNAT_CHAIN)
    _ensure_chain("nat", POST_CHAIN)
    _ensure_chain("filter", FORWARD_CHAIN)
    local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN] + base
    _ensure_rule("nat", "PREROUTING", local)
    _ensure_rule("nat", "OUTPUT", local)
    _ensure_rule("nat", "POSTROUTING", ["-j", POST_CHAIN] + base)
    _ensure_rule("nat", POST_CHAIN, ["-s", str(network), "!", "-o", BRIDGE,
                                     "-j", "MASQUERADE"] + base)
    _ensure_rule("nat", POST_CHAIN, ["-s", "127.0.0.0/8", "-o", BRIDGE,
                                     "-j", "MASQUERADE"] + base)
    _ensure_rule("filter", "FORWARD", ["-j", FORWARD_CHAIN] + base, insert=True)
    _ensure_rule("filter", FORWARD_CHAIN, [
        "-o", BRIDGE, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
        "-j", "ACCEPT"] + base)
    _ensure_rule("filter", FORWARD_CHAIN, ["-i", BRIDGE, "-j", "ACCEPT"] + base)


def teardown_base():
    """Remove the shared chains, their hooks and the bridge (no containers left)."""
    base = ["-m", "comment", "--comment", BASE_COMMENT]
    local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", DNAT_CHAIN] + base
    for table, chain, rule in (("nat", "PREROUTING", local), ("nat", "OUTPUT", local),
                               ("nat", "POSTROUTING", ["-j", POST_CHAIN] + base),
                               ("filter", "FORWARD", ["-j", FORWARD_CHAIN] + base)):
        while _ipt(table, "-C", chain, *rule, check=False).returncode == 0:
            _ipt(table, "-D", chain, *rule)
    for table, chain in (("nat", DNAT_CHAIN), ("nat", POST_CHAIN),
                         ("filter", FORWARD_CHAIN)):
        if _ipt(table, "-n", "-L", chain, check=False).returncode == 0:
            _ipt(table, "-F", chain)
            _ipt(table, "-X", chain)
    if util.run(["ip", "link", "show", BRIDGE], check=False).returncode == 0:
        util.run(["ip", "link", "del", BRIDGE])


def create_veth(container_id, pid):
    """Make the veth pair, plug the host side into the bridge, move the peer to pid."""
    host, peer = veth_names(container_id)
    util.run(["ip", "link", "del", host], check=False)
    util.run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
    try:
        util.run(["ip", "link", "set", host, "master", BRIDGE])
        util.run(["ip", "link", "set", host, "up"])
        util.run(["ip", "link", "set", peer, "netns", str(pid)])
    except CommandFailed:
        util.run(["ip", "link", "del", host], check=False)
        raise
    return host, peer


def configure_inside(peer, ip, prefix, gateway):
    """Inside the container's netns: name the peer eth0, address it, route out."""
    util.run(["ip", "link", "set", "lo", "up"])
    util.run(["ip", "link", "set", peer, "name", "eth0"])
    util.run(["ip", "addr", "add", "%s/%d" % (ip, prefix), "dev", "eth0"])
    util.run(["ip", "link", "set", "eth0", "up"])
    util.run(["ip", "route", "add", "default", "via", gateway])


def add_port_rules(container_id, ip, ports):
    """Install DNAT, hairpin and FORWARD rules for the container's ports."""
    tag = ["-m", "comment", "--comment", comment(container_id)]
    for port in ports:
        proto = port["proto"]
        dest = "%s:%d" % (ip, port["container_port"])
        match = ["-p", proto, "--dport", str(port["host_port"])]
        if port["host_ip"] != "0.0.0.0":
            match = ["-d", port["host_ip"]] + match
        _ipt("nat", "-A", DNAT_CHAIN, *(match + ["-j", "DNAT", "--to-destination",
                                                 dest] + tag))
        # Hairpin: a container reaching its own published port through the host.
        _ipt("nat", "-A", POST_CHAIN, "-s", ip, "-d", ip, "-p", proto, "--dport",
             str(port["container_port"]), "-j", "MASQUERADE", *tag)
        _ipt("filter", "-A", FORWARD_CHAIN, "-d", ip, "!", "-i", BRIDGE, "-o", BRIDGE,
             "-p", proto, "--dport", str(port["container_port"]), "-j", "ACCEPT",
             *tag)


def remove_rules(container_id):
    """Delete every iptables rule tagged with container_id's comment."""
    marker = comment(container_id)
    for table, chain in (("nat", DNAT_CHAIN), ("nat", POST_CHAIN),
                         ("filter", FORWARD_CHAIN)):
        listing = _ipt(table, "-S", chain, check=False)
        if listing.returncode != 0:
            continue
        for line in listing.stdout.splitlines():
            args = shlex.split(line)
            if len(args) < 2 or args[0] != "-A" or marker not in args:
                continue
            _ipt(table, "-D", *args[1:], check=False)


def remove_veth(container_id):
    """Delete the host side of the container's veth pair if it still exists."""
    host, _ = veth_names(container_id)
    if util.run(["ip", "link", "show", host], check=False).returncode == 0:
        util.run(["ip", "link", "del", host], check=False)


def cleanup(container_id):
    """Remove a container's rules and veth (safe to call more than once)."""
    remove_rules(container_id)
    remove_veth(container_id)
