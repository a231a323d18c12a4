"""Plumb a lab's network: its bridge, and per host a netns and a veth pair.

Names carry the lab's tag so that several labs live side by side, and every part
is found again by its name (see ``mockerops.lab`` for the layout). Each
``ensure_*`` step repairs what is missing or half made, so it may run again.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable

from mockerops.errors import LabError
from mockerops.lab_cmd import run
from mockerops.lab_procs import kill_lab_processes


def netns_name(tag: str, index: int) -> str:
    """Return the netns (and root-side veth) name of host ``index`` of a lab."""
    return f"mo-{tag}-{index}"


def bridge_name(tag: str) -> str:
    """Return the name of a lab's bridge in the root namespace."""
    return f"mo-{tag}-br"


def _ip_json(args: list[str]) -> list[dict]:
    """Run ``ip -j ARGS`` and return its parsed output ([] when it prints nothing)."""
    out = run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def netns_names() -> set[str]:
    """Return the names of all network namespaces."""
    return {entry["name"] for entry in _ip_json(["netns", "list"])}


def _links(netns: str | None = None) -> set[str]:
    """Return the link names in a netns, or in the root namespace."""
    prefix = ["-n", netns] if netns else []
    return {link["ifname"] for link in _ip_json([*prefix, "link", "show"])}


def lab_netns(tag: str) -> dict[int, str]:
    """Return the lab's existing namespaces by host index."""
    pattern = re.compile(rf"mo-{re.escape(tag)}-(\d+)")
    found = {}
    for ns in netns_names():
        match = pattern.fullmatch(ns)
        if match:
            found[int(match.group(1))] = ns
    return found


def lab_links(tag: str) -> list[str]:
    """Return the lab's links in the root namespace: its veths and its bridge."""
    pattern = re.compile(rf"mo-{re.escape(tag)}-(\d+|br)")
    return sorted(link for link in _links() if pattern.fullmatch(link))


def netns_inode(ns: str) -> int | None:
    """Return the inode of a named netns, or None if it is gone."""
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None


def parse_subnet(subnet: str, n: int) -> ipaddress.IPv4Network:
    """Return the subnet, refusing one that is not private or too small for n hosts."""
    try:
        net = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise LabError(
            f"bad lab subnet {subnet!r}: {exc}", hint="give e.g. 10.200.0.0/24"
        ) from None
    if not net.is_private:
        raise LabError(
            f"lab subnet {subnet!r} is not a private range",
            hint="use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 so "
            "lab addresses never shadow real ones",
        )
    # .1 is the bridge, hosts start at .11, and the broadcast address stays free.
    if net.num_addresses < 10 + n + 2:
        raise LabError(
            f"lab subnet {subnet!r} is too small for {n} hosts",
            hint="use a /24, which holds up to 200 lab hosts",
        )
    return net


def host_address(net: ipaddress.IPv4Network, index: int) -> str:
    """Return the address of host INDEX of a lab on NET."""
    return str(net.network_address + 10 + index)


def check_subnet_free(net: ipaddress.IPv4Network, bridge: str) -> None:
    """Refuse a subnet that overlaps an address or route not on this lab's bridge."""
    for link in _ip_json(["-4", "addr", "show"]):
        for addr in link.get("addr_info", []):
            other = ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}")
            if link["ifname"] != bridge and other.network.overlaps(net):
                raise LabError(
                    f"lab subnet {net} overlaps {other} on {link['ifname']}",
                    hint="pick another --subnet (each lab needs its own), or run "
                    "'mockerops lab down' for the lab that holds it",
                )
    for route in _ip_json(["-4", "route", "show"]):
        if route.get("dst") in (None, "default") or route.get("dev") == bridge:
            continue
        other = ipaddress.IPv4Network(route["dst"], strict=False)
        if other.overlaps(net):
            raise LabError(
                f"lab subnet {net} overlaps route {other} via {route.get('dev')}",
                hint="pick another --subnet",
            )


def bridge_subnet(bridge: str) -> str | None:
    """Return the subnet an existing bridge serves, or None."""
    try:
        links = _ip_json(["-4", "addr", "show", "dev", bridge])
    except LabError:
        return None
    for link in links:
        for addr in link.get("addr_info", []):
            iface = ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}")
            return str(iface.network)
    return None


def ensure_bridge(tag: str, net: ipaddress.IPv4Network) -> None:
    """Create the lab's bridge with the subnet's .1, or repair it."""
    bridge = bridge_name(tag)
    if bridge not in _links():
        run(["ip", "link", "add", bridge, "type", "bridge"])
    gateway = f"{net.network_address + 1}/{net.prefixlen}"
    run(["ip", "addr", "replace", gateway, "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])


def ensure_host_net(tag: str, index: int, net: ipaddress.IPv4Network) -> bool:
    """Create or repair one host's namespace and veth; return whether it changed."""
    ns = netns_name(tag, index)
    changed = False
    if ns not in netns_names():
        run(["ip", "netns", "add", ns])
        changed = True

    if "eth0" not in _links(ns) or ns not in _links():
        # One half of a pair without the other is a leftover: drop both and start
        # again (deleting either end of a veth deletes its peer).
        run(["ip", "link", "del", ns], check=False)
        run(["ip", "-n", ns, "link", "del", "eth0"], check=False)
        # Making the peer inside the namespace avoids a temporary name in the root
        # namespace that another lab could collide with.
        run(["ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0",
             "netns", ns])
        changed = True

    address = f"{host_address(net, index)}/{net.prefixlen}"
    run(["ip", "link", "set", ns, "master", bridge_name(tag), "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "-n", ns, "addr", "replace", address, "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])
    run(["ip", "-n", ns, "route", "replace", "default", "via",
         str(net.network_address + 1)])
    return changed


def remove_netns(tag: str, indices: Iterable[int], dirs: list[str]) -> list[str]:
    """Stop the processes of some lab hosts (and containers rooted under dirs), then
    delete the hosts' namespaces and veths."""
    namespaces = [netns_name(tag, i) for i in indices]
    inodes = {i for i in map(netns_inode, namespaces) if i is not None}
    removed = []
    killed = kill_lab_processes(inodes, dirs)
    if killed:
        removed.append(f"{killed} process" + ("es" if killed != 1 else ""))
    present = netns_names()
    links = _links()
    for ns in namespaces:
        if ns in links:
            run(["ip", "link", "del", ns], check=False)
            removed.append(f"link {ns}")
        if ns in present:
            run(["ip", "netns", "del", ns])
            removed.append(f"netns {ns}")
    return removed
