"""Load Ansible-style inventories (YAML or INI) into hosts, groups and variables.

A file is parsed (by ``mockerops.inventory_files``) into a draft of groups and
hosts whose variables each remember where they were set (file:line). The draft is
completed as Ansible does it (a group without a parent goes under ``all``, a host
without a group goes to ``ungrouped``), ``group_vars/`` and ``host_vars/`` beside
the file are read, and each host's variables are merged in Ansible's order, lowest
first:

    inline vars of all < inline vars of its other groups < group_vars/all
    < group_vars/<its other groups> < inline host vars < host_vars/<host>

Among groups a deeper one (longest path from ``all``) wins, then the higher
``ansible_group_priority``, then the later name in alphabetical order. A host
belongs to its groups' ancestors too. The connection variables are then read
into typed ``Host`` fields; a ``mockerops_*`` variable wins over its
``ansible_*`` twin.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mockerops import patterns
from mockerops.errors import InventoryError
from mockerops.inventory_files import (
    Sourced,
    list_names,
    parse_inventory,
    read_vars,
    warn_strays,
)

DEFAULT_ROOT = "/var/lib/mockerops"

# Connection variables Ansible also knows; the other mockerops_* ones are ours.
_ANSIBLE_TWINS = {"host", "port", "user", "ssh_private_key_file", "become"}
_TRUE = {"yes", "y", "true", "t", "on", "1"}
_FALSE = {"no", "n", "false", "f", "off", "0"}


@dataclass(eq=False)
class Group:
    """A named set of hosts and child groups, with the variables set on it."""

    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    depth: int = 0
    priority: int = 1
    inline: Sourced = field(default_factory=dict, repr=False)
    from_files: Sourced = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        sizes = f"hosts={len(self.hosts)} children={len(self.children)}"
        return f"<Group {self.name} {sizes}>"


@dataclass(eq=False)
class Host:
    """A host to deploy to: its merged variables and how to reach it."""

    name: str
    vars: dict[str, Any]
    groups: list[str]
    address: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    become: bool = False
    root: str = DEFAULT_ROOT
    known_hosts: str | None = None
    subnet: str | None = None

    def __repr__(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"<Host {self.name} {address}:{self.port}>"


class Inventory:
    """Hosts and groups loaded from one inventory file."""

    def __init__(self, path: Path, hosts: dict[str, Host], groups: dict[str, Group]):
        self.path = path
        self.hosts = hosts
        self.groups = groups
        self._members: dict[str, list[str]] = {name: [] for name in groups}
        for host in hosts.values():
            for group in host.groups:
                self._members[group].append(host.name)

    def __repr__(self) -> str:
        return f"<Inventory {self.path}: {len(self.hosts)} hosts>"

    def group_hosts(self, name: str) -> list[str]:
        """Return the hosts in group NAME or below it, in inventory order."""
        return list(self._members.get(name, ()))

    def select(self, pattern: str, limit: str | None = None) -> list[Host]:
        """Return the hosts PATTERN selects, narrowed by LIMIT (Ansible's --limit)."""
        return patterns.select_hosts(self, pattern, limit)

    def to_list(self) -> dict[str, Any]:
        """Return the inventory shaped like ``ansible-inventory --list``."""
        listed: dict[str, Any] = {}
        for group in self.groups.values():
            entry: dict[str, Any] = {}
            if group.hosts and group.name != "all":
                entry["hosts"] = list(group.hosts)
            if group.children:
                entry["children"] = list(group.children)
            if entry or group.name == "all":
                listed[group.name] = entry
        hostvars = {name: dict(host.vars) for name, host in self.hosts.items()}
        return {"_meta": {"hostvars": hostvars}, **listed}


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Load an inventory file with the group_vars/ and host_vars/ beside it."""
    draft = Draft(Path(path))
    parse_inventory(draft)
    return _build(draft)


class Draft:
    """Groups, hosts and inline variables gathered while one file is parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.groups: dict[str, Group] = {}
        self.hosts: dict[str, Sourced] = {}
        self.edges: dict[tuple[str, str], str] = {}
        self.members: dict[str, set[str]] = {}  # fast "already listed" checks
        self.group("all")
        self.group("ungrouped")

    def group(self, name: str) -> Group:
        """Return group NAME, creating it on first mention."""
        if name not in self.groups:
            self.groups[name] = Group(name)
            self.members[name] = set()
        return self.groups[name]

    def add_hosts(self, group: str, pattern: str, where: str) -> list[str]:
        """Add the hosts PATTERN names (ranges, name:port) to GROUP."""
        name, port = patterns.split_port(pattern, where)
        names = patterns.expand_host_range(name, where)
        members, known = self.group(group).hosts, self.members[group]
        for host in names:
            _check_host_name(host, where)
            self.hosts.setdefault(host, {})
            if host not in known:
                known.add(host)
                members.append(host)
            if port is not None:
                self.hosts[host]["ansible_port"] = (port, where)
        return names

    def add_child(self, parent: str, child: str, where: str) -> None:
        """Make group CHILD a child of group PARENT."""
        if child == "all":
            raise InventoryError(
                f"{where}: group 'all' is listed as a child of {parent!r}",
                hint="every group is already under all; remove that entry",
            )
        if child not in self.group(parent).children:
            self.groups[parent].children.append(child)
            self.group(child).parents.append(parent)
            self.edges[(parent, child)] = where

    def set_group_var(self, group: str, key: str, value: Any, where: str) -> None:
        """Set an inline variable of GROUP; ansible_group_priority sets priority."""
        if key != "ansible_group_priority":
            self.group(group).inline[key] = (value, where)
            return
        try:
            self.group(group).priority = int(value)
        except (TypeError, ValueError):
            raise InventoryError(
                f"{where}: ansible_group_priority {value!r} of group {group!r} "
                "is not a whole number",
                hint="use an integer; higher wins among groups of equal depth",
            ) from None


def _check_host_name(name: str, where: str) -> None:
    """Raise unless NAME can be a host name that patterns can select."""
    if not name or any(c.isspace() or c in ",&!/" for c in name) or (
        ":" in name and not patterns.is_ipv6(name)
    ):
        raise InventoryError(
            f"{where}: {name!r} is not a valid host name",
            hint="a host name has no spaces, ',', '&', '!', '/' or stray ':'; "
            "put the address in ansible_host",
        )


# Completing the draft: tree, depths, membership, merged variables.


def _build(draft: Draft) -> Inventory:
    """Complete DRAFT and return the Inventory it describes."""
    groups = draft.groups
    member_of = _host_groups(draft, _complete_tree(draft))

    base = draft.path.absolute().parent
    group_dir, host_dir = base / "group_vars", base / "host_vars"
    in_group_dir, in_host_dir = list_names(group_dir), list_names(host_dir)
    for name, group in groups.items():
        group.from_files = read_vars(group_dir, name, in_group_dir)
        group.vars = _values({**group.inline, **group.from_files})
    warn_strays(group_dir, groups, "group")
    warn_strays(host_dir, draft.hosts, "host")

    hosts: dict[str, Host] = {}
    for name, inline in draft.hosts.items():
        ordered = member_of[name]
        files = read_vars(host_dir, name, in_host_dir)
        merged = _merge(groups, ordered, inline, files)
        hosts[name] = _make_host(name, merged, ["all", *ordered], base)
    return Inventory(draft.path, hosts, groups)


def _complete_tree(draft: Draft) -> dict[str, set[str]]:
    """Put parentless groups under all, set depths; return each group's ancestors."""
    groups = draft.groups
    for group in groups.values():
        if group.name != "all" and not group.parents:
            groups["all"].children.append(group.name)
            group.parents.append("all")
    _check_loops(draft)

    ancestors: dict[str, set[str]] = {}
    for name in groups:
        _depth(groups, name)
        _ancestors(groups, name, ancestors)
    return ancestors


def _host_groups(
    draft: Draft, ancestors: dict[str, set[str]]
) -> dict[str, list[str]]:
    """Return each host's groups but all, in precedence order; fill ungrouped."""
    groups = draft.groups
    belongs: dict[str, set[str]] = {name: {"all"} for name in draft.hosts}
    for group in groups.values():
        for host in group.hosts:
            belongs[host] |= ancestors[group.name] | {group.name}

    ordered: dict[str, list[str]] = {}
    for name, member_of in belongs.items():
        if member_of <= {"all", "ungrouped"}:
            member_of.add("ungrouped")
        else:
            # As in Ansible: a host listed in a real group leaves ungrouped.
            member_of.discard("ungrouped")
        ordered[name] = sorted(
            member_of - {"all"},
            key=lambda g: (groups[g].depth, groups[g].priority, g),
        )
    groups["ungrouped"].hosts = [h for h in belongs if "ungrouped" in belongs[h]]
    return ordered


def _check_loops(draft: Draft) -> None:
    """Raise if child groups loop back to a group above them."""
    state: dict[str, int] = {}  # 1 while on the current path, 2 when done

    def visit(name: str, trail: list[str]) -> None:
        """Walk down from NAME; TRAIL is the path of groups that led here."""
        state[name] = 1
        for child in draft.groups[name].children:
            if state.get(child) == 1:
                loop = " -> ".join([*trail[trail.index(child) :], child])
                raise InventoryError(
                    f"{draft.edges[(name, child)]}: child groups form a loop: {loop}",
                    hint=f"remove {child!r} from the children of {name!r}",
                )
            if child not in state:
                visit(child, [*trail, child])
        state[name] = 2

    for name in draft.groups:
        if name not in state:
            visit(name, [name])


def _depth(groups: dict[str, Group], name: str) -> int:
    """Set and return a group's depth: its longest path from all."""
    group = groups[name]
    if group.parents and not group.depth:
        group.depth = 1 + max(_depth(groups, parent) for parent in group.parents)
    return group.depth


def _ancestors(
    groups: dict[str, Group], name: str, memo: dict[str, set[str]]
) -> set[str]:
    """Return every group above NAME."""
    if name not in memo:
        found: set[str] = set()
        for parent in groups[name].parents:
            found |= {parent} | _ancestors(groups, parent, memo)
        memo[name] = found
    return memo[name]


def _merge(
    groups: dict[str, Group], ordered: list[str], inline: Sourced, files: Sourced
) -> Sourced:
    """Return a host's variables merged in Ansible's precedence, lowest first."""
    merged: Sourced = dict(groups["all"].inline)
    for name in ordered:
        merged.update(groups[name].inline)
    merged.update(groups["all"].from_files)
    for name in ordered:
        merged.update(groups[name].from_files)
    merged.update(inline)
    merged.update(files)
    return merged


def _values(sourced: Sourced) -> dict[str, Any]:
    """Return variables without their origins."""
    return {key: value for key, (value, _) in sourced.items()}


# Connection variables: typed Host fields, each error naming the host and origin.


def _pick(merged: Sourced, field_: str) -> tuple[str, Any, str] | None:
    """Return (variable, value, origin) of mockerops_FIELD, else ansible_FIELD."""
    names = [f"mockerops_{field_}"]
    if field_ in _ANSIBLE_TWINS:
        names.append(f"ansible_{field_}")
    for var in names:
        if var in merged:
            value, origin = merged[var]
            return var, value, origin
    return None


def _bad(name: str, picked: tuple[str, Any, str], want: str) -> InventoryError:
    """Return the error for a connection variable of the wrong type."""
    var, value, origin = picked
    return InventoryError(
        f"{origin}: host {name}: {var} {value!r} is not {want}", hint=f"use {want}"
    )


def _make_host(name: str, merged: Sourced, groups: list[str], base: Path) -> Host:
    """Return the Host for NAME with typed connection fields."""
    host = Host(name=name, vars=_values(merged), groups=groups, address=name)
    for field_ in ("host", "user", "root", "subnet"):
        picked = _pick(merged, field_)
        if picked is None:
            continue
        if not isinstance(picked[1], str) or not picked[1]:
            raise _bad(name, picked, "a non-empty string (quote it)")
        setattr(host, "address" if field_ == "host" else field_, picked[1])

    picked = _pick(merged, "port")
    if picked is not None:
        host.port = _as_port(name, picked)
    picked = _pick(merged, "become")
    if picked is not None:
        host.become = _as_bool(name, picked)
    host.key_file = _as_path(name, _pick(merged, "ssh_private_key_file"), base)
    host.known_hosts = _as_path(name, _pick(merged, "known_hosts"), base)

    if not host.root.startswith("/"):
        raise _bad(name, _pick(merged, "root"), "an absolute path")
    if host.subnet is not None:
        try:
            ipaddress.ip_network(host.subnet)
        except ValueError:
            raise _bad(name, _pick(merged, "subnet"), "a network such as 10.88.0.0/16")
    return host


def _as_port(name: str, picked: tuple[str, Any, str]) -> int:
    """Return a port variable as an int from 1 to 65535."""
    value = picked[1]
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _bad(name, picked, "a port number from 1 to 65535")
    return value


def _as_bool(name: str, picked: tuple[str, Any, str]) -> bool:
    """Return a boolean variable read as Ansible does (yes/no, true/false, 1/0)."""
    value = picked[1]
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _bad(name, picked, "a boolean (yes/no, true/false)")


def _as_path(name: str, picked: tuple[str, Any, str] | None, base: Path) -> str | None:
    """Return a path variable with ~ expanded, relative to the inventory's folder."""
    if picked is None:
        return None
    if not isinstance(picked[1], str) or not picked[1]:
        raise _bad(name, picked, "a file path")
    return str(base / Path(picked[1]).expanduser())
