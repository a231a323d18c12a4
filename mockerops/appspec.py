"""Load and validate an app.yaml into an AppSpec.

The file is composed into YAML nodes first and validated node by node, so every
error names FILE:LINE and the dotted key (``containers[0].replicas``) it is about.
Scalars are read from their source text, not from YAML 1.1's guesses: an unquoted
``restart: no`` is the string "no", not False, and ``ports: [80:22]`` is refused
instead of silently becoming the sexagesimal integer 4822.

Secrets are resolved here, on the controller, and wrapped in ``Secret`` so their
values never appear in a repr, a log line or a ``--check`` diff.
"""

import difflib
import os
import re
import shlex
from dataclasses import dataclass, field

import yaml

from mockerops.errors import AppSpecError

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MEMORY_RE = re.compile(r"^(\d+)([kmgKMG]?)[bB]?$")
MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
PORT_RE = re.compile(
    r"^(?:(?P<ip>\d{1,3}(?:\.\d{1,3}){3}):)?(?P<host>\d+):(?P<container>\d+)"
    r"(?:/(?P<proto>tcp|udp))?$"
)
VOLUME_RE = re.compile(r"^(?P<source>[^:]+):(?P<target>/[^:]*)(?::(?P<mode>ro|rw))?$")
RESTART_RE = re.compile(r"^(no|always|on-failure(?::\d+)?)$")


class Secret:
    """Hold a secret value; its repr and str are hidden, reveal() returns it."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """Return the secret value, for the container's environment only."""
        return self._value

    def __repr__(self) -> str:
        return f"<Secret from {self.source}: hidden>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class PortSpec:
    """Publish host_port on the host to container_port in each container."""

    host_port: int
    container_port: int
    proto: str = "tcp"
    host_ip: str = ""

    def __str__(self) -> str:
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{self.host_port}:{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class HealthCheck:
    """How and how often to decide that a new container is ready."""

    kind: str  # "cmd", "http" or "tcp"
    cmd: tuple = ()
    port: int = 0
    path: str = "/"
    interval: float = 5.0
    timeout: float = 3.0
    retries: int = 3
    start_period: float = 0.0

    def describe(self) -> str:
        """Return a one-line description for plans and reports."""
        if self.kind == "cmd":
            what = "cmd " + shlex.join(self.cmd)
        elif self.kind == "http":
            what = f"http :{self.port}{self.path}"
        else:
            what = f"tcp :{self.port}"
        return (
            f"{what} every {self.interval:g}s, timeout {self.timeout:g}s, "
            f"{self.retries} retries, start period {self.start_period:g}s"
        )


@dataclass(frozen=True)
class ContainerSpec:
    """One container of the app, run as `replicas` identical copies per host."""

    name: str
    replicas: int = 1
    command: tuple = ()
    env: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict)  # env name -> Secret
    ports: tuple = ()
    volumes: tuple = ()
    restart: str = "no"
    memory: int = 0
    cpus: float = 0.0
    pids: int = 0
    healthcheck: HealthCheck = None
    line: int = 0


@dataclass(frozen=True)
class ImageSpec:
    """The Mockerfile that builds the app's image and its build context."""

    mockerfile: str
    context: str
    build_args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutSpec:
    """How many hosts to deploy at once and when to stop."""

    batch: int = 0  # a count of hosts, or 0 when percent is used
    percent: int = 100
    max_fail_percentage: int = 0
    pause: float = 0.0
    drain: float = 2.0


@dataclass(frozen=True)
class AppSpec:
    """A validated app.yaml."""

    path: str
    name: str
    hosts: str
    image: ImageSpec
    containers: tuple
    vars: dict = field(default_factory=dict)
    rollout: RolloutSpec = field(default_factory=RolloutSpec)

    def __repr__(self) -> str:
        return f"<AppSpec {self.name} from {self.path}>"


def load_appspec(path: str, environ=None) -> AppSpec:
    """Read, validate and return the app.yaml at path, resolving its secrets."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise AppSpecError(f"{path}: cannot read app spec: {exc.strerror}") from None
    return parse_appspec(text, path, environ=os.environ if environ is None else environ)


def parse_appspec(text: str, path: str = "app.yaml", environ=None) -> AppSpec:
    """Validate app.yaml text; path names the file in errors and anchors paths."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise AppSpecError(f"{where}: not valid YAML: {problem}") from None
    reader = _Reader(path, {} if environ is None else environ)
    if root is None:
        raise AppSpecError(f"{path}:1: the app spec is empty", hint=_HINT)
    return reader.app(root)


_HINT = "see playbooks/README.md for every app.yaml key"

TOP_KEYS = {"name", "hosts", "vars", "image", "containers", "rollout"}
IMAGE_KEYS = {"mockerfile", "context", "build_args"}
CONTAINER_KEYS = {
    "name", "replicas", "command", "env", "secrets", "ports", "volumes",
    "restart", "limits", "healthcheck",
}
LIMIT_KEYS = {"memory", "cpus", "pids"}
HEALTH_KEYS = {"cmd", "http", "tcp", "interval", "timeout", "retries", "start_period"}
ROLLOUT_KEYS = {"batch", "max_fail_percentage", "pause", "drain"}


def _shown(node) -> str:
    """Return a short quoted rendering of a node's value for messages."""
    if isinstance(node, yaml.ScalarNode):
        text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return repr(text)
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return "a list"


class _Reader:
    """Walk composed YAML nodes, converting and checking each key."""

    def __init__(self, path: str, environ) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.environ = environ

    def fail(self, node, key: str, message: str, hint: str = ""):
        """Raise AppSpecError naming file, line and key."""
        line = node.start_mark.line + 1 if node is not None else 1
        where = f"{self.path}:{line}: key {key!r}: " if key else f"{self.path}:{line}: "
        raise AppSpecError(where + message, hint=hint)

    def expect(self, node, key: str, what: str):
        """Raise the standard wrong-type error."""
        self.fail(node, key, f"expected {what}, got {_shown(node)}")

    def mapping(self, node, key: str, allowed: set, required=()) -> dict:
        """Return {key: (key_node, value_node)} after checking keys."""
        if not isinstance(node, yaml.MappingNode):
            self.expect(node, key or "(top level)", "a mapping")
        out = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else None
            sub = f"{key}.{name}" if key else str(name)
            if name not in allowed:
                close = difflib.get_close_matches(str(name), sorted(allowed), 1)
                hint = f"did you mean {close[0]!r}?" if close else (
                    "allowed keys: " + ", ".join(sorted(allowed))
                )
                self.fail(knode, sub, "unknown key", hint=hint)
            if name in out:
                self.fail(knode, sub, "key given twice")
            out[name] = (knode, vnode)
        for name in required:
            if name not in out:
                sub = f"{key}.{name}" if key else name
                self.fail(node, sub, "required key is missing", hint=_HINT)
        return out

    def scalar(self, node, key: str, what: str = "a string") -> str:
        """Return the source text of a scalar node."""
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
            self.expect(node, key, what)
        return node.value

    def string(self, node, key: str, pattern=None, what: str = "a string") -> str:
        """Return a non-empty string, optionally matching pattern."""
        text = self.scalar(node, key, what)
        if not text or (pattern is not None and not pattern.match(text)):
            self.expect(node, key, what)
        return text

    def integer(self, node, key: str, low: int = 0, high=None) -> int:
        """Return an integer within [low, high]."""
        text = self.scalar(node, key, "an integer")
        if not re.match(r"^[+-]?\d+$", text):
            self.expect(node, key, "an integer")
        value = int(text)
        if value < low or (high is not None and value > high):
            upper = f" and {high}" if high is not None else " or more"
            between = f"between {low}{upper}" if high is not None else f"{low}{upper}"
            self.fail(node, key, f"expected an integer {between}, got {value}")
        return value

    def number(self, node, key: str) -> float:
        """Return a positive number."""
        text = self.scalar(node, key, "a number")
        try:
            value = float(text)
        except ValueError:
            self.expect(node, key, "a number")
        if not value > 0:
            self.fail(node, key, f"expected a number above 0, got {text!r}")
        return value

    def duration(self, node, key: str) -> float:
        """Return seconds from 2, 2.5, "500ms", "5s", "1m" or "1h"."""
        text = self.scalar(node, key, 'a duration such as 5, "5s", "1m"')
        match = DURATION_RE.match(text.strip())
        if not match:
            self.expect(node, key, 'a duration such as 5, "5s", "1m"')
        return float(match.group(1)) * DURATION_UNITS[match.group(2)]

    def sequence(self, node, key: str, what: str = "a list") -> list:
        """Return the item nodes of a list node."""
        if not isinstance(node, yaml.SequenceNode):
            self.expect(node, key, what)
        return node.value

    def argv(self, node, key: str) -> tuple:
        """Return a command as an argument tuple from a list or a string."""
        what = "a command (a list of strings or a string)"
        if isinstance(node, yaml.ScalarNode):
            try:
                args = shlex.split(self.string(node, key, what=what))
            except ValueError as exc:
                self.fail(node, key, f"cannot split command: {exc}")
            return tuple(args)
        items = self.sequence(node, key, what)
        if not items:
            self.expect(node, key, what)
        return tuple(
            self.scalar(item, f"{key}[{i}]") for i, item in enumerate(items)
        )

    def plain(self, node):
        """Return a node as ordinary Python data (for vars)."""
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()

    def app(self, root) -> AppSpec:
        """Return the AppSpec for the top-level node."""
        required = ("name", "hosts", "image", "containers")
        keys = self.mapping(root, "", TOP_KEYS, required)
        name = self.string(
            keys["name"][1], "name", NAME_RE,
            "a lowercase name of letters, digits and '-' (at most 32)",
        )
        hosts = self.string(keys["hosts"][1], "hosts", what="a host pattern")
        variables = {}
        if "vars" in keys:
            vnode = keys["vars"][1]
            if not isinstance(vnode, yaml.MappingNode):
                self.expect(vnode, "vars", "a mapping")
            variables = self.plain(vnode)
        image = self.image(keys["image"][1])
        cnodes = self.sequence(keys["containers"][1], "containers")
        if not cnodes:
            self.fail(keys["containers"][1], "containers", "expected at least one")
        containers = []
        seen = {}
        for i, cnode in enumerate(cnodes):
            spec = self.container(cnode, f"containers[{i}]")
            if spec.name in seen:
                self.fail(cnode, f"containers[{i}].name",
                          f"container {spec.name!r} is already declared on line "
                          f"{seen[spec.name]}")
            seen[spec.name] = spec.line
            containers.append(spec)
        self.check_ports(containers, cnodes)
        rollout = RolloutSpec()
        if "rollout" in keys:
            rollout = self.rollout(keys["rollout"][1])
        return AppSpec(
            path=self.path, name=name, hosts=hosts, image=image,
            containers=tuple(containers), vars=variables, rollout=rollout,
        )

    def relpath(self, text: str) -> str:
        """Return text as a path anchored at the app.yaml's directory."""
        return os.path.normpath(os.path.join(self.base, os.path.expanduser(text)))

    def image(self, node) -> ImageSpec:
        """Return the image section."""
        keys = self.mapping(node, "image", IMAGE_KEYS, ("mockerfile",))
        mockerfile = self.relpath(
            self.string(keys["mockerfile"][1], "image.mockerfile", what="a path")
        )
        context = os.path.dirname(mockerfile)
        if "context" in keys:
            context = self.relpath(
                self.string(keys["context"][1], "image.context", what="a path")
            )
        args = {}
        if "build_args" in keys:
            args = self.str_dict(keys["build_args"][1], "image.build_args", ENV_RE)
        return ImageSpec(mockerfile=mockerfile, context=context, build_args=args)

    def str_dict(self, node, key: str, name_re) -> dict:
        """Return a mapping of names to scalar values, as strings."""
        if not isinstance(node, yaml.MappingNode):
            self.expect(node, key, "a mapping")
        out = {}
        for knode, vnode in node.value:
            name = self.scalar(knode, key, "a name")
            sub = f"{key}.{name}"
            if not name_re.match(name):
                self.fail(knode, sub, "expected a name of letters, digits and '_'")
            if name in out:
                self.fail(knode, sub, "key given twice")
            if isinstance(vnode, yaml.ScalarNode) and vnode.tag.endswith(":null"):
                out[name] = ""
            else:
                out[name] = self.scalar(vnode, sub, "a string, number or boolean")
        return out

    def container(self, node, key: str) -> ContainerSpec:
        """Return one entry of containers."""
        keys = self.mapping(node, key, CONTAINER_KEYS, ("name",))
        get = keys.get
        name = self.string(
            keys["name"][1], f"{key}.name", NAME_RE,
            "a lowercase name of letters, digits and '-' (at most 32)",
        )
        spec = {"name": name, "line": node.start_mark.line + 1}
        if get("replicas"):
            spec["replicas"] = self.integer(
                get("replicas")[1], f"{key}.replicas", 0, 64
            )
        if get("command"):
            spec["command"] = self.argv(get("command")[1], f"{key}.command")
        if get("env"):
            spec["env"] = self.str_dict(get("env")[1], f"{key}.env", ENV_RE)
        if get("secrets"):
            spec["secrets"] = self.secrets(get("secrets")[1], f"{key}.secrets")
            for sname in spec["secrets"]:
                if sname in spec.get("env", {}):
                    self.fail(get("secrets")[1], f"{key}.secrets.{sname}",
                              "also set in env; a secret and an env var clash")
        if get("ports"):
            spec["ports"] = self.ports(get("ports")[1], f"{key}.ports")
        if get("volumes"):
            vkey = f"{key}.volumes"
            spec["volumes"] = tuple(
                self.string(v, f"{vkey}[{i}]", VOLUME_RE,
                            "a volume such as 'data:/var/lib/app' or '/srv:/srv:ro'")
                for i, v in enumerate(self.sequence(get("volumes")[1], vkey))
            )
        if get("restart"):
            spec["restart"] = self.string(
                get("restart")[1], f"{key}.restart", RESTART_RE,
                "one of 'no', 'always', 'on-failure' or 'on-failure:N'",
            )
        if get("limits"):
            spec.update(self.limits(get("limits")[1], f"{key}.limits"))
        if get("healthcheck"):
            spec["healthcheck"] = self.healthcheck(
                get("healthcheck")[1], f"{key}.healthcheck"
            )
        return ContainerSpec(**spec)

    def secrets(self, node, key: str) -> dict:
        """Resolve secrets on the controller: from an env var or a file."""
        if not isinstance(node, yaml.MappingNode):
            self.expect(node, key, "a mapping")
        out = {}
        for knode, vnode in node.value:
            name = self.scalar(knode, key, "a name")
            sub = f"{key}.{name}"
            if not ENV_RE.match(name):
                self.fail(knode, sub, "expected an env var name (letters, digits, _)")
            src = self.mapping(vnode, sub, {"env", "file"})
            if len(src) != 1:
                self.fail(vnode, sub, "expected exactly one of 'env' or 'file'")
            if "env" in src:
                var = self.string(src["env"][1], f"{sub}.env", ENV_RE,
                                  what="an env var name")
                if var not in self.environ:
                    self.fail(src["env"][1], f"{sub}.env",
                              f"controller env var {var} is not set",
                              hint=f"export {var}=... before running mockerops")
                out[name] = Secret(self.environ[var], f"env {var}")
            else:
                fnode = src["file"][1]
                fpath = self.relpath(self.string(fnode, f"{sub}.file", what="a path"))
                try:
                    with open(fpath, encoding="utf-8") as f:
                        value = f.read()
                except (OSError, UnicodeDecodeError) as exc:
                    reason = getattr(exc, "strerror", None) or str(exc)
                    self.fail(fnode, f"{sub}.file", f"cannot read {fpath}: {reason}")
                out[name] = Secret(value.rstrip("\n"), f"file {fpath}")
        return out

    def ports(self, node, key: str) -> tuple:
        """Return the published ports."""
        out = []
        for i, item in enumerate(self.sequence(node, key)):
            sub = f"{key}[{i}]"
            text = self.scalar(item, sub, "a port such as '8080:8000'")
            match = PORT_RE.match(text)
            if not match or item.tag.endswith(":int"):
                self.fail(item, sub, f"expected a port such as '8080:8000', got "
                          f"{_shown(item)}", hint="quote ports: YAML reads 80:22 "
                          "as a base-60 number")
            host, cont = int(match.group("host")), int(match.group("container"))
            for number in (host, cont):
                if not 1 <= number <= 65535:
                    self.fail(item, sub, f"port {number} is outside 1-65535")
            out.append(PortSpec(host, cont, match.group("proto") or "tcp",
                                match.group("ip") or ""))
        return tuple(out)

    def check_ports(self, containers: list, cnodes: list) -> None:
        """Refuse a host port published twice across the app's containers."""
        seen = {}
        for i, spec in enumerate(containers):
            for port in spec.ports:
                ident = (port.host_port, port.proto)
                if ident in seen:
                    self.fail(cnodes[i], f"containers[{i}].ports",
                              f"host port {port.host_port}/{port.proto} is "
                              f"already published by container {seen[ident]!r}")
                seen[ident] = spec.name

    def limits(self, node, key: str) -> dict:
        """Return memory (bytes), cpus and pids limits."""
        keys = self.mapping(node, key, LIMIT_KEYS)
        out = {}
        if "memory" in keys:
            mnode = keys["memory"][1]
            text = self.scalar(mnode, f"{key}.memory", "a size such as '256m'")
            match = MEMORY_RE.match(text)
            if not match or int(match.group(1)) == 0:
                self.expect(mnode, f"{key}.memory", "a size such as '256m' or '1g'")
            out["memory"] = int(match.group(1)) * MEMORY_UNITS[match.group(2).lower()]
            if out["memory"] < 6 << 20:
                self.fail(mnode, f"{key}.memory", "expected at least 6m")
        if "cpus" in keys:
            out["cpus"] = self.number(keys["cpus"][1], f"{key}.cpus")
        if "pids" in keys:
            out["pids"] = self.integer(keys["pids"][1], f"{key}.pids", 1)
        return out

    def healthcheck(self, node, key: str) -> HealthCheck:
        """Return the health check: exactly one of cmd, http or tcp."""
        keys = self.mapping(node, key, HEALTH_KEYS)
        kinds = [k for k in ("cmd", "http", "tcp") if k in keys]
        if len(kinds) != 1:
            self.fail(node, key, "expected exactly one of 'cmd', 'http' or 'tcp', "
                      f"got {', '.join(kinds) or 'none'}")
        kind = kinds[0]
        spec = {"kind": kind}
        knode = keys[kind][1]
        if kind == "cmd":
            spec["cmd"] = self.argv(knode, f"{key}.cmd")
        else:
            sub = f"{key}.{kind}"
            allowed = {"port", "path"} if kind == "http" else {"port"}
            parts = self.mapping(knode, sub, allowed, ("port",))
            spec["port"] = self.integer(parts["port"][1], f"{sub}.port", 1, 65535)
            if "path" in parts:
                spec["path"] = self.string(
                    parts["path"][1], f"{sub}.path", re.compile(r"^/\S*$"),
                    "a URL path starting with '/'",
                )
        for name in ("interval", "timeout", "start_period"):
            if name in keys:
                spec[name] = self.duration(keys[name][1], f"{key}.{name}")
        for name in ("interval", "timeout"):
            if name in keys and spec[name] <= 0:
                self.fail(keys[name][1], f"{key}.{name}", "expected more than 0s")
        if "retries" in keys:
            spec["retries"] = self.integer(
                keys["retries"][1], f"{key}.retries", 1, 1000
            )
        return HealthCheck(**spec)

    def rollout(self, node) -> RolloutSpec:
        """Return the rollout section."""
        keys = self.mapping(node, "rollout", ROLLOUT_KEYS)
        spec = {}
        if "batch" in keys:
            bnode = keys["batch"][1]
            text = self.scalar(bnode, "rollout.batch", "a host count or a percentage")
            match = re.match(r"^(\d+)%$", text.strip())
            if match:
                percent = int(match.group(1))
                if not 1 <= percent <= 100:
                    self.fail(bnode, "rollout.batch",
                              f"expected a percentage from 1% to 100%, got {text!r}")
                spec["percent"] = percent
            else:
                what = "a host count or a percentage such as '25%'"
                if not re.match(r"^\d+$", text):
                    self.expect(bnode, "rollout.batch", what)
                spec["batch"] = self.integer(bnode, "rollout.batch", 1)
        if "max_fail_percentage" in keys:
            spec["max_fail_percentage"] = self.integer(
                keys["max_fail_percentage"][1], "rollout.max_fail_percentage", 0, 100
            )
        for name in ("pause", "drain"):
            if name in keys:
                spec[name] = self.duration(keys[name][1], f"rollout.{name}")
        return RolloutSpec(**spec)
