"""Read inventory files: YAML and INI inventories, group_vars/ and host_vars/.

The parsers fill a ``Draft`` (see ``mockerops.inventory``) with groups, hosts and
inline variables, each variable paired with where it was set (file:line); the
vars-file readers return such sourced variables for one group or host. Every
error names the file and line and says what to write instead. Nothing here knows
about precedence: ``mockerops.inventory`` completes the draft and merges.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import shlex
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mockerops.errors import InventoryError

if TYPE_CHECKING:
    from mockerops.inventory import Draft

log = logging.getLogger(__name__)

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
_EXTS = (".yml", ".yaml", ".json")


def parse_inventory(draft: Draft) -> None:
    """Parse the inventory file at the draft's path, YAML or INI, into DRAFT."""
    text = _read(draft.path, "inventory file")
    if _looks_like_yaml(draft.path, text):
        _parse_yaml(draft, text)
    else:
        _parse_ini(draft, text)


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


def _parse_yaml(draft: Draft, text: str) -> None:
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


def _yaml_group(draft: Draft, name: str, node: yaml.Node, parent: str | None) -> None:
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


def _yaml_hosts(draft: Draft, group: str, node: yaml.Node) -> None:
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


def _parse_ini(draft: Draft, text: str) -> None:
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


def _ini_host(draft: Draft, group: str, line: str, where: str) -> None:
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


def list_names(folder: Path) -> set[str]:
    """Return the names in FOLDER, or none if it is missing."""
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise InventoryError(
            f"cannot list {folder}: {exc.strerror}", hint="check its permissions"
        ) from None


def read_vars(folder: Path, name: str, present: set[str]) -> Sourced:
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


def warn_strays(folder: Path, known: dict[str, Any], what: str) -> None:
    """Log variable files whose names match no group or host: likely typos."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        stem = entry.name.removesuffix(entry.suffix) if entry.suffix in _EXTS else None
        if entry.name.startswith(".") or entry.name in known or stem in known:
            continue
        log.warning("%s: no %s of that name in the inventory; ignored", entry, what)
