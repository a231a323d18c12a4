"""Image builds end to end in-process: controller planning, agent handlers, sandbox.

The controller's build_image talks to a fake session that calls the agent's rpc
handlers directly with a temporary state root, so everything but SSH is real:
rendering, hashing, blob uploads, tarball extraction, overlay RUN steps.
"""

import asyncio
import importlib.util
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest

from mockerops.build import DigestCache, build_image, check_mockerfile
from mockerops.errors import AgentCallError, MockerfileError
from remote_agent import layers, sandbox, server
from remote_agent.errors import AgentError, Conflict, InvalidRequest

import remote_agent.rpc_images  # noqa: F401  (registers the handlers)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds mount overlays: root"),
]
PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"


class FakeCtx:
    """The CallContext a handler sees, without a server behind it."""

    def __init__(self, root, blob, on_event):
        self.root = root
        self.blob = blob
        self.cancelled = threading.Event()
        self.on_event = on_event

    def emit(self, event, data=None, blob=b""):
        """Pass an event to the caller's callback."""
        if self.on_event is not None:
            self.on_event(event, data, blob)


class FakeSession:
    """An AgentSession stand-in calling the agent's handlers in-process."""

    def __init__(self, root):
        self.root = root
        self.calls = []

    async def call(self, method, params=None, blob=b"", timeout=None, on_event=None):
        """Run the handler of method and return its result.

        An agent error becomes an AgentCallError, as it does on the wire.
        """
        self.calls.append(method)
        ctx = FakeCtx(self.root, blob, on_event)
        try:
            return server.HANDLERS[method](ctx, **(params or {}))
        except AgentError as exc:
            wire = json.loads(json.dumps(exc.to_wire()))
            raise AgentCallError("web1", wire["kind"], wire["message"],
                                 wire["details"]) from exc


@pytest.fixture(scope="module")
def busybox_tarball():
    """Return the path of a busybox rootfs tarball made by make_rootfs.py."""
    spec = importlib.util.spec_from_file_location("make_rootfs",
                                                  PLAYBOOKS / "make_rootfs.py")
    make_rootfs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_rootfs)
    work = tempfile.mkdtemp(prefix="mockerops-test-busybox-")
    try:
        yield make_rootfs.make_busybox(os.path.join(work, "busybox.tar.gz"))
    finally:
        layers.remove_tree(work)


@pytest.fixture
def lab(busybox_tarball):
    """Yield a Build helper over a fresh state root and build context."""
    work = tempfile.mkdtemp(prefix="mockerops-test-build-")
    try:
        yield Build(work, busybox_tarball)
    finally:
        layers.remove_tree(work)


class Build:
    """A state root, a context directory and a digest cache for one test."""

    def __init__(self, work, tarball):
        self.root = os.path.join(work, "state")
        self.context = Path(work) / "context"
        self.context.mkdir()
        os.link(tarball, self.context / "busybox.tar.gz")
        self.cache = DigestCache(os.path.join(work, "digests.json"))
        self.session = FakeSession(self.root)
        self.events = []

    def write(self, rel, data, mode=0o644):
        """Write a context file."""
        path = self.context / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        path.chmod(mode)
        return path

    def build(self, text, build_args=None, no_cache=False, tag="t"):
        """Build text as a Mockerfile; return (manifest, [cached flag per step])."""
        self.write("Mockerfile", "FROM ./busybox.tar.gz\n" + text)
        self.events = []
        self.session.calls = []
        manifest = asyncio.run(build_image(
            self.session, self.context / "Mockerfile", self.context, host="web1",
            variables={}, build_args=build_args or {}, tag=tag, no_cache=no_cache,
            on_event=lambda e, d, b: self.events.append((e, d, b)), cache=self.cache))
        return manifest, [d["cached"] for e, d, b in self.events if e == "step"]

    def output(self):
        """Return the RUN output of the last build."""
        return "".join(b.decode() for e, d, b in self.events if e == "output")

    def run(self, manifest, script):
        """Run a shell script over an image's layers; return (code, output)."""
        out = []
        scratch = tempfile.mkdtemp(dir=layers.tmp_dir(self.root))
        try:
            code = sandbox.run_isolated(
                [layers.layer_fs(self.root, l) for l in reversed(manifest["layers"])],
                os.path.join(scratch, "up"), os.path.join(scratch, "work"),
                ["/bin/sh", "-c", script], manifest["config"]["env"],
                on_output=out.append, network="none")
        finally:
            layers.remove_tree(scratch)
        return code, b"".join(out).decode()


APP = """\
ARG greeting=hi
ENV GREETING=$greeting
WORKDIR /srv
COPY www/ /srv/www/
RUN echo "$GREETING from $(hostname)" > /srv/www/index.html
EXPOSE 8080
CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]
"""


def test_busybox_build_and_fully_cached_rebuild(lab):
    lab.write("www/about.html", "about\n")
    manifest, cached = lab.build(APP)
    assert cached == [False] * 8
    assert manifest["tags"] == ["t:latest"]
    assert manifest["config"]["cmd"][0] == "httpd"
    assert manifest["config"]["exposed"] == ["8080/tcp"]
    assert manifest["config"]["env"]["GREETING"] == "hi"
    assert manifest["config"]["workdir"] == "/srv"
    code, out = lab.run(manifest, "cat /srv/www/index.html /srv/www/about.html")
    assert (code, out) == (0, "hi from build\nabout\n")

    again, cached = lab.build(APP)
    assert cached == [True] * 8
    assert again["id"] == manifest["id"]
    assert "blob.put" not in lab.session.calls


def test_same_size_same_mtime_new_bytes_rebuilds_from_that_copy(lab):
    lab.write("data.txt", "AAAA\n")
    text = "RUN echo before > /before\nCOPY data.txt /data.txt\nRUN cat /data.txt\n"
    lab.build(text)
    path = lab.context / "data.txt"
    st = path.stat()
    path.write_text("BBBB\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    assert path.stat().st_mtime_ns == st.st_mtime_ns

    _, cached = lab.build(text)
    assert cached == [True, True, False, False]
    assert lab.output() == "BBBB\n"


def test_arg_used_in_env_rebuilds_when_it_changes(lab):
    text = "RUN echo base\nARG c=1\nENV x=$c\nRUN echo x=$x\n"
    first, _ = lab.build(text)
    assert first["config"]["env"]["x"] == "1"
    second, cached = lab.build(text, build_args={"c": "2"})
    assert cached == [True, True, True, False, False]
    assert second["config"]["env"]["x"] == "2"
    assert "x=2" in lab.output()
    _, cached = lab.build(text, build_args={"c": "2"})
    assert cached == [True] * 5


def test_arg_value_reaches_run_env_and_its_key(lab):
    text = "ARG v=1\nRUN echo v=$v\n"
    lab.build(text)
    _, cached = lab.build(text, build_args={"v": "2"})
    assert cached == [True, True, False]
    assert lab.output() == "v=2\n"


def test_file_deleted_in_a_later_run_is_hidden(lab):
    lab.write("gone.txt", "bye\n")
    manifest, _ = lab.build(
        "COPY gone.txt /data/gone.txt\nRUN echo keep > /data/keep\n"
        "RUN rm /data/gone.txt && rm -r /var/www && mkdir /var/www\n")
    top = layers.layer_fs(lab.root, manifest["layers"][-1])
    st = os.lstat(os.path.join(top, "data", "gone.txt"))
    assert layers.is_whiteout(st)
    code, out = lab.run(manifest, "ls /data; ls -A /var/www; test ! -e /data/gone.txt")
    assert (code, out) == (0, "keep\n")


def test_failed_run_leaves_nothing(lab):
    lab.build("RUN echo ok > /ok\n")
    before = sorted(os.listdir(os.path.join(lab.root, "layers")))
    images = layers.image_ids(lab.root)
    with pytest.raises(MockerfileError) as info:
        lab.build("RUN echo ok > /ok\nRUN echo boom; touch /half; exit 3\n")
    assert info.value.message == (f"{lab.context / 'Mockerfile'}:3: RUN echo boom; "
                                  "touch /half; exit 3 exited 3; last output:\nboom")
    assert sorted(os.listdir(os.path.join(lab.root, "layers"))) == before
    assert os.listdir(layers.tmp_dir(lab.root)) == []
    assert layers.image_ids(lab.root) == images


def test_failed_run_step_numbers_agree_and_name_the_line(lab):
    with pytest.raises(MockerfileError) as info:
        lab.build("ENV A=1\n\nRUN false\n")
    # Line 4 (a blank line sits between), step 3: the error names the line, the
    # events number steps from 1 as the agent's own message does.
    assert info.value.message == f"{lab.context / 'Mockerfile'}:4: RUN false exited 1"
    cause = info.value.__context__
    assert isinstance(cause, AgentCallError)
    assert str(cause) == "web1: step 3: RUN false exited 1"
    assert [d["step"] for e, d, b in lab.events if e == "step"] == [1, 2, 3]
    assert [d["instruction"] for e, d, b in lab.events if e == "step"][-1] == (
        "RUN false")


def test_run_output_events_carry_the_step_number(lab):
    lab.build("ENV A=1\nRUN echo hi\n")
    assert [(d["step"], b) for e, d, b in lab.events if e == "output"] == [
        (3, b"hi\n")]


def test_image_rm_refused_while_a_container_uses_it(lab):
    manifest, _ = lab.build("CMD [\"true\"]\n", tag="app:v1")
    config = os.path.join(lab.root, "containers", "c1", "config.json")
    os.makedirs(os.path.dirname(config))
    with open(config, "w") as f:
        json.dump({"name": "app-1", "image_id": manifest["id"]}, f)
    rm = server.HANDLERS["image.rm"]
    with pytest.raises(Conflict, match="app-1"):
        rm(FakeCtx(lab.root, b"", None), ref="app:v1")
    os.unlink(config)
    assert rm(FakeCtx(lab.root, b"", None), ref="app:v1")["deleted"] == [manifest["id"]]


def test_blob_put_digest_mismatch_rejected(lab):
    put = server.HANDLERS["blob.put"]
    digest = "0" * 64
    with pytest.raises(InvalidRequest, match="corrupted"):
        put(FakeCtx(lab.root, b"not zeros", None), digest=digest, offset=0, final=True)
    assert server.HANDLERS["blob.missing"](
        FakeCtx(lab.root, b"", None), digests=[digest]) == [digest]


def test_layer_ids_do_not_depend_on_mtimes(lab):
    lab.write("a.txt", "a\n")
    lab.write("dir/b.txt", "b\n")
    text = "COPY a.txt dir /app/\nRUN ls /app\n"
    first, _ = lab.build(text)
    for rel in ("a.txt", "dir/b.txt", "dir", "busybox.tar.gz"):
        os.utime(lab.context / rel, (1, 1))
    lab.cache = DigestCache(os.path.join(str(lab.context.parent), "fresh.json"))
    second, cached = lab.build(text)
    assert cached == [True, True, True]
    assert second["id"] == first["id"]


def test_no_cache_builds_every_step_again_with_the_same_ids(lab):
    first, _ = lab.build("RUN echo x > /x\n")
    again, cached = lab.build("RUN echo x > /x\n", no_cache=True)
    assert cached == [True, False]  # the base tarball is never extracted twice
    assert again["layers"] == first["layers"]
    assert os.listdir(layers.tmp_dir(lab.root)) == []


def test_copy_symlinks_globs_chown_and_modes(lab):
    lab.write("bin/tool.sh", "#!/bin/sh\necho tool\n", mode=0o750)
    lab.write("conf/a.conf", "a\n")
    lab.write("conf/b.conf", "b\n")
    lab.write("conf/skip.txt", "no\n")
    os.symlink("/etc/shadow-on-the-controller", lab.context / "link")
    manifest, _ = lab.build(
        "COPY --chown=www-data:33 bin/tool.sh conf/*.conf link /opt/\n"
        "RUN /opt/tool.sh\n")
    assert lab.output() == "tool\n"
    code, out = lab.run(manifest, "cd /opt && ls && stat -c '%U:%g %a' tool.sh "
                        "&& readlink link")
    assert code == 0
    assert out == ("a.conf\nb.conf\nlink\ntool.sh\nwww-data:33 750\n"
                   "/etc/shadow-on-the-controller\n")


def test_copy_follows_image_symlinks_for_the_destination(lab):
    lab.write("f", "f\n")
    manifest, _ = lab.build("RUN mkdir -p /real && ln -s /real /alias\n"
                            "COPY f /alias/\n")
    top = layers.layer_fs(lab.root, manifest["layers"][-1])
    assert os.path.isfile(os.path.join(top, "real", "f"))
    assert not os.path.lexists(os.path.join(top, "alias"))


def test_workdir_creates_the_directory(lab):
    manifest, _ = lab.build("WORKDIR /srv/app\nRUN pwd\n")
    assert lab.output() == "/srv/app\n"
    assert manifest["config"]["workdir"] == "/srv/app"


COPY_ERRORS = [
    ("COPY ../outside /x\n", "is outside the build context"),
    ("COPY /etc/passwd /x\n", "is an absolute path"),
    ("COPY missing.txt /x\n", "'missing.txt' not found in the build context"),
    ("COPY escape/passwd /x\n", "follows a symlink out of the build context"),
]


@pytest.mark.parametrize("line, message", COPY_ERRORS)
def test_copy_source_errors_name_file_and_line(lab, line, message):
    os.symlink("/etc", lab.context / "escape")
    lab.write("Mockerfile", "FROM ./busybox.tar.gz\n" + line)
    with pytest.raises(MockerfileError) as info:
        check_mockerfile(lab.context / "Mockerfile", lab.context, host="web1")
    assert info.value.message.startswith(f"{lab.context / 'Mockerfile'}:2: ")
    assert message in info.value.message


def test_from_an_image_on_the_host(lab):
    lab.build("ENV BASE=1\nRUN echo base > /base\n", tag="base:v1")
    lab.write("Mockerfile", "FROM base:v1\nENV P=$BASE-x\nRUN cat /base\n")
    manifest = asyncio.run(build_image(
        lab.session, lab.context / "Mockerfile", lab.context, host="web1",
        variables={}, build_args={}, tag="child", no_cache=False,
        on_event=None, cache=lab.cache))
    assert manifest["config"]["env"]["P"] == "1-x"
    code, out = lab.run(manifest, "cat /base")
    assert (code, out) == (0, "base\n")


def test_cancelled_build_stops_before_the_next_step(lab):
    ctx = FakeCtx(lab.root, b"", None)
    ctx.cancelled.set()
    with pytest.raises(AgentError, match="cancelled"):
        server.HANDLERS["image.build"](ctx, steps=[
            {"name": "FROM", "args": ["scratch"], "flags": {"base": "scratch"}}])


def build_playbook(lab, name, context):
    """Build playbooks/<name>/Mockerfile from context for host web1."""
    return asyncio.run(build_image(
        lab.session, context / "Mockerfile", context, host="web1",
        variables={"app_version": "7"}, build_args={}, tag=name, no_cache=False,
        on_event=None, cache=lab.cache))


def test_busybox_playbook_builds(lab):
    context = lab.context
    for rel in ("Mockerfile", "www/about.html"):
        lab.write(rel, (PLAYBOOKS / "busybox" / rel).read_bytes())
    (context / "rootfs").mkdir()
    os.link(context / "busybox.tar.gz", context / "rootfs" / "busybox.tar.gz")
    manifest = build_playbook(lab, "busybox", context)
    assert manifest["config"]["healthcheck"]["interval"] == 5.0
    code, out = lab.run(manifest, "cat /srv/www/index.html; stat -c %U /srv/www")
    assert (code, out) == (0, "hello from web1 version 7\nwww-data\n")


HELLO = PLAYBOOKS / "hello"


@pytest.mark.skipif(not (HELLO / "rootfs" / "debian-bookworm.tar.gz").exists(),
                    reason="no Debian base: run playbooks/make_rootfs.py debian")
def test_hello_playbook_builds_and_answers(lab):
    manifest = build_playbook(lab, "hello", HELLO)
    assert manifest["config"]["user"] == "app"
    # Up to 20 s for the app to answer: a loaded CI machine starts Python slowly.
    script = ("python3 /app/app.py & i=0; while [ $i -lt 100 ]; do "
              "python3 /app/app.py --check && break; i=$((i+1)); sleep 0.2; done; "
              "python3 -c 'import socket; c = socket.create_connection("
              "(\"127.0.0.1\", 8000)); c.sendall(b\"GET / HTTP/1.0\\r\\n\\r\\n\"); "
              "print(c.recv(4096).decode().split(\"\\r\\n\\r\\n\")[1], end=\"\")'; "
              "kill $!")
    code, out = lab.run(manifest, script)
    assert code == 0
    assert out.endswith("hello from web1 version 7\nhostname build\n")


def test_planned_image_id_builds_nothing(lab):
    from mockerops.build import planned_image_id

    lab.write("a.txt", "a\n")
    lab.write("Mockerfile", "FROM ./busybox.tar.gz\nCOPY a.txt /a\nRUN cat /a\n")

    def planned():
        return asyncio.run(planned_image_id(
            lab.session, lab.context / "Mockerfile", lab.context, host="web1",
            variables={}, build_args={}, cache=lab.cache))

    assert planned() is None  # nothing built yet: the layers' contents are unknown
    assert not os.path.exists(os.path.join(lab.root, "blobs"))
    manifest, _ = lab.build("COPY a.txt /a\nRUN cat /a\n")
    assert planned() == manifest["id"]
    lab.write("a.txt", "changed\n")
    assert planned() is None
