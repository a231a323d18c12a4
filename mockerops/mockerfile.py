"""Mockerfiles: render with jinja2, parse into instructions, expand ARG/ENV values.

A Mockerfile goes through three steps on the controller, each naming file:line on
error:

    render(path, variables, build_args, host_name)   jinja2 with the host's variables
    parse(text, path)                                 Dockerfile syntax -> Instruction
    resolve(instructions, build_args, base_env)      $VAR expansion, absolute paths

``parse`` keeps values as written (quotes included) so that ``resolve`` can expand
them the way Docker's shell lexer does: single quotes are literal, double quotes
expand. RUN, CMD and ENTRYPOINT are left alone: the shell in the container expands
them. The resolved instructions are what the agent keys its layers on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
from typing import Any, Iterable

import jinja2

from mockerops.errors import MockerfileError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTRUCTIONS = (
    "FROM", "RUN", "COPY", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "CMD",
    "ENTRYPOINT", "LABEL", "HEALTHCHECK",
)
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")
HINTS = {
    "ADD": "use COPY (ADD's URL and auto-extract forms are not supported)",
    "SHELL": "use the exec form RUN [\"/bin/bash\", \"-c\", \"...\"]",
}
HEALTH_FLAGS = ("interval", "timeout", "retries", "start-period")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
PORT = re.compile(r"(\d{1,5})(?:/(tcp|udp|sctp))?\Z", re.I)


@dataclasses.dataclass
class Instruction:
    """One Mockerfile instruction: its name, arguments, flags and where it is."""

    name: str
    args: list
    line: int
    raw: str
    flags: dict = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Instruction {self.name} line {self.line}>"

    def to_step(self) -> dict:
        """Return the instruction as the JSON object image.build takes."""
        return {"name": self.name, "args": self.args, "flags": self.flags,
                "line": self.line, "raw": self.raw}


# -- render -------------------------------------------------------------------


def render(path, variables: dict, build_args: dict | None = None,
           host_name: str = "") -> str:
    """Render the Mockerfile at path with jinja2 for one host and return the text."""
    path = str(path)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.dirname(os.path.abspath(path))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    context = {"inventory_hostname": host_name, "build_args": dict(build_args or {})}
    context.update(variables or {})
    where = f" for host {host_name}" if host_name else ""

    try:
        template = env.get_template(os.path.basename(path))
    except jinja2.TemplateNotFound:
        raise MockerfileError(f"{path}: no such Mockerfile") from None
    except jinja2.TemplateSyntaxError as exc:
        raise _syntax_error(path, exc) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MockerfileError(f"{path}: cannot read Mockerfile: {exc}") from None

    try:
        return template.render(context)
    except jinja2.UndefinedError as exc:
        name = _undefined_name(str(exc))
        raise MockerfileError(
            f"{_error_place(path, exc)}: undefined variable {name!r}{where}",
            hint=f"define {name!r} in the inventory (host or group vars) or give "
            f"a default: {{{{ {name} | default('...') }}}}",
        ) from None
    except jinja2.TemplateSyntaxError as exc:  # in an included template
        raise _syntax_error(exc.filename or path, exc) from None
    except jinja2.TemplateError as exc:
        raise MockerfileError(f"{_error_place(path, exc)}: {exc}{where}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise MockerfileError(
            f"{_error_place(path, exc)}: template error{where}: {exc}"
        ) from None


def _syntax_error(path: str, exc: jinja2.TemplateSyntaxError) -> MockerfileError:
    """Return the MockerfileError for a jinja2 syntax error, with a raw hint."""
    line_text = ""
    if exc.source and exc.lineno:
        lines = exc.source.splitlines()
        if 0 < exc.lineno <= len(lines):
            line_text = lines[exc.lineno - 1]
    hint = ""
    if "{{" in line_text or "{%" in line_text:
        hint = ("if these braces are not jinja (shell ${{...}}, awk, JSON), wrap "
                "them in {% raw %}...{% endraw %}")
    return MockerfileError(
        f"{exc.filename or path}:{exc.lineno}: template syntax error: {exc.message}",
        hint=hint,
    )


def _error_place(path: str, exc: BaseException) -> str:
    """Return file:line of the innermost template frame in exc's traceback."""
    place = path
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        # jinja2 rewrites tracebacks so template frames carry the template's
        # file name and line; its fake frames mark themselves in their globals.
        if "__jinja_exception__" in frame.f_globals:
            place = f"{frame.f_code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return place


def _undefined_name(message: str) -> str:
    """Return the variable or attribute name an UndefinedError message is about."""
    match = re.search(r"'([^']+)' is undefined", message) or re.search(
        r"has no attribute '([^']+)'", message
    )
    return match.group(1) if match else message


# -- parse --------------------------------------------------------------------


def parse(text: str, path="Mockerfile") -> list[Instruction]:
    """Parse Mockerfile text into instructions; errors name path:line."""
    path = str(path)
    instructions = []
    for line, logical in _logical_lines(text):
        word, _, rest = logical.partition(" ")
        if "\t" in word:
            word, _, tail = word.partition("\t")
            rest = tail + " " + rest
        name = word.upper()
        rest = rest.strip()
        where = f"{path}:{line}"
        if name not in INSTRUCTIONS:
            raise MockerfileError(f"{where}: unknown instruction {word!r}",
                                  hint=HINTS.get(name, ""))
        if not rest:
            raise MockerfileError(f"{where}: {name} needs an argument")
        args, flags = _PARSERS[name](rest, where)
        instructions.append(Instruction(name, args, line, logical, flags))

    _check_order(instructions, path)
    return instructions


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Yield (first line number, text) for each instruction, joining continuations."""
    parts: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and parts):
            continue  # comments and blank lines may sit inside a continuation
        if not stripped:
            continue
        if not parts:
            start = number
        continued = re.search(r"\\[ \t]*$", line)
        parts.append(line[: continued.start()] if continued else line)
        if not continued:
            yield start, "".join(parts).strip()
            parts = []
    if parts:
        yield start, "".join(parts).strip()


def _check_order(instructions: list[Instruction], path: str) -> None:
    """Require one FROM, preceded by nothing but ARG."""
    froms = [ins for ins in instructions if ins.name == "FROM"]
    if not froms:
        raise MockerfileError(f"{path}: no FROM instruction",
                              hint="start with FROM scratch, an image or a tarball")
    for ins in instructions:
        if ins.name == "FROM":
            break
        if ins.name != "ARG":
            raise MockerfileError(
                f"{path}:{ins.line}: {ins.name} before FROM",
                hint="only ARG may come before FROM",
            )
    if len(froms) > 1:
        raise MockerfileError(
            f"{path}:{froms[1].line}: a second FROM: multi-stage builds are not "
            "supported"
        )


def _raw_words(text: str, where: str) -> list[str]:
    """Split text on unquoted whitespace, keeping quotes and backslashes as written."""
    words, current, quote, i = [], [], "", 0
    while i < len(text):
        ch = text[i]
        if quote:
            current.append(ch)
            if ch == "\\" and quote == '"' and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 1
        elif ch.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
        i += 1
    if quote:
        raise MockerfileError(f"{where}: unterminated {quote} quote")
    if current:
        words.append("".join(current))
    return words


def _json_form(rest: str, where: str, name: str) -> list[str] | None:
    """Return the exec-form argv when rest is a JSON array, None for shell form."""
    if not re.match(r"\[\s*(\"|\])", rest):
        return None
    try:
        value = json.loads(rest)
    except ValueError as exc:
        raise MockerfileError(
            f"{where}: {name} has a bad JSON array: {exc}",
            hint='write the exec form as ["prog", "arg"] with double quotes',
        ) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MockerfileError(f"{where}: {name} JSON form must be a list of strings")
    return value


def _take_flags(rest: str, where: str, name: str, allowed: Iterable[str]):
    """Split leading --flag=value options off rest; return (flags, rest)."""
    flags = {}
    while rest.startswith("--"):
        word, _, tail = rest.partition(" ")
        key, eq, value = word[2:].partition("=")
        if key not in allowed:
            raise MockerfileError(
                f"{where}: {name} does not support --{key}",
                hint="supported: " + ", ".join("--" + a for a in allowed)
                if allowed else "",
            )
        if not eq or not value:
            raise MockerfileError(f"{where}: {name} --{key} needs a value (--{key}=X)")
        flags[key] = value
        rest = tail.strip()
    return flags, rest


def _parse_command(rest: str, where: str, name: str):
    """Parse RUN/CMD/ENTRYPOINT arguments in shell or exec form."""
    _take_flags(rest, where, name, ())
    argv = _json_form(rest, where, name)
    if argv is not None:
        if not argv and name == "RUN":
            raise MockerfileError(f"{where}: RUN needs a command")
        return argv, {"form": "exec"}
    return [rest], {"form": "shell"}


def _parse_from(rest: str, where: str):
    """Parse FROM ref."""
    _take_flags(rest, where, "FROM", ())
    words = rest.split()
    if len(words) == 3 and words[1].upper() == "AS":
        raise MockerfileError(f"{where}: FROM ... AS: multi-stage builds are not "
                              "supported")
    if len(words) != 1:
        raise MockerfileError(f"{where}: FROM takes one image, got {rest!r}")
    return [words[0]], {}


def _parse_pairs(rest: str, where: str, name: str):
    """Parse ENV/LABEL `K=V ...` or the legacy `K V` form into [[key, raw value]]."""
    words = _raw_words(rest, where)
    if "=" not in words[0]:
        key, _, value = rest.partition(" ")
        if not value.strip() and name == "ENV":
            raise MockerfileError(f"{where}: ENV {key} needs a value",
                                  hint=f"write ENV {key}=VALUE")
        return [[key, value.strip()]], {}
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise MockerfileError(f"{where}: {name} expects KEY=VALUE, got {word!r}")
        pairs.append([key, value])
    return pairs, {}


def _parse_arg(rest: str, where: str):
    """Parse ARG name[=default] ... into [[name, raw default or None]]."""
    pairs = []
    for word in _raw_words(rest, where):
        key, eq, value = word.partition("=")
        if not ARG_NAME.match(key):
            raise MockerfileError(f"{where}: bad ARG name {key!r}")
        pairs.append([key, value if eq else None])
    return pairs, {}


def _parse_copy(rest: str, where: str):
    """Parse COPY [--chown=u:g] src... dest (shell or JSON form)."""
    flags, rest = _take_flags(rest, where, "COPY", ("chown",))
    words = _json_form(rest, where, "COPY")
    if words is None:
        words = _raw_words(rest, where)
    if len(words) < 2:
        raise MockerfileError(f"{where}: COPY needs a source and a destination")
    return words, flags


def _parse_single(rest: str, where: str, name: str):
    """Parse an instruction that takes one value (WORKDIR, USER)."""
    if name == "USER" and len(_raw_words(rest, where)) != 1:
        raise MockerfileError(f"{where}: USER takes one user[:group], got {rest!r}")
    return [rest], {}


def _parse_expose(rest: str, where: str):
    """Parse EXPOSE port[/proto] ..."""
    return _raw_words(rest, where), {}


def _parse_healthcheck(rest: str, where: str):
    """Parse HEALTHCHECK NONE or [--interval=..] ... CMD command."""
    if rest.upper() == "NONE":
        return [], {"none": True}
    options, rest = _take_flags(rest, where, "HEALTHCHECK", HEALTH_FLAGS)
    flags: dict[str, Any] = {}
    for key, value in options.items():
        if key == "retries":
            if not value.isdigit():
                raise MockerfileError(
                    f"{where}: HEALTHCHECK --retries must be a number, got {value!r}"
                )
            flags["retries"] = int(value)
        else:
            flags[key.replace("-", "_")] = parse_duration(value, where, key)
    word, _, command = rest.partition(" ")
    if word.upper() != "CMD" or not command.strip():
        raise MockerfileError(
            f"{where}: HEALTHCHECK needs CMD and a command, got {rest!r}",
            hint="write HEALTHCHECK [--interval=30s] CMD wget -q -O- localhost",
        )
    args, form = _parse_command(command.strip(), where, "HEALTHCHECK")
    flags.update(form)
    return args, flags


def parse_duration(text: str, where: str = "", key: str = "duration") -> float:
    """Return seconds for a Docker duration such as 30s, 1m30s or 500ms."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise MockerfileError(
            f"{where}: bad --{key} {text!r}", hint="use units ms, s, m, h: 30s, 1m30s"
        )
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


_PARSERS = {
    "FROM": _parse_from,
    "RUN": lambda rest, where: _parse_command(rest, where, "RUN"),
    "CMD": lambda rest, where: _parse_command(rest, where, "CMD"),
    "ENTRYPOINT": lambda rest, where: _parse_command(rest, where, "ENTRYPOINT"),
    "COPY": _parse_copy,
    "ENV": lambda rest, where: _parse_pairs(rest, where, "ENV"),
    "LABEL": lambda rest, where: _parse_pairs(rest, where, "LABEL"),
    "ARG": _parse_arg,
    "WORKDIR": lambda rest, where: _parse_single(rest, where, "WORKDIR"),
    "USER": lambda rest, where: _parse_single(rest, where, "USER"),
    "EXPOSE": _parse_expose,
    "HEALTHCHECK": _parse_healthcheck,
}


# -- expansion ----------------------------------------------------------------


def expand(word: str, scope: dict, where: str = "", quotes: bool = True) -> str:
    """Expand $VAR, ${VAR}, ${VAR:-x}, ${VAR:+x} in word and remove its quotes."""
    out, i, quote = [], 0, ""
    while i < len(word):
        ch = word[i]
        if quotes and quote != '"' and ch == "'":
            end = word.find("'", i + 1)
            if end < 0:
                raise MockerfileError(f"{where}: unterminated ' quote in {word!r}")
            out.append(word[i + 1 : end])
            i = end + 1
            continue
        if quotes and ch == '"':
            quote = "" if quote else '"'
            i += 1
            continue
        if ch == "\\" and i + 1 < len(word):
            nxt = word[i + 1]
            if quote and nxt not in '"$\\':
                out.append(ch)
            out.append(nxt)
            i += 2
            continue
        if ch == "$":
            value, i = _expand_var(word, i, scope, where)
            out.append(value)
            continue
        out.append(ch)
        i += 1
    if quote:
        raise MockerfileError(f"{where}: unterminated \" quote in {word!r}")
    return "".join(out)


def _expand_var(word: str, i: int, scope: dict, where: str) -> tuple[str, int]:
    """Expand the variable reference starting at word[i] == '$'."""
    if word.startswith("${", i):
        end, depth = i + 2, 1
        while end < len(word) and depth:
            if word.startswith("${", end):
                depth, end = depth + 1, end + 2
                continue
            depth += {"}": -1}.get(word[end], 0)
            end += 1
        if depth:
            raise MockerfileError(f"{where}: missing }} in {word!r}")
        body = word[i + 2 : end - 1]
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?::([-+])(.*))?\Z", body, re.S)
        if not match:
            raise MockerfileError(
                f"{where}: bad substitution ${{{body}}}",
                hint="supported: ${VAR}, ${VAR:-default}, ${VAR:+alternative}",
            )
        name, op, operand = match.groups()
        value = scope.get(name) or ""
        if op == "-" and not value:
            value = expand(operand, scope, where, quotes=False)
        elif op == "+":
            value = expand(operand, scope, where, quotes=False) if value else ""
        return value, end
    match = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(word, i + 1)
    if not match:
        return "$", i + 1
    return scope.get(match.group(0)) or "", match.end()


def base_kind(ref: str) -> str:
    """Return what a FROM ref names: scratch, a tarball in the context, or an image."""
    if ref == "scratch":
        return "scratch"
    if ref.startswith(("./", "../", "/")) or ref.endswith(TARBALL_SUFFIXES):
        return "tarball"
    return "image"


def resolve(instructions: list[Instruction], build_args: dict | None = None,
            path="Mockerfile", base_env: dict | None = None) -> list[Instruction]:
    """Return instructions with ARG/ENV values expanded and paths made absolute.

    base_env is the environment of a FROM image already on the host; a tarball or
    scratch base starts with PATH only, as the agent's image config does.
    """
    build_args = {k: str(v) for k, v in (build_args or {}).items()}
    meta: dict[str, str] = {}  # ARGs before FROM: visible to FROM only
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    workdir = "/"
    seen_from = False
    out = []
    for ins in instructions:
        where = f"{path}:{ins.line}"
        scope = {**args, **env}
        new = dataclasses.replace(ins, args=list(ins.args), flags=dict(ins.flags))

        if ins.name == "ARG":
            target = args if seen_from else meta
            for name, default in ins.args:
                if name in build_args:
                    value = build_args[name]
                elif default is not None:
                    value = expand(default, {**scope, **target}, where)
                else:
                    value = meta.get(name) if target is args else None
                if value is not None:
                    target[name] = value
                else:
                    target.pop(name, None)
            if seen_from:
                # The agent puts these in RUN's environment and cache key; they are
                # not part of the ARG step's own key, as in Docker.
                new.flags["values"] = {
                    name: args[name] for name, _ in ins.args if name in args
                }
        elif ins.name == "FROM":
            seen_from = True
            ref = expand(ins.args[0], meta, where)
            kind = base_kind(ref)
            new.args, new.flags = [ref], {"base": kind}
            if kind == "image":
                env = dict(base_env or {})
            else:
                env = {"PATH": DEFAULT_PATH}
        elif ins.name in ("ENV", "LABEL"):
            pairs = [[expand(k, scope, where), expand(v, scope, where)]
                     for k, v in ins.args]
            new.args = pairs
            if ins.name == "ENV":
                env.update(dict(pairs))
        elif ins.name == "WORKDIR":
            value = expand(ins.args[0], scope, where)
            workdir = posixpath.normpath(posixpath.join(workdir, value))
            new.args = [workdir]
        elif ins.name == "USER":
            new.args = [expand(ins.args[0], scope, where)]
            if not new.args[0] or new.args[0].startswith(":"):
                raise MockerfileError(f"{where}: USER is empty after expansion")
        elif ins.name == "COPY":
            new.args = _resolve_copy(ins, scope, workdir, where)
            if "chown" in ins.flags:
                new.flags["chown"] = expand(ins.flags["chown"], scope, where)
        elif ins.name == "EXPOSE":
            new.args = [_port(expand(w, scope, where), where) for w in ins.args]
        out.append(new)
    return out


def _resolve_copy(ins: Instruction, scope: dict, workdir: str, where: str) -> list:
    """Expand COPY's words and make its destination absolute under WORKDIR."""
    # JSON-form words arrive unquoted already; shell-form words keep their quotes.
    quoted = not re.match(r"COPY\s+(--\S+\s+)*\[\s*\"", ins.raw, re.I)
    words = [expand(w, scope, where, quotes=quoted) for w in ins.args]
    dest = words[-1]
    slash = dest.endswith("/") or dest in (".", "..")
    dest = posixpath.normpath(posixpath.join(workdir, dest))
    if slash and dest != "/":
        dest += "/"
    return words[:-1] + [dest]


def _port(word: str, where: str) -> str:
    """Return port[/proto] normalised to 'N/proto'."""
    match = PORT.match(word)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise MockerfileError(f"{where}: bad EXPOSE port {word!r}",
                              hint="write EXPOSE 8000 or EXPOSE 8000/udp")
    return f"{int(match.group(1))}/{(match.group(2) or 'tcp').lower()}"


def load(path, *, variables: dict, build_args: dict | None = None,
         host_name: str = "", base_env: dict | None = None) -> list[Instruction]:
    """Render, parse and resolve the Mockerfile at path for one host."""
    text = render(path, variables, build_args, host_name)
    return resolve(parse(text, path), build_args, path, base_env)
