"""Inventory loading: formats, ranges, precedence, connection fields, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mockerops.errors import InventoryError
from mockerops.inventory import DEFAULT_ROOT, load_inventory
from mockerops.patterns import expand_host_range

DATA = Path(__file__).parent / "data" / "inventory"


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write an inventory file into tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


# Precedence: depth, then ansible_group_priority, then group name; dirs over inline.


@pytest.mark.parametrize("filename", ["hosts.yaml", "hosts.ini"])
@pytest.mark.parametrize(
    "host, tier, groups",
    [
        ("web1", "zone_b", ["all", "app", "zone_b"]),
        ("web2", "canary", ["all", "app", "zone_b", "canary"]),
    ],
)
def test_deeper_group_then_later_name_wins(filename, host, tier, groups):
    inv = load_inventory(DATA / "precedence" / filename)

    assert inv.hosts[host].vars["tier"] == tier
    assert inv.hosts[host].groups == groups


@pytest.mark.parametrize("filename", ["hosts.yaml", "hosts.ini"])
def test_yaml_and_ini_describe_the_same_inventory(filename):
    inv = load_inventory(DATA / "precedence" / filename)

    assert list(inv.hosts) == ["web1", "web2"]
    assert inv.groups["app"].children == ["canary"]
    assert inv.groups["canary"].parents == ["app"]
    assert inv.groups["canary"].depth == 2
    assert inv.groups["zone_b"].hosts == ["web1", "web2"]
    assert inv.groups["all"].vars == {"tier": "all"}


@pytest.mark.parametrize(
    "host, tier, size",
    [
        ("node1", "alpha", "alpha"),  # priority 10 beats beta's default 1
        ("node2", "gamma", "alpha"),  # alpha and gamma tie at 10: later name wins
        ("node3", "beta", "beta"),
    ],
)
def test_group_priority(host, tier, size):
    inv = load_inventory(DATA / "priority" / "hosts.yaml")

    assert inv.hosts[host].vars["tier"] == tier
    assert inv.hosts[host].vars["size"] == size
    assert "ansible_group_priority" not in inv.hosts[host].vars
    assert inv.groups["alpha"].priority == 10


@pytest.mark.parametrize(
    "host, var, value",
    [
        ("web1", "color", "inline-host"),  # inline host vars beat group vars
        ("web1", "size", "files-host"),  # host_vars/web1 beats inline host vars
        ("web1", "shape", "files-web"),  # group_vars/web.yaml beats [web:vars]
        ("web1", "flavour", "files-all"),  # group_vars/all beats [web:vars] too
        ("web1", "region", "files-all"),
        ("web2", "color", "inline-web"),
        ("web2", "size", None),
        ("db1", "engine", "files-host"),  # host_vars/db1.yml
        ("db1", "port_note", "over"),  # later file in group_vars/db/ wins
        ("db1", "shape", None),
    ],
)
def test_group_vars_and_host_vars_dirs(host, var, value):
    inv = load_inventory(DATA / "vardirs" / "hosts.ini")

    assert inv.hosts[host].vars.get(var) == value


def test_hidden_files_in_vars_dirs_are_skipped():
    inv = load_inventory(DATA / "vardirs" / "hosts.ini")

    assert inv.groups["db"].vars == {"engine": "base", "port_note": "over"}


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"web": "x: bare", "web.yml": "x: yml"}, "bare"),  # the first form found
        ({"web.yml": "x: yml", "web.yaml": "x: yaml"}, "yml"),
        ({"web.yaml": "x: yaml", "web.json": '{"x": "json"}'}, "yaml"),
        ({"web.json": '{"x": "json"}'}, "json"),
        ({"web/a.yml": "x: a", "web/b/c": "x: c"}, "c"),  # dirs recurse, name order
        ({"web/a.yml": "x: a", "web/b.txt": "x: txt"}, "a"),  # other extensions skipped
        ({"web/a.yml": "x: a", "web/b.yml~": "x: backup"}, "a"),
        ({"web.yml": ""}, "inline"),  # an empty file sets nothing
    ],
)
def test_group_vars_file_forms(tmp_path, files, expected):
    path = write(tmp_path, "hosts.ini", "[web]\nweb1\n[web:vars]\nx=inline\n")
    for name, text in files.items():
        file = tmp_path / "group_vars" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)

    assert load_inventory(path).hosts["web1"].vars["x"] == expected


@pytest.mark.parametrize(
    "priorities, expected",
    [
        ({}, "b"),  # equal priority: the later name wins
        ({"a": 5}, "a"),
        ({"a": 5, "b": 5}, "b"),
        ({"b": -1}, "a"),
    ],
)
def test_group_priority_in_ini(tmp_path, priorities, expected):
    lines = ["[a]", "h", "[b]", "h", "[a:vars]", "x=a", "[b:vars]", "x=b"]
    for group, priority in priorities.items():
        lines += [f"[{group}:vars]", f"ansible_group_priority={priority}"]
    path = write(tmp_path, "hosts.ini", "\n".join(lines) + "\n")

    assert load_inventory(path).hosts["h"].vars["x"] == expected


def test_vars_file_for_unknown_group_is_reported(tmp_path, caplog):
    path = write(tmp_path, "hosts.ini", "[web]\nweb1\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "wbe.yml").write_text("x: 1\n")

    load_inventory(path)

    assert "wbe.yml" in caplog.text


# Host names, ranges and ungrouped hosts.


@pytest.mark.parametrize(
    "name, expected",
    [
        ("web1", ["web1"]),
        ("web[01:03]", ["web01", "web02", "web03"]),
        ("web[1:3]", ["web1", "web2", "web3"]),
        ("web[8:10]", ["web8", "web9", "web10"]),
        ("web[09:11]", ["web09", "web10", "web11"]),
        ("web[:2]", ["web0", "web1", "web2"]),
        ("db-[a:c]", ["db-a", "db-b", "db-c"]),
        ("n[1:9:4]", ["n1", "n5", "n9"]),
        ("n[a:e:2]", ["na", "nc", "ne"]),
        ("r[1:2]c[a:b]", ["r1ca", "r1cb", "r2ca", "r2cb"]),
        ("[1:2].example.com", ["1.example.com", "2.example.com"]),
        ("w[7:7]", ["w7"]),
    ],
)
def test_host_ranges(name, expected):
    assert expand_host_range(name, "hosts:1") == expected


@pytest.mark.parametrize(
    "name, message",
    [
        ("web[01:100]", "unequal width"),
        ("web[01:1000]", "unequal width"),
        ("web[001:10]", "unequal width"),
        ("web[5:1]", "runs backwards"),
        ("web[c:a]", "runs backwards"),
        ("web[1]", "is not start:end"),
        ("web[1:2:3:4]", "is not start:end"),
        ("web[1:]", "has no end"),
        ("web[1:9:0]", "has step '0'"),
        ("web[1:9:x]", "has step 'x'"),
        ("web[a:5]", "mixes or misuses"),
        ("web[1:2", "unbalanced bracket"),
        ("web[0:1000000]", "more than 100000 hosts"),
    ],
)
def test_bad_host_ranges(name, message):
    with pytest.raises(InventoryError, match=r"^hosts:7: .*" + message):
        expand_host_range(name, "hosts:7")


@pytest.mark.parametrize(
    "filename, text, line",
    [
        ("hosts.yaml", "all:\n  hosts:\n    ok1:\n    web[5:1]:\n", 4),
        ("hosts.ini", "[web]\nweb1\nweb[01:100]\n", 3),
    ],
)
def test_bad_range_in_a_file_names_file_and_line(tmp_path, filename, text, line):
    path = write(tmp_path, filename, text)

    with pytest.raises(InventoryError) as caught:
        load_inventory(path)

    assert str(caught.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    "filename, text",
    [
        ("hosts.yaml", "all:\n  hosts:\n    web[1:3]:\n      x: 1\n"),
        ("hosts.ini", "web[1:3] x=1\n"),
    ],
)
def test_ranges_expand_in_files(tmp_path, filename, text):
    inv = load_inventory(write(tmp_path, filename, text))

    assert list(inv.hosts) == ["web1", "web2", "web3"]
    assert all(host.vars == {"x": 1} for host in inv.hosts.values())
    assert inv.groups["ungrouped"].hosts == ["web1", "web2", "web3"]


@pytest.mark.parametrize(
    "filename, text, ungrouped",
    [
        (
            "hosts.yaml",
            "all:\n  hosts: {a: , b: }\n  children:\n    g: {hosts: {b: }}\n",
            ["a"],
        ),
        ("hosts.ini", "a\nb\n[g]\nb\n", ["a"]),
        ("hosts.ini", "[g]\nb\n[h]\n", []),
    ],
)
def test_ungrouped_holds_hosts_without_a_group(tmp_path, filename, text, ungrouped):
    inv = load_inventory(write(tmp_path, filename, text))

    assert inv.groups["ungrouped"].hosts == ungrouped
    assert all(("ungrouped" in inv.hosts[name].groups) for name in ungrouped)
    assert "ungrouped" not in inv.hosts["b"].groups


@pytest.mark.parametrize(
    "text, line, shown",
    [
        ("all:\n  hosts:\n    3750:\n", 3, "'3750' is read by YAML as a number"),
        ("all:\n  hosts:\n    web1:\n    010:\n", 4, "'010' is read by YAML as"),
        ("all:\n  children:\n    g:\n      hosts:\n        yes:\n", 5, "as a boolean"),
        ("all:\n  hosts:\n    1.5:\n", 3, "as a number"),
        ("all:\n  hosts:\n    ~:\n", 3, "as null"),
        ("all:\n  children:\n    2024:\n", 3, "group name '2024'"),
        ("all:\n  vars:\n    1: x\n", 3, "variable name '1'"),
    ],
)
def test_host_name_typed_by_yaml_is_an_error(tmp_path, text, line, shown):
    path = write(tmp_path, "hosts.yaml", text)

    with pytest.raises(InventoryError) as caught:
        load_inventory(path)

    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert shown in str(caught.value)
    assert "quote it" in caught.value.hint


def test_quoted_numeric_host_names_load(tmp_path):
    path = write(tmp_path, "hosts.yaml", "all:\n  hosts:\n    '3750':\n    \"010\":\n")

    assert list(load_inventory(path).hosts) == ["3750", "010"]


# Formats: detection, INI values, YAML anchors.


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("# fleet\nall:\n  hosts:\n    a:\n", ["a"]),
        ("---\nall:\n  hosts: {a: }\n", ["a"]),
        ("a ansible_host=10.0.0.1\nb\n", ["a", "b"]),
        ("; fleet\n[web]\na\n", ["a"]),
        ("a:2222\n", ["a"]),
        ('{"all": {"hosts": {"a": null}}}\n', ["a"]),  # JSON is YAML
    ],
)
def test_format_is_detected_without_extension(tmp_path, text, hosts):
    assert list(load_inventory(write(tmp_path, "hosts", text)).hosts) == hosts


@pytest.mark.parametrize(
    "line, var, value",
    [
        ("a n=5", "n", 5),
        ("a s=hello", "s", "hello"),
        ("a q='two words'", "q", "two words"),
        ("a b=True", "b", True),
        ("a y=yes", "y", "yes"),
        ("a l=[1,2]", "l", [1, 2]),
        ("a ip=10.0.0.1  # a comment", "ip", "10.0.0.1"),
        ("a e=x=y", "e", "x=y"),
    ],
)
def test_ini_host_variables_read_as_ansible_does(tmp_path, line, var, value):
    inv = load_inventory(write(tmp_path, "hosts.ini", line + "\n"))

    assert inv.hosts["a"].vars[var] == value


def test_yaml_merge_keys_and_anchors(tmp_path):
    text = (
        "all:\n  hosts:\n    a: &base {ansible_user: ops, x: 1}\n"
        "    b:\n      <<: *base\n      x: 2\n"
    )
    inv = load_inventory(write(tmp_path, "hosts.yml", text))

    assert inv.hosts["b"].vars == {"ansible_user": "ops", "x": 2}
    assert inv.hosts["b"].user == "ops"


def test_same_host_in_two_groups_merges_its_vars(tmp_path):
    text = "[g]\na x=1 y=1\n[h]\na y=2\n"
    inv = load_inventory(write(tmp_path, "hosts.ini", text))

    assert inv.hosts["a"].vars == {"x": 1, "y": 2}


# Connection variables.

CONNECTION = DATA / "connection"


@pytest.mark.parametrize(
    "host, field, value",
    [
        ("plain", "address", "plain"),
        ("plain", "port", 22),
        ("plain", "user", "deploy"),
        ("plain", "key_file", str(CONNECTION / "keys" / "fleet")),
        ("plain", "become", False),
        ("plain", "root", DEFAULT_ROOT),
        ("plain", "known_hosts", None),
        ("plain", "subnet", None),
        ("full", "address", "10.0.0.5"),
        ("full", "port", 2222),
        ("full", "become", True),
        ("full", "root", "/srv/mockerops"),
        ("full", "known_hosts", str(CONNECTION / "known_hosts")),
        ("full", "subnet", "10.88.0.0/16"),
        ("twins", "address", "10.0.0.7"),
        ("twins", "port", 2201),
        ("twins", "user", "mocker"),
        ("twins", "become", True),
        ("twins", "key_file", "/abs/key"),
        ("2001:db8::1", "port", 2022),
        ("web1", "port", 2223),
    ],
)
def test_connection_fields(host, field, value):
    inv = load_inventory(CONNECTION / "hosts.yaml")

    assert getattr(inv.hosts[host], field) == value


@pytest.mark.parametrize(
    "host, shown",
    [
        ("full", "<Host full 10.0.0.5:2222>"),
        ("plain", "<Host plain plain:22>"),
        ("2001:db8::1", "<Host 2001:db8::1 [2001:db8::1]:2022>"),
    ],
)
def test_host_repr(host, shown):
    assert repr(load_inventory(CONNECTION / "hosts.yaml").hosts[host]) == shown


@pytest.mark.parametrize(
    "value, expected",
    [("yes", True), ("No", False), ("on", True), ("0", False), ("true", True),
     ("1", True), ("false", False), ("True", True)],
)
def test_become_reads_ansible_booleans(tmp_path, value, expected):
    path = write(tmp_path, "hosts.ini", f"a ansible_become={value}\n")

    assert load_inventory(path).hosts["a"].become is expected


@pytest.mark.parametrize(
    "line, shown",
    [
        ("a ansible_port=0", "host a: ansible_port 0 is not a port number"),
        ("a ansible_port=65536", "ansible_port 65536 is not a port number"),
        ("a ansible_port=ssh", "ansible_port 'ssh' is not a port number"),
        ("a mockerops_port=True", "mockerops_port True is not a port number"),
        ("a ansible_become=maybe", "ansible_become 'maybe' is not a boolean"),
        ("a mockerops_root=var/lib", "mockerops_root 'var/lib' is not an absolute"),
        ("a mockerops_subnet=10.88.0.1/16", "mockerops_subnet '10.88.0.1/16'"),
        ("a ansible_host=5", "ansible_host 5 is not a non-empty string"),
        ("a:99999", "port 99999 in host 'a:99999' is out of range"),
    ],
)
def test_bad_connection_variables_name_host_and_line(tmp_path, line, shown):
    path = write(tmp_path, "hosts.ini", "# fleet\n" + line + "\n")

    with pytest.raises(InventoryError) as caught:
        load_inventory(path)

    assert str(caught.value).startswith(f"{path}:2: ")
    assert shown in str(caught.value)


# Errors: always an InventoryError naming the file (and line where there is one).


@pytest.mark.parametrize(
    "filename, text, where, shown",
    [
        ("hosts.yaml", "all:\n  hosts: [a, b\n", ":3:", "not valid YAML"),
        (
            "hosts.yaml",
            "all:\n  hosts:\n    a:\n  hosts:\n  - x\n",
            ":5:",
            "must be a mapping, not a list",
        ),
        (
            "hosts.yaml",
            "all:\n  children:\n    web: just-text\n",
            ":3:",
            "group 'web' must be a mapping",
        ),
        ("hosts.yaml", "all:\n  host:\n    a:\n", ":2:", "unknown key 'host'"),
        (
            "hosts.yaml",
            "all:\n  hosts:\n    a: 10.0.0.1\n",
            ":3:",
            "host 'a' must be a mapping",
        ),
        ("hosts.yaml", "", "", "the inventory is empty"),
        (
            "hosts.yaml",
            "- a\n- b\n",
            ":1:",
            "the top of an inventory must be a mapping",
        ),
        ("hosts.yaml", "a: {}\n---\nb: {}\n", ":2:", "not valid YAML"),
        (
            "hosts.yaml",
            "all:\n  hosts:\n    'bad name':\n",
            ":3:",
            "'bad name' is not a valid host name",
        ),
        (
            "hosts.yaml",
            "all:\n  children:\n    a:\n      children:\n        all:\n",
            ":5:",
            "group 'all' is listed as a child",
        ),
        (
            "hosts.yaml",
            "a:\n  children:\n    b:\n      children:\n        a:\n",
            ":5:",
            "loop: a -> b -> a",
        ),
        ("hosts.ini", "[web\n", ":1:", "bad section header"),
        ("hosts.ini", "[web:host]\n", ":1:", "unknown type 'host'"),
        ("hosts.ini", "[web:vars]\nx\n", ":2:", "expected key=value"),
        ("hosts.ini", "[web]\na x\n", ":2:", "expected key=value after host 'a'"),
        ("hosts.ini", "[web]\na x='oops\n", ":2:", "cannot split host line"),
        (
            "hosts.ini",
            "[web:children]\ndb\n",
            ":2:",
            "[web:children] lists group 'db', which is not",
        ),
        ("hosts.ini", "[a]\n[web:vars]\nx=1\n", ":2:", "[web:vars] names group 'web'"),
        ("hosts.ini", "[a:children]\nb c\n", ":2:", "expected one group name"),
        (
            "hosts.ini",
            "[g]\nh\n[g:vars]\nansible_group_priority=hi\n",
            ":4:",
            "not a whole number",
        ),
    ],
)
def test_errors_name_file_and_line(tmp_path, filename, text, where, shown):
    path = write(tmp_path, filename, text)

    with pytest.raises(InventoryError) as caught:
        load_inventory(path)

    assert str(caught.value).startswith(f"{path}{where}")
    assert shown in str(caught.value)
    assert caught.value.hint


@pytest.mark.parametrize(
    "setup, shown",
    [
        ("missing", "not found"),
        ("directory", "is a directory"),
        ("latin1", "is not UTF-8"),
        ("vault", "vault-encrypted"),
        ("badvars", "a variables file must be a mapping"),
    ],
)
def test_file_errors(tmp_path, setup, shown):
    path = tmp_path / "hosts.ini"
    if setup == "directory":
        path.mkdir()
    elif setup == "latin1":
        path.write_bytes("[caf\xe9]\n".encode("latin-1"))
    elif setup != "missing":
        path.write_text("[web]\nweb1\n")
        (tmp_path / "host_vars").mkdir()
        body = "$ANSIBLE_VAULT;1.1;AES256\n0011\n" if setup == "vault" else "- x\n"
        (tmp_path / "host_vars" / "web1.yml").write_text(body)

    with pytest.raises(InventoryError, match=shown) as caught:
        load_inventory(path)

    assert str(path.parent) in str(caught.value)


# ansible-inventory --list shape.


def test_to_list_matches_ansible_inventory_list():
    listed = load_inventory(DATA / "precedence" / "hosts.yaml").to_list()

    assert listed == {
        "_meta": {
            "hostvars": {"web1": {"tier": "zone_b"}, "web2": {"tier": "canary"}}
        },
        "all": {"children": ["app", "zone_b", "ungrouped"]},
        "app": {"hosts": ["web1"], "children": ["canary"]},
        "canary": {"hosts": ["web2"]},
        "zone_b": {"hosts": ["web1", "web2"]},
    }
