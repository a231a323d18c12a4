"""Expand host ranges in inventory names and select hosts by Ansible host patterns.

Inventory side: ``web[01:10]`` and ``db-[a:c]`` expand to host names, and
``name:port`` splits off a port. Selection side: a pattern is terms joined by
``:`` (or by ``,``: a pattern with a comma is split on commas only, as Ansible
does, so a ``~regex`` term may hold a colon). Plain terms are united, then
``&term`` terms intersect, then ``!term`` terms exclude, whatever order they are
written in. A term is a host or group name, an fnmatch glob (``web*``) or a
regular expression after ``~`` (matched from the start of the name), optionally
followed by a subscript (``web[0]``, ``web[-1]``, ``web[1:3]``) that picks hosts
by position in inventory order. A term that names nothing is an error, and so is
a pattern that leaves no host: a typo must never deploy to the wrong fleet.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import string
from typing import TYPE_CHECKING, Callable

from mockerops.errors import InventoryError

if TYPE_CHECKING:
    from mockerops.inventory import Host, Inventory

# A range such as [01:10] expands to this many names at most; a typo like
# [1:100000000] would otherwise eat the controller's memory before failing.
MAX_RANGE_HOSTS = 100_000

_RANGE = re.compile(r"\[([^\[\]]*)\]")
_DIGITS = re.compile(r"[0-9]+")
_TERM = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+):([0-9]*))\]$")
_GLOB_CHARS = ".?*["


def is_ipv6(text: str) -> bool:
    """Return whether TEXT is a bare IPv6 address."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def split_port(pattern: str, where: str) -> tuple[str, int | None]:
    """Split ``name:port`` or ``[ipv6]:port`` into the name and the port."""
    bracketed = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)", pattern)
    if bracketed and is_ipv6(bracketed.group(1)):
        return bracketed.group(1), _port(bracketed.group(2), pattern, where)
    if is_ipv6(pattern):
        return pattern, None

    # Only a colon outside brackets separates a port: web[1:3] is a range.
    match = re.fullmatch(r"(.+):([0-9]+)", pattern)
    if match and ":" not in _RANGE.sub("", match.group(1)):
        return match.group(1), _port(match.group(2), pattern, where)
    return pattern, None


def _port(text: str, pattern: str, where: str) -> int:
    """Return TEXT as a port number or raise naming WHERE."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise InventoryError(
            f"{where}: port {port} in host {pattern!r} is out of range",
            hint="use a port from 1 to 65535",
        )
    return port


def expand_host_range(name: str, where: str) -> list[str]:
    """Return the host names NAME stands for, expanding each [start:end:step]."""
    match = _RANGE.search(name)
    if not match:
        if "[" in name or "]" in name:
            raise InventoryError(
                f"{where}: host {name!r} has an unbalanced bracket",
                hint="write a range as web[01:10]",
            )
        return [name]

    head, tail = name[: match.start()], name[match.end() :]
    names: list[str] = []
    for value in _range_values(match.group(1), name, where):
        names.extend(expand_host_range(head + value + tail, where))
        if len(names) > MAX_RANGE_HOSTS:
            raise InventoryError(
                f"{where}: host range {name!r} expands to more than "
                f"{MAX_RANGE_HOSTS} hosts",
                hint="check the range's end; split a real fleet of that size",
            )
    return names


def _range_values(spec: str, name: str, where: str) -> list[str]:
    """Return the values of one range body such as ``01:10`` or ``a:c``."""
    bounds = spec.split(":")
    if len(bounds) not in (2, 3):
        raise InventoryError(
            f"{where}: host range [{spec}] in {name!r} is not start:end",
            hint="write [start:end] or [start:end:step], e.g. web[01:10]",
        )
    start, end = bounds[0] or "0", bounds[1]
    step = bounds[2] if len(bounds) == 3 else "1"
    if not end:
        raise InventoryError(
            f"{where}: host range [{spec}] in {name!r} has no end",
            hint="give the last value, e.g. web[01:10]",
        )
    if not _DIGITS.fullmatch(step) or int(step) < 1:
        raise InventoryError(
            f"{where}: host range [{spec}] in {name!r} has step {step!r}",
            hint="a step is a whole number of 1 or more",
        )

    if _DIGITS.fullmatch(start) and _DIGITS.fullmatch(end):
        return _number_range(start, end, int(step), spec, name, where)
    letters = string.ascii_letters
    if len(start) == len(end) == 1 and start in letters and end in letters:
        first, last = letters.index(start), letters.index(end)
        _check_order(first, last, spec, name, where)
        return list(letters[first : last + 1 : int(step)])
    raise InventoryError(
        f"{where}: host range [{spec}] in {name!r} mixes or misuses its ends",
        hint="use two numbers ([1:9], [01:09]) or two letters ([a:f])",
    )


def _number_range(
    start: str, end: str, step: int, spec: str, name: str, where: str
) -> list[str]:
    """Return a numeric range; a leading zero on START pads to its width."""
    _check_order(int(start), int(end), spec, name, where)
    width = len(start) if start.startswith("0") and len(start) > 1 else 0
    if width and len(end) != width:
        both = max(len(start), len(end))
        raise InventoryError(
            f"{where}: padded host range [{spec}] in {name!r} has ends of "
            "unequal width",
            hint=f"pad both ends alike: [{start.zfill(both)}:{end.zfill(both)}]",
        )
    return [str(i).zfill(width) for i in range(int(start), int(end) + 1, step)]


def _check_order(first: int, last: int, spec: str, name: str, where: str) -> None:
    """Raise if a range runs backwards."""
    if first > last:
        low, high = spec.split(":")[:2]
        raise InventoryError(
            f"{where}: host range [{spec}] in {name!r} runs backwards",
            hint=f"write the smaller end first: [{high}:{low}]",
        )


def split_pattern(pattern: str) -> list[str]:
    """Return the terms of PATTERN, split on commas if it has any, else colons."""
    if "," in pattern:
        return [term.strip() for term in pattern.split(",") if term.strip()]

    terms: list[str] = []
    for piece in pattern.split():
        if is_ipv6(piece.lstrip("&!")):
            terms.append(piece)
        else:
            found = _TERM.findall(piece)
            # findall skips what no term can hold (a lone "[" or "]"), which
            # would quietly widen a mistyped pattern: refuse it instead.
            if _TERM.sub("", piece).strip(":"):
                raise InventoryError(
                    f"pattern {pattern!r}: unbalanced '[' or ']' in {piece!r}",
                    hint="close the subscript (web[0], web[1:3]) or, in a ~regex, "
                    "escape the bracket as \\[",
                )
            terms.extend(found)
    return terms


def select_hosts(
    inventory: Inventory, pattern: str, limit: str | None = None
) -> list[Host]:
    """Return the hosts PATTERN selects, narrowed by LIMIT, in inventory order."""
    names = _evaluate(inventory, pattern, "pattern")
    if limit is not None:
        allowed = set(_evaluate(inventory, limit, "limit"))
        names = [name for name in names if name in allowed]
        if not names:
            raise InventoryError(
                f"pattern {pattern!r} with limit {limit!r} matches no host in "
                f"{inventory.path}",
                hint="the limit shares no host with the pattern; widen either",
            )
    return [inventory.hosts[name] for name in names]


def _evaluate(inventory: Inventory, pattern: str, what: str) -> list[str]:
    """Return the host names PATTERN selects; raise if it selects none."""
    terms = split_pattern(pattern)
    if not terms:
        raise InventoryError(
            f"{what} {pattern!r} is empty",
            hint="give a host or group name, a glob, or 'all'",
        )
    regular = [t for t in terms if t[0] not in "&!"] or ["all"]
    intersect = [t[1:] for t in terms if t[0] == "&"]
    exclude = [t[1:] for t in terms if t[0] == "!"]

    unknown: list[str] = []
    chosen: set[str] = set()
    for term in regular:
        chosen.update(_match_term(inventory, term, pattern, unknown))
    for term in intersect:
        chosen.intersection_update(_match_term(inventory, term, pattern, unknown))
    for term in exclude:
        chosen.difference_update(_match_term(inventory, term, pattern, unknown))

    order = {name: i for i, name in enumerate(inventory.hosts)}
    names = sorted(chosen, key=order.__getitem__)
    if not names or unknown:
        _raise_no_match(inventory, pattern, what, names, unknown)
    return names


def _raise_no_match(
    inventory: Inventory,
    pattern: str,
    what: str,
    names: list[str],
    unknown: list[str],
) -> None:
    """Raise the error for a pattern that selects nothing or names nothing."""
    known = sorted(inventory.groups)
    shown = ", ".join(known[:30]) + (", ..." if len(known) > 30 else "")
    where = f"in {inventory.path}; known groups: {shown}"
    if unknown:
        listed = ", ".join(repr(term) for term in unknown)
        hint = f"{listed} names no host or group; check the spelling"
        if "," in pattern and any(":" in term for term in unknown):
            hint += "; a pattern with commas is split on commas only"
    else:
        hint = "its & and ! terms leave no host; check them"
    if names:
        raise InventoryError(
            f"{what} {pattern!r}: {unknown[0]!r} names no host or group {where}",
            hint=hint,
        )
    raise InventoryError(f"{what} {pattern!r} matches no host {where}", hint=hint)


def _match_term(
    inventory: Inventory, term: str, pattern: str, unknown: list[str]
) -> list[str]:
    """Return the host names one term matches; note it in UNKNOWN if none."""
    if term in inventory.hosts:
        return [term]
    if not term:
        raise InventoryError(
            f"pattern {pattern!r} has a bare & or !",
            hint="put a host or group name right after & or !",
        )

    base, subscript = _split_subscript(term)
    matches = _matcher(base, pattern)
    groups = [name for name in inventory.groups if matches(name)]
    found: set[str] = set()
    for group in groups:
        found.update(inventory.group_hosts(group))

    # As in Ansible, a plain name that is a group is not also tried as a host.
    if not groups or base[0] == "~" or any(c in base for c in _GLOB_CHARS):
        found.update(name for name in inventory.hosts if matches(name))
    if not groups and not found:
        unknown.append(term)
        return []

    ordered = [name for name in inventory.hosts if name in found]
    if subscript is None:
        return ordered
    return _pick(ordered, subscript, term, pattern)


def _split_subscript(term: str) -> tuple[str, tuple[int, int | None] | None]:
    """Split ``web[1:3]`` into the base and (start, end or None); not a ~regex."""
    match = None if term.startswith("~") else _SUBSCRIPT.match(term)
    if not match:
        return term, None
    base, index, start, end = match.groups()
    if index is not None:
        return base, (int(index), int(index))
    return base, (int(start), int(end) if end else None)


def _pick(
    names: list[str], subscript: tuple[int, int | None], term: str, pattern: str
) -> list[str]:
    """Return the hosts a subscript picks; the end of a slice is inclusive."""
    start, end = subscript
    if start == end:
        if not -len(names) <= start < len(names):
            raise InventoryError(
                f"pattern {pattern!r}: {term!r} asks for host {start} of "
                f"{len(names)} (counting from 0)",
                hint="pick an index below the number of hosts matched",
            )
        return [names[start]]
    return names[start:] if end is None else names[start : end + 1]


def _matcher(base: str, pattern: str) -> Callable[[str], object]:
    """Return a function telling whether a name matches a glob or ~regex."""
    try:
        if base.startswith("~"):
            return re.compile(base[1:]).match
        return re.compile(fnmatch.translate(base)).match
    except re.error as exc:
        raise InventoryError(
            f"pattern {pattern!r}: {base!r} is not a valid expression: {exc}",
            hint="escape regex characters or quote the pattern in the shell",
        ) from None
