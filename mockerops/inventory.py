"""Load Ansible-style inventories (YAML or INI) into hosts, groups and variables.

A file is parsed into a draft of groups and hosts whose variables each remember
where they were set (file:line). The draft is completed as Ansible does it (a
group without a parent goes under ``all``, a host without a group goes to
``ungrouped``), ``group_vars/`` and ``host_vars/`` beside the file are read, and
each host's variables are merged in Ansible's order, lowest first:

    inline vars of all < inline vars of its other groups < group_vars/all
    < group_vars/<its other groups> < inline host vars < host_vars/<host>

Among groups a deeper one (longest path from ``all``) wins, then the higher
``ansible_group_priority``, then the later name in alphabetical order. A host
belongs to its groups' ancestors too. The connection variables are then read
into typed ``Host`` fields; a ``mockerops_*`` variable wins over its
``ansible_*`` twin.
"""

from __future__ import annotations

import ast
import ipaddress
import logging
import os
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mockerops import patterns
from mockerops.errors import InventoryError

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/var/lib/mockerops"

# Each variable's value with where it was set ("file:line").
Sourced = dict[str, tuple[Any, str]]

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_KINDS = {
    f"{_TAG}int": "a number",
    f"{_TAG}float": "a number",
    f"{_TAG}bool": "a boolean",
    f"{_TAG}null": "null",
    f"{_TAG}timestamp": "a date",
}
_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")
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
    path = Path(path)
    text = _read(path, "inventory file")
    draft = _Draft(path)
    if _looks_like_yaml(path, text):
        _parse_yaml(draft, text)
    else:
        _parse_ini(draft, text)
    return _build(draft)


def _read(path: Path, what: str) -> str:
    """Return the text of PATH, or raise an InventoryError saying why not."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            f"{what} {path} not found", hint="check the path given with -i"
        ) from None
    except IsADirectoryError:
        raise InventoryError(
            f"{what} {path} is a directory", hint="give one YAML or INI file"
        ) from None
    except UnicodeDecodeError as exc:
        raise InventoryError(
            f"{path}: byte {exc.start} is not UTF-8", hint="save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise InventoryError(
            f"cannot read {what} {path}: {exc.strerror}",
            hint="check the file's permissions",
        ) from None


def _looks_like_yaml(path: Path, text: str) -> bool:
    """Return whether to parse as YAML: by extension, else by the first line."""
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return True
    if suffix == ".ini":
        return False
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            return False
        return line.startswith(("---", "{")) or line.endswith(":") or ": " in line
    return False


class _Draft:
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


# YAML: walk the node tree so that every name and variable keeps its line.


def _where(path: Path, node: yaml.Node) -> str:
    """Return ``file:line`` of NODE."""
    return f"{path}:{node.start_mark.line + 1}"


def _yaml_error(path: Path, exc: yaml.YAMLError) -> InventoryError:
    """Return an InventoryError for a YAML syntax or construction error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    return InventoryError(
        f"{where}: not valid YAML: {problem}", hint="fix the YAML at that line"
    )


def _compose(path: Path, text: str) -> yaml.Node | None:
    """Return the YAML node tree of TEXT (None for an empty document)."""
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None


def _construct(path: Path, node: yaml.Node) -> Any:
    """Return the Python value of a YAML node."""
    loader = _LOADER("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    finally:
        loader.dispose()


def _pairs(
    path: Path, node: yaml.Node, what: str, hint: str
) -> list[tuple[yaml.Node, yaml.Node]]:
    """Return the (key, value) nodes of a mapping; null counts as empty."""
    if isinstance(node, yaml.ScalarNode) and node.tag == f"{_TAG}null":
        return []
    if not isinstance(node, yaml.MappingNode):
        kind = "a list" if isinstance(node, yaml.SequenceNode) else repr(node.value)
        raise InventoryError(
            f"{_where(path, node)}: {what} must be a mapping, not {kind}", hint=hint
        )
    loader = _LOADER("")
    try:
        loader.flatten_mapping(node)  # resolve '<<' merge keys in place
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    finally:
        loader.dispose()
    return node.value


def _name(path: Path, node: yaml.Node, what: str) -> str:
    """Return a key that must be a string, or raise naming file and line."""
    where = _where(path, node)
    if not isinstance(node, yaml.ScalarNode):
        raise InventoryError(
            f"{where}: a {what} name must be a plain string",
            hint="write the name as a simple key",
        )
    if node.tag != f"{_TAG}str":
        kind = _KINDS.get(node.tag, f"type {node.tag.rsplit(':', 1)[-1]}")
        raise InventoryError(
            f"{where}: {what} name {node.value!r} is read by YAML as {kind}",
            hint=f"quote it: '{node.value}':",
        )
    if not node.value:
        raise InventoryError(f"{where}: empty {what} name", hint="give it a name")
    return node.value


def _parse_yaml(draft: _Draft, text: str) -> None:
    """Parse a YAML inventory into DRAFT."""
    path = draft.path
    root = _compose(path, text)
    if root is None:
        raise InventoryError(
            f"{path}: the inventory is empty", hint="add an 'all:' group with hosts"
        )
    hint = "the top level maps group names (usually just 'all') to groups"
    for key, value in _pairs(path, root, "the top of an inventory", hint):
        _yaml_group(draft, _name(path, key, "group"), value, None)


def _yaml_group(draft: _Draft, name: str, node: yaml.Node, parent: str | None) -> None:
    """Parse one group mapping (hosts, children, vars) into DRAFT."""
    path = draft.path
    draft.group(name)
    if parent is not None:
        draft.add_child(parent, name, _where(path, node))

    hint = "a group maps hosts, children and vars; an empty group is 'name:'"
    for key, value in _pairs(path, node, f"group {name!r}", hint):
        section = key.value if isinstance(key, yaml.ScalarNode) else None
        if section == "hosts":
            _yaml_hosts(draft, name, value)
        elif section == "children":
            hint = "list child groups as keys, e.g. 'children: {canary: }'"
            for child, body in _pairs(path, value, f"children of {name!r}", hint):
                _yaml_group(draft, _name(path, child, "group"), body, name)
        elif section == "vars":
            hint = "write variables as 'name: value' lines under vars"
            for var, body in _pairs(path, value, f"vars of {name!r}", hint):
                where = _where(path, var)
                value_ = _construct(path, body)
                draft.set_group_var(name, _name(path, var, "variable"), value_, where)
        else:
            raise InventoryError(
                f"{_where(path, key)}: group {name!r} has an unknown key {section!r}",
                hint="a group takes only hosts, children and vars; "
                "put variables under vars",
            )


def _yaml_hosts(draft: _Draft, group: str, node: yaml.Node) -> None:
    """Parse a group's hosts mapping (host: {vars}) into DRAFT."""
    path = draft.path
    hint = "write each host as a key ending in ':', e.g. 'web1:'"
    for key, body in _pairs(path, node, f"hosts of group {group!r}", hint):
        pattern = _name(path, key, "host")
        names = draft.add_hosts(group, pattern, _where(path, key))
        hint = f"give host variables as a mapping: '{pattern}: {{ansible_host: ...}}'"
        for var, value in _pairs(path, body, f"host {pattern!r}", hint):
            key_name, where = _name(path, var, "variable"), _where(path, var)
            for host in names:
                # Construct per host so hosts never share a mutable value.
                draft.hosts[host][key_name] = (_construct(path, value), where)


# INI: Ansible's format, including its quirks (values go through literal_eval).


def _ini_value(text: str) -> Any:
    """Return an INI value as Ansible reads it: a Python literal, else the text."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def _parse_ini(draft: _Draft, text: str) -> None:
    """Parse an INI inventory into DRAFT."""
    group, kind = "ungrouped", "hosts"
    defined = {"all", "ungrouped"}
    references: list[tuple[str, str, str]] = []  # (group, where, how named)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{draft.path}:{number}"
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            group, kind = _ini_section(line, where)
            if kind == "vars":
                references.append((group, where, f"[{group}:vars] names group"))
            else:
                defined.add(group)
                draft.group(group)
        elif kind == "hosts":
            _ini_host(draft, group, line, where)
        elif kind == "vars":
            key, sep, value = (part.strip() for part in line.partition("="))
            if not sep or not key:
                raise InventoryError(
                    f"{where}: expected key=value in [{group}:vars], got {line!r}",
                    hint="write one variable per line as name=value",
                )
            draft.set_group_var(group, key, _ini_value(value), where)
        else:
            child = _ini_child(line, group, where)
            references.append((child, where, f"[{group}:children] lists group"))
            draft.add_child(group, child, where)

    for name, where, how in references:
        if name not in defined:
            raise InventoryError(
                f"{where}: {how} {name!r}, which is not defined",
                hint=f"add a [{name}] section (it may be empty) or fix the name",
            )


def _ini_section(line: str, where: str) -> tuple[str, str]:
    """Return (group, kind) of an INI section header."""
    match = _SECTION.match(line)
    if not match:
        raise InventoryError(
            f"{where}: bad section header {line!r}",
            hint="write [group], [group:vars] or [group:children]",
        )
    kind = match.group(2) or "hosts"
    if kind not in ("hosts", "vars", "children"):
        raise InventoryError(
            f"{where}: section {line!r} has unknown type {kind!r}",
            hint="the types are :vars and :children",
        )
    return match.group(1), kind


def _ini_host(draft: _Draft, group: str, line: str, where: str) -> None:
    """Parse one INI host line: a host pattern then key=value variables."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise InventoryError(
            f"{where}: cannot split host line: {exc}", hint="close the quote"
        ) from None
    if not tokens:
        return
    names = draft.add_hosts(group, tokens[0], where)
    for token in tokens[1:]:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise InventoryError(
                f"{where}: expected key=value after host {tokens[0]!r}, got {token!r}",
                hint="write host variables as name=value; quote values with spaces",
            )
        for host in names:
            draft.hosts[host][key] = (_ini_value(value), where)


def _ini_child(line: str, group: str, where: str) -> str:
    """Return the group named on a line of a [group:children] section."""
    words = re.split(r"\s+[#;]", line, maxsplit=1)[0].split()
    if len(words) != 1:
        raise InventoryError(
            f"{where}: expected one group name in [{group}:children], got {line!r}",
            hint="list one child group per line",
        )
    return words[0]


# group_vars/ and host_vars/: the files Ansible's host_group_vars plugin reads.


def _vars_files(folder: Path, name: str, present: set[str]) -> list[Path]:
    """Return the files holding NAME's variables; the first form found counts."""
    for candidate in (name, *(f"{name}{ext}" for ext in _EXTS)):
        if candidate not in present:
            continue
        if (folder / candidate).is_dir():
            return _dir_files(folder / candidate)
        if (folder / candidate).is_file():
            return [folder / candidate]
    return []


_EXTS = (".yml", ".yaml", ".json")


def _dir_files(folder: Path) -> list[Path]:
    """Return variable files under FOLDER in name order, skipping hidden ones."""
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name.endswith("~"):
            continue
        if entry.is_dir() and not entry.suffix:
            found.extend(_dir_files(entry))
        elif entry.is_file() and (not entry.suffix or entry.suffix in _EXTS):
            found.append(entry)
    return found


def _listing(folder: Path) -> set[str]:
    """Return the names in FOLDER, or none if it is missing."""
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise InventoryError(
            f"cannot list {folder}: {exc.strerror}", hint="check its permissions"
        ) from None


def _read_vars(folder: Path, name: str, present: set[str]) -> Sourced:
    """Return the variables in group_vars/NAME or host_vars/NAME; later files win."""
    merged: Sourced = {}
    for path in _vars_files(folder, name, present):
        text = _read(path, "variables file")
        if text.startswith("$ANSIBLE_VAULT"):
            raise InventoryError(
                f"{path}: vault-encrypted files are not supported",
                hint="decrypt it with ansible-vault decrypt, or move the secret out",
            )
        root = _compose(path, text)
        if root is None:
            continue
        hint = "a variables file maps names to values"
        for key, value in _pairs(path, root, "a variables file", hint):
            name_ = _name(path, key, "variable")
            merged[name_] = (_construct(path, value), _where(path, key))
    return merged


def _warn_strays(folder: Path, known: dict[str, Any], what: str) -> None:
    """Log variable files whose names match no group or host: likely typos."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        stem = entry.name.removesuffix(entry.suffix) if entry.suffix in _EXTS else None
        if entry.name.startswith(".") or entry.name in known or stem in known:
            continue
        log.warning("%s: no %s of that name in the inventory; ignored", entry, what)


# Completing the draft: tree, depths, membership, merged variables.


def _build(draft: _Draft) -> Inventory:
    """Complete DRAFT and return the Inventory it describes."""
    groups = draft.groups
    member_of = _host_groups(draft, _complete_tree(draft))

    base = draft.path.absolute().parent
    group_dir, host_dir = base / "group_vars", base / "host_vars"
    in_group_dir, in_host_dir = _listing(group_dir), _listing(host_dir)
    for name, group in groups.items():
        group.from_files = _read_vars(group_dir, name, in_group_dir)
        group.vars = _values({**group.inline, **group.from_files})
    _warn_strays(group_dir, groups, "group")
    _warn_strays(host_dir, draft.hosts, "host")

    hosts: dict[str, Host] = {}
    for name, inline in draft.hosts.items():
        ordered = member_of[name]
        files = _read_vars(host_dir, name, in_host_dir)
        merged = _merge(groups, ordered, inline, files)
        hosts[name] = _make_host(name, merged, ["all", *ordered], base)
    return Inventory(draft.path, hosts, groups)


def _complete_tree(draft: _Draft) -> dict[str, set[str]]:
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
    draft: _Draft, ancestors: dict[str, set[str]]
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


def _check_loops(draft: _Draft) -> None:
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
