"""Host patterns: union, intersection, exclusion, globs, regexes, subscripts, limits.

The inventory: web=[web1, web2], db=[db1, web2], prod=[web1, db1], an empty group,
and a host "lone" in no group. Inventory order: lone, web1, web2, db1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mockerops.errors import InventoryError
from mockerops.inventory import load_inventory
from mockerops.patterns import split_pattern

INVENTORY = Path(__file__).parent / "data" / "inventory" / "patterns" / "hosts.yaml"


@pytest.fixture(scope="module")
def inv():
    """Return the patterns inventory."""
    return load_inventory(INVENTORY)


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("web:&prod:!db", ["web1"]),
        ("!db:web", ["web1"]),
        ("!db:&prod:web", ["web1"]),
        ("web:db", ["web1", "web2", "db1"]),
        ("db:web", ["web1", "web2", "db1"]),  # inventory order, not pattern order
        ("web,db", ["web1", "web2", "db1"]),
        ("web, prod", ["web1", "web2", "db1"]),
        ("web:&db", ["web2"]),
        ("&prod", ["web1", "db1"]),  # no plain term: start from all
        ("!web", ["lone", "db1"]),
        ("all", ["lone", "web1", "web2", "db1"]),
        ("*", ["lone", "web1", "web2", "db1"]),
        ("ungrouped", ["lone"]),
        ("web2", ["web2"]),
        ("web2:db1", ["web2", "db1"]),
        ("web*", ["web1", "web2"]),
        ("w?b1", ["web1"]),
        ("*1", ["web1", "db1"]),
        ("p*", ["web1", "db1"]),  # a glob on a group name
        ("d*:!web*", ["db1"]),
        ("~web[12]", ["web1", "web2"]),
        ("~(web|db)1", ["web1", "db1"]),
        ("~web[12]:!web2", ["web1"]),  # no subscript on a regex
        ("~.*eb", ["web1", "web2"]),  # a regex matches from the start of a name
        ("~pro", ["web1", "db1"]),  # a regex on a group name
        ("~(web|db1)", ["web1", "web2", "db1"]),  # group web and host db1
        ("[wl]*", ["lone", "web1", "web2"]),  # group web and hosts lone, web*
        ("~(?:web|db)1,lone", ["lone", "web1", "db1"]),  # commas keep colons in a regex
        ("web[0]", ["web1"]),
        ("web[-1]", ["web2"]),
        ("all[1:2]", ["web1", "web2"]),
        ("all[2:]", ["web2", "db1"]),
        ("empty:web1", ["web1"]),  # an empty group is known, just empty
    ],
)
def test_patterns_select_hosts(inv, pattern, expected):
    assert [host.name for host in inv.select(pattern)] == expected


@pytest.mark.parametrize(
    "pattern, shown",
    [
        ("nosuch", "pattern 'nosuch' matches no host in "),
        ("web:!nosuch", "pattern 'web:!nosuch': 'nosuch' names no host or group in"),
        ("web:&nosuch", "pattern 'web:&nosuch' matches no host"),
        ("web:!web", "pattern 'web:!web' matches no host"),
        ("empty", "pattern 'empty' matches no host"),
        ("~web(", "'~web(' is not a valid expression"),
        ("web:!", "has a bare & or !"),
        ("", "pattern '' is empty"),
        (" , ", "pattern ' , ' is empty"),
        ("web[5]", "asks for host 5 of 2"),
        ("web:&prod,db", "'web:&prod' names no host or group"),
        ("~eb", "pattern '~eb' matches no host"),
        ("~web[", "unbalanced '[' or ']' in '~web['"),
        ("web[1:", "unbalanced '[' or ']' in 'web[1:'"),
        ("web]:db", "unbalanced '[' or ']' in 'web]:db'"),
    ],
)
def test_bad_patterns(inv, pattern, shown):
    with pytest.raises(InventoryError) as caught:
        inv.select(pattern)

    assert shown in str(caught.value)


@pytest.mark.parametrize(
    "pattern, hint",
    [
        ("nosuch", "'nosuch' names no host or group"),
        ("web:!nosuch", "'nosuch' names no host or group"),
        ("web:&prod,db", "split on commas only"),
        ("web:!web", "& and ! terms leave no host"),
    ],
)
def test_no_match_hints(inv, pattern, hint):
    with pytest.raises(InventoryError) as caught:
        inv.select(pattern)

    assert hint in caught.value.hint


def test_no_match_lists_file_and_known_groups(inv):
    with pytest.raises(InventoryError) as caught:
        inv.select("nosuch")

    assert str(caught.value).startswith(
        f"pattern 'nosuch' matches no host in {INVENTORY}; "
        "known groups: all, db, empty, prod, ungrouped, web"
    )


@pytest.mark.parametrize(
    "pattern, limit, expected",
    [
        ("all", "web", ["web1", "web2"]),
        ("web:db", "prod", ["web1", "db1"]),
        ("all", "!db", ["lone", "web1"]),
        ("web", "web2,db1", ["web2"]),
        ("all", "*1", ["web1", "db1"]),
        ("web", None, ["web1", "web2"]),
    ],
)
def test_limit_narrows_the_selection(inv, pattern, limit, expected):
    assert [host.name for host in inv.select(pattern, limit=limit)] == expected


@pytest.mark.parametrize(
    "pattern, limit, shown",
    [
        ("web", "lone", "pattern 'web' with limit 'lone' matches no host"),
        ("web", "nosuch", "limit 'nosuch' matches no host"),
        ("web", "", "limit '' is empty"),
    ],
)
def test_bad_limits(inv, pattern, limit, shown):
    with pytest.raises(InventoryError, match=shown.replace("(", r"\(")):
        inv.select(pattern, limit=limit)


@pytest.mark.parametrize(
    "pattern, terms",
    [
        ("web:&prod:!db", ["web", "&prod", "!db"]),
        ("web,db", ["web", "db"]),
        ("web , db,", ["web", "db"]),
        ("~a:b,c", ["~a:b", "c"]),
        ("web[1:2]:db", ["web[1:2]", "db"]),
        ("2001:db8::1", ["2001:db8::1"]),
        ("!2001:db8::1", ["!2001:db8::1"]),
        ("web db", ["web", "db"]),
    ],
)
def test_split_pattern(pattern, terms):
    assert split_pattern(pattern) == terms


def test_selected_hosts_are_the_inventory_objects(inv):
    selected = inv.select("web")

    assert selected[0] is inv.hosts["web1"]
    assert inv.group_hosts("web") == ["web1", "web2"]
