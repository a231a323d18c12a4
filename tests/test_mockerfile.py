"""Mockerfile rendering, parsing and ARG/ENV expansion, from data tables."""

import pytest

from mockerops.errors import MockerfileError
from mockerops.mockerfile import DEFAULT_PATH, expand, parse, render, resolve

# (Mockerfile body after FROM, [(name, args, flags)] of the instructions after FROM)
PARSE_CASES = [
    ("RUN echo hi", [("RUN", ["echo hi"], {"form": "shell"})]),
    ('RUN ["/bin/sh", "-c", "echo hi"]',
     [("RUN", ["/bin/sh", "-c", "echo hi"], {"form": "exec"})]),
    ("RUN [ -f /etc/passwd ] && echo yes",
     [("RUN", ["[ -f /etc/passwd ] && echo yes"], {"form": "shell"})]),
    ("RUN echo a \\\n    && echo b",
     [("RUN", ["echo a     && echo b"], {"form": "shell"})]),
    ("RUN echo a \\\n# inside\n\n  b", [("RUN", ["echo a   b"], {"form": "shell"})]),
    ("run echo lower", [("RUN", ["echo lower"], {"form": "shell"})]),
    ("COPY a b /dest/", [("COPY", ["a", "b", "/dest/"], {})]),
    ("COPY --chown=app:app src/*.py /app/", [("COPY", ["src/*.py", "/app/"],
                                              {"chown": "app:app"})]),
    ('COPY ["a b", "/d/"]', [("COPY", ["a b", "/d/"], {})]),
    ("ENV A=1 B=\"x y\"", [("ENV", [["A", "1"], ["B", '"x y"']], {})]),
    ("ENV LEGACY some value", [("ENV", [["LEGACY", "some value"]], {})]),
    ("ARG a\nARG b=2 c",
     [("ARG", [["a", None]], {}), ("ARG", [["b", "2"], ["c", None]], {})]),
    ("WORKDIR /app", [("WORKDIR", ["/app"], {})]),
    ("USER app:app", [("USER", ["app:app"], {})]),
    ("EXPOSE 80 53/udp", [("EXPOSE", ["80", "53/udp"], {})]),
    ('CMD ["python3", "app.py"]', [("CMD", ["python3", "app.py"], {"form": "exec"})]),
    ("CMD python3 app.py", [("CMD", ["python3 app.py"], {"form": "shell"})]),
    ('ENTRYPOINT ["/init"]', [("ENTRYPOINT", ["/init"], {"form": "exec"})]),
    ("ENTRYPOINT exec /init", [("ENTRYPOINT", ["exec /init"], {"form": "shell"})]),
    ("LABEL a=b \"c d\"=e", [("LABEL", [["a", "b"], ['"c d"', "e"]], {})]),
    ("HEALTHCHECK NONE", [("HEALTHCHECK", [], {"none": True})]),
    ("HEALTHCHECK --interval=1m30s --timeout=500ms --retries=2 --start-period=1s "
     "CMD wget -q localhost",
     [("HEALTHCHECK", ["wget -q localhost"],
       {"interval": 90.0, "timeout": 0.5, "retries": 2, "start_period": 1.0,
        "form": "shell"})]),
    ('HEALTHCHECK CMD ["true"]', [("HEALTHCHECK", ["true"], {"form": "exec"})]),
    ("# only a comment\n\n   # indented comment", []),
]


@pytest.mark.parametrize("body, expected", PARSE_CASES)
def test_parse(body, expected):
    instructions = parse("FROM scratch\n" + body + "\n", "M")
    assert instructions[0].name == "FROM" and instructions[0].args == ["scratch"]
    got = [(i.name, i.args, i.flags) for i in instructions[1:]]
    assert got == expected


def test_parse_records_first_line_and_raw():
    ins = parse("# c\nFROM scratch\n\nRUN a \\\n  b\nCMD x\n", "M")
    assert [(i.name, i.line) for i in ins] == [("FROM", 2), ("RUN", 4), ("CMD", 6)]
    assert ins[1].raw == "RUN a   b"


def test_arg_may_precede_from():
    ins = parse("ARG base=scratch\nFROM $base\n", "M")
    assert [i.name for i in ins] == ["ARG", "FROM"]


PARSE_ERRORS = [
    ("FROM scratch\nADD x /x\n", "M:2: unknown instruction 'ADD'"),
    ("FROM scratch\nFOO bar\n", "M:2: unknown instruction 'FOO'"),
    ("FROM scratch\nRUN\n", "M:2: RUN needs an argument"),
    ("FROM scratch\nCOPY onlyone\n", "M:2: COPY needs a source and a destination"),
    ("FROM scratch\nCMD [\"a\", b]\n", "M:2: CMD has a bad JSON array"),
    ("FROM scratch\nRUN [\"a\", 1]\n", "M:2: RUN JSON form must be a list of strings"),
    ("RUN echo\nFROM scratch\n", "M:1: RUN before FROM"),
    ("ARG a\n", "M: no FROM instruction"),
    ("FROM scratch\nFROM scratch\n", "M:2: a second FROM"),
    ("FROM a AS b\n", "M:1: FROM ... AS"),
    ("FROM scratch\nCOPY --from=x a b\n", "M:2: COPY does not support --from"),
    ("FROM scratch\nHEALTHCHECK --interval=5x CMD true\n", "M:2: bad --interval"),
    ("FROM scratch\nHEALTHCHECK --retries=x CMD true\n", "M:2: HEALTHCHECK --retries"),
    ("FROM scratch\nHEALTHCHECK --interval=5s\n", "M:2: HEALTHCHECK needs CMD"),
    ("FROM scratch\nENV A\n", "M:2: ENV A needs a value"),
    ("FROM scratch\nENV A=1 =2\n", "M:2: ENV expects KEY=VALUE"),
    ("FROM scratch\nARG 1x\n", "M:2: bad ARG name '1x'"),
    ("FROM scratch\nUSER a b\n", "M:2: USER takes one"),
    ("FROM scratch\n\n\nENV A=\"open\n", "M:4: unterminated \" quote"),
]


@pytest.mark.parametrize("text, message", PARSE_ERRORS)
def test_parse_errors_name_file_and_line(text, message):
    with pytest.raises(MockerfileError) as info:
        parse(text, "M")
    assert str(info.value).startswith(message)


# -- render -------------------------------------------------------------------


def write(tmp_path, text, name="Mockerfile"):
    """Write a Mockerfile and return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def test_render_substitutes_host_variables_and_keeps_trailing_newline(tmp_path):
    path = write(tmp_path, "FROM scratch\nENV A={{ a }} H={{ inventory_hostname }}\n")
    assert render(path, {"a": 1}, {}, "web1") == "FROM scratch\nENV A=1 H=web1\n"


def test_render_undefined_variable_names_line_and_host(tmp_path):
    path = write(tmp_path, "FROM scratch\n\nENV A={{ app_version }}\n")
    with pytest.raises(MockerfileError) as info:
        render(path, {}, {}, "web1")
    assert info.value.message == (f"{path}:3: undefined variable 'app_version' "
                                  "for host web1")
    assert "default" in info.value.hint


def test_render_undefined_attribute_names_line(tmp_path):
    path = write(tmp_path, "FROM scratch\nENV A={{ app.port }}\n")
    with pytest.raises(MockerfileError, match=r":2: undefined variable 'port'"):
        render(path, {"app": {}}, {}, "web1")


def test_render_default_filter_still_works(tmp_path):
    path = write(tmp_path, "FROM scratch\nENV V={{ app_version | default('1') }}\n")
    assert render(path, {}, {}, "web1").endswith("ENV V=1\n")


def test_render_syntax_error_suggests_raw(tmp_path):
    path = write(tmp_path, "FROM scratch\nRUN awk '{{print $1}}' f\n")
    with pytest.raises(MockerfileError) as info:
        render(path, {}, {}, "web1")
    assert info.value.message.startswith(f"{path}:2: template syntax error")
    assert "{% raw %}" in info.value.hint


def test_render_raw_block_passes_braces(tmp_path):
    path = write(tmp_path,
                 "FROM scratch\n{% raw %}RUN awk '{{print $1}}' f{% endraw %}\n")
    assert "{{print $1}}" in render(path, {}, {}, "web1")


def test_render_missing_file(tmp_path):
    with pytest.raises(MockerfileError, match="no such Mockerfile"):
        render(tmp_path / "nope", {}, {}, "web1")


# -- expansion ----------------------------------------------------------------

EXPAND_CASES = [
    ("$a", "1"),
    ("${a}", "1"),
    ("x${a}y", "x1y"),
    ("$missing", ""),
    ("${missing:-dflt}", "dflt"),
    ("${a:-dflt}", "1"),
    ("${a:+alt}", "alt"),
    ("${missing:+alt}", ""),
    ("${missing:-$a}", "1"),
    ("'$a'", "$a"),
    ('"$a b"', "1 b"),
    ("\\$a", "$a"),
    ("$", "$"),
    ("a$-b", "a$-b"),
    ('"it\'s"', "it's"),
]


@pytest.mark.parametrize("word, expected", EXPAND_CASES)
def test_expand(word, expected):
    assert expand(word, {"a": "1"}) == expected


def resolved(body, build_args=None, base_env=None):
    """Return {name: [args...]} of the resolved instructions of a body after FROM."""
    ins = resolve(parse(body, "M"), build_args, "M", base_env)
    return [(i.name, i.args, i.flags) for i in ins]


RESOLVE_CASES = [
    # ARG default, overridden by a build arg; ENV sees it
    ("FROM scratch\nARG c=1\nENV x=$c\n", {}, ("ENV", [["x", "1"]])),
    ("FROM scratch\nARG c=1\nENV x=$c\n", {"c": "2"}, ("ENV", [["x", "2"]])),
    ("FROM scratch\nARG c\nENV x=${c:-none}\n", {}, ("ENV", [["x", "none"]])),
    # ENV wins over ARG of the same name; values in one ENV see the old ones
    ("FROM scratch\nARG a=arg\nENV a=env\nENV b=$a\n", {}, ("ENV", [["b", "env"]])),
    ("FROM scratch\nENV a=1\nENV a=2 b=$a\n", {}, ("ENV", [["a", "2"], ["b", "1"]])),
    ("FROM scratch\nENV P=/x:$PATH\n", {}, ("ENV", [["P", "/x:" + DEFAULT_PATH]])),
    ("FROM img\nENV P=/x:$PATH\n", {}, ("ENV", [["P", "/x:/img"]])),
    # paths: relative WORKDIR and COPY dest follow WORKDIR
    ("FROM scratch\nENV d=app\nWORKDIR /srv\nWORKDIR $d\n", {},
     ("WORKDIR", ["/srv/app"])),
    ("FROM scratch\nWORKDIR /app\nCOPY a .\n", {}, ("COPY", ["a", "/app/"])),
    ("FROM scratch\nWORKDIR /app\nCOPY a b\n", {}, ("COPY", ["a", "/app/b"])),
    ("FROM scratch\nARG f=x.txt\nCOPY $f \"/my dir/\"\n", {},
     ("COPY", ["x.txt", "/my dir/"])),
    ('FROM scratch\nENV f=x\nCOPY ["$f", "/d/"]\n', {}, ("COPY", ["x", "/d/"])),
    ("FROM scratch\nARG u=app\nUSER $u:$u\n", {}, ("USER", ["app:app"])),
    ("FROM scratch\nARG p=8000\nEXPOSE $p 53/UDP\n", {},
     ("EXPOSE", ["8000/tcp", "53/udp"])),
    ("FROM scratch\nARG v=2\nLABEL version=$v\n", {}, ("LABEL", [["version", "2"]])),
    # RUN and CMD are left to the shell
    ("FROM scratch\nARG c=1\nRUN echo $c\n", {}, ("RUN", ["echo $c"])),
    ("FROM scratch\nENV c=1\nCMD echo $c\n", {}, ("CMD", ["echo $c"])),
]


@pytest.mark.parametrize("text, build_args, expected", RESOLVE_CASES)
def test_resolve(text, build_args, expected):
    last = resolved(text, build_args, base_env={"PATH": "/img"})[-1]
    assert last[:2] == expected


def test_resolve_from_uses_args_before_from_and_names_the_base_kind():
    assert resolved("ARG v=bookworm\nFROM ./rootfs/$v.tar.gz\n")[1][1:] == (
        ["./rootfs/bookworm.tar.gz"], {"base": "tarball"})
    assert resolved("FROM scratch\n")[0][2] == {"base": "scratch"}
    assert resolved("FROM app:v1\n")[0][2] == {"base": "image"}


def test_resolve_records_arg_values_for_run():
    ins = resolved("ARG top=1\nFROM scratch\nARG top\nARG c=2\n", {"c": "3"})
    assert ins[2][2] == {"values": {"top": "1"}}
    assert ins[3][2] == {"values": {"c": "3"}}


def test_resolve_errors_name_line():
    with pytest.raises(MockerfileError, match=r"^M:2: bad EXPOSE port 'http'"):
        resolved("FROM scratch\nEXPOSE http\n")
    with pytest.raises(MockerfileError, match=r"^M:2: bad substitution"):
        resolved("FROM scratch\nENV a=${b:?x}\n")
